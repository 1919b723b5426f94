"""Probes: event-loop responsiveness under load, and the speaker-cache benchmark."""
