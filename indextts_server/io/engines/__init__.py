"""Speech engines behind the core's engine port: ``tone`` (weight-free) and ``indextts2`` (the real model)."""
