"""A WebSocket load generator for the indextts-server protocol, measured against a transport floor."""
