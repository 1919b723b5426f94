"""The terminal client, `indextts-client`: speaks the WebSocket contract and the HTTP voice API."""
