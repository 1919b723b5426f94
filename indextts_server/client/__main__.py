"""``python -m indextts_server.client`` is ``indextts-client``."""

from .cli import main

main()
