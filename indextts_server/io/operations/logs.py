"""Logging for a busy event loop: records are queued in memory and written by a thread in batches."""

from __future__ import annotations

import atexit
import collections
import logging
import sys
import threading
import time
from typing import Final, TextIO

FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FLUSH_PERIOD: Final = 0.05


class BatchingHandler(logging.Handler):
    """Appends records to a deque (cheap, no I/O) and writes them from a thread every 50 ms.

    Per-task log lines are a large share of a fast task's cost when each one is formatted and
    written on the event loop, or wakes a writer thread of its own. Here the loop only appends;
    formatting and the write happen in one batch per period, in arrival order. Records must not
    be mutated after logging (the server logs strings and numbers only).
    """

    def __init__(self, stream: TextIO, period: float = FLUSH_PERIOD):
        super().__init__()
        self.stream = stream
        self.period = period
        self._records: collections.deque[logging.LogRecord] = collections.deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)

    def flush(self) -> None:
        lines = []
        while self._records:
            record = self._records.popleft()
            try:
                lines.append(self.format(record))
            except Exception:
                self.handleError(record)
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self.flush()
        super().close()


class Formatter(logging.Formatter):
    """The standard format, with the date part of the timestamp computed once per second."""

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int(record.msecs):03d}"


def setup_logging(level: str, stream: TextIO = sys.stderr) -> None:
    """Log lines to ``stream`` (stderr) without the event loop ever waiting on I/O."""
    # Fields the format never shows; skipping them makes each record cheaper to create.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BatchingHandler(stream)
    handler.setFormatter(Formatter(FORMAT))
    root = logging.getLogger()
    root.setLevel(level)
    root.addHandler(handler)
    atexit.register(handler.close)
