"""indextts-server: the contract's WebSocket protocol on Trio in front of IndexTTS2, plus an HTTP API."""

__version__ = "0.1.0"
