"""A load generator for indextts-server (WebSocket or HTTP), measured against a no-work floor server."""
