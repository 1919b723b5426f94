"""Cluster mode: tasks, replies and worker leases on a Redis (or Valkey) broker."""
