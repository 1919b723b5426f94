"""Probes: event-loop responsiveness, the speaker cache, seeded sampling's cost, cluster throughput."""
