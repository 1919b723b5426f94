"""Adapters: WebSocket transport, inference thread bridge, engines, audio, CLI, logging."""
