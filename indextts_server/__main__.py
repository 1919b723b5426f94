"""``python -m indextts_server``: start the server."""

from .io.cli import main

main()
