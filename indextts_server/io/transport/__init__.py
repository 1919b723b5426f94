"""Transport: the WebSocket server (a nursery per connection), its sessions, and the HTTP server."""
