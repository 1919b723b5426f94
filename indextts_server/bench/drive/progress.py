"""A one-line progress bar on stderr: redrawn in place on a terminal, a single summary otherwise."""

from __future__ import annotations

import sys
import time
from typing import Final, TextIO

import trio

_WIDTH: Final = 30
_REDRAW_EVERY: Final = 0.1


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None):
        self.label = label
        self.total = max(1, total)
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty()
        self.done = 0
        self.failed = 0
        self.started = time.perf_counter()

    def advance(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        filled = _WIDTH * min(self.done, self.total) // self.total
        bar = "#" * filled + "." * (_WIDTH - filled)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        failed = f"  {self.failed} failed" if self.failed else ""
        return (
            f"{self.label:>6} [{bar}] {self.done}/{self.total}  {rate:7.1f} req/s  {elapsed:6.1f} s{failed}"
        )

    async def run(self) -> None:
        """Redraw until cancelled (only on a terminal)."""
        self.started = time.perf_counter()
        if not self.interactive:
            return
        while True:
            self.stream.write("\r" + self.line())
            self.stream.flush()
            await trio.sleep(_REDRAW_EVERY)

    def close(self) -> None:
        self.stream.write(("\r" if self.interactive else "") + self.line() + "\n")
        self.stream.flush()
