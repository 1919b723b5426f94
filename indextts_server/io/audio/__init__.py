"""Audio at the edges: encoding engine output for clients, and the audio files clients name."""
