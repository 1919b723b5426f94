"""Developer and test tooling that is not part of the running service (the tiny IndexTTS2 checkpoint)."""
