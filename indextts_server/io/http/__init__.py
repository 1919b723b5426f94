"""The HTTP port's ASGI application: the OpenAI-compatible speech API, the voice library, operations."""
