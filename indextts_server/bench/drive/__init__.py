"""Driving load: the client load generator, the request corpus, the no-work floor server, spawning servers."""
