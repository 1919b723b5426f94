"""``python -m indextts_server.bench``: run the load generator."""

from .cli import main

main()
