"""``python -m indextts_server``: start the server."""

from .io.operations.cli import main

main()
