"""Scheduling: the port transports hand tasks to, the in-memory board and its workers, the Redis broker."""
