"""The adapters around the pure core: everything that touches Trio, sockets, threads, files or the model.

- ``service``: what every transport shares: the settings, the audio sources and voice library, the
  scheduler, the sessions (each one's outbox), readiness and the drain; a worker-only node.
- ``transport``: the contract's WebSocket transport, and the HTTP server (hypercorn) that runs ``http``;
  each an adapter over ``service``, neither importing the other.
- ``http``: the HTTP port's ASGI application: the speech API, the voice library, operations, the page.
- ``scheduling``: the scheduling port, the task board (the global FIFO queue, admission, the
  sweeper) and the inference workers that feed the engines from it; ``scheduling.broker``, the same
  port on Redis for cluster mode.
- ``engines``: the speech engines (``tone``, ``indextts2``) and how they are loaded.
- ``audio``: encoding engine output for clients; the audio files and library voices clients name.
- ``operations``: the command line (its flags derived from the settings), logging, metrics, systemd.
"""
