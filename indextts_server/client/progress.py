"""What ``say`` shows while it waits: one rewritten line on a terminal, plain lines when piped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TextIO


def describe_timing(timing: Mapping[str, object]) -> str:
    """The server's timing breakdown as one line, in the order the task lived it."""
    names = (
        ("queue_wait", "queue wait", "s"),
        ("first_audio", "first audio", "s"),
        ("total", "total", "s"),
        ("audio_seconds", "audio", "s"),
        ("rtf", "rtf", ""),
    )
    parts = []
    for key, label, unit in names:
        value = timing.get(key)
        if isinstance(value, int | float):
            parts.append(f"{label} {value:.3f}{unit}")
    return ", ".join(parts)


class Progress:
    """Reports a task's life on ``stream`` (stderr: stdout may be carrying the audio).

    On a terminal the state is one line, rewritten in place; otherwise every event is a line of
    its own, with stable ``key=value`` fields for scripts. ``quiet`` keeps only the errors.
    """

    def __init__(self, stream: TextIO, *, terminal: bool, quiet: bool = False):
        self.stream = stream
        self.terminal = terminal
        self.quiet = quiet
        self.task_id = ""
        self.segments = 0
        self.audio_seconds = 0.0
        self._line_open = False

    def queued(self, task_id: str, position: object) -> None:
        self.task_id = task_id
        where = f" (position {position})" if isinstance(position, int) else ""
        self._show(f"queued{where} task {task_id}", f"queued task={task_id} position={position}")

    def started(self) -> None:
        self._show("generating…", f"start task={self.task_id}")

    def segment(self, seconds: float | None) -> None:
        """One more segment arrived; ``seconds`` is its length where the format tells it."""
        self.segments += 1
        self.audio_seconds += seconds or 0.0
        done = f"{self.segments} segment{'s' if self.segments != 1 else ''} done"
        if seconds is None:
            self._show(f"generating… {done}", f"segment task={self.task_id} index={self.segments}")
            return
        self._show(
            f"generating… {done}, {self.audio_seconds:.1f} s of audio",
            f"segment task={self.task_id} index={self.segments} seconds={seconds:.3f}",
        )

    def note(self, text: str) -> None:
        self._show(text, text)

    def finished(self, timing: Mapping[str, object] | None, destination: str) -> None:
        breakdown = describe_timing(timing or {})
        summary = f"done: {destination}" + (f" ({breakdown})" if breakdown else "")
        self._show(summary, f"end task={self.task_id} output={destination} {breakdown}".rstrip(), final=True)

    def failed(self, message: str) -> None:
        """Errors are always shown, the server's message as it wrote it."""
        self._clear()
        print(f"error: {message}", file=self.stream, flush=True)

    def _show(self, live: str, plain: str, *, final: bool = False) -> None:
        if self.quiet:
            return
        if not self.terminal:
            print(plain, file=self.stream, flush=True)
            return
        self.stream.write(f"\r\x1b[K{live}")
        self._line_open = True
        if final:
            self.stream.write("\n")
            self._line_open = False
        self.stream.flush()

    def _clear(self) -> None:
        if self._line_open:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._line_open = False
