"""The adapters around the pure core: everything that touches Trio, sockets, threads, files or the model.

- ``transport``: the WebSocket server and its sessions, and the HTTP server.
- ``scheduling``: the task board (the global FIFO queue, admission, the sweeper) and the
  inference workers that feed the engines from it.
- ``engines``: the speech engines (``tone``, ``indextts2``) and how they are loaded.
- ``audio``: encoding engine output for clients; the audio files clients name.
- ``operations``: the command line, logging, metrics and systemd integration.
"""
