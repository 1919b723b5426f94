"""Audio at the edges: encoding engine output for clients; the files and library voices clients name."""
