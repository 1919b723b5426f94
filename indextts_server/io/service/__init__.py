"""The service every transport plugs into: configuration, audio sources, scheduling, sessions, drain."""
