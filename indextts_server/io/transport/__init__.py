"""Transport: the contract's WebSocket port and the HTTP server, each an adapter over the service."""
