"""indextts-server: the IndexTTS WebSocket protocol on Trio, in front of IndexTTS2."""

__version__ = "0.1.0"
