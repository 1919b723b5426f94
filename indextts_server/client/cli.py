"""``indextts-client``: the command line (to be built under issue 11)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    print("indextts-client: not built yet", file=sys.stderr)
    raise SystemExit(2)
