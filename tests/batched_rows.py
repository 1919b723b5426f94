"""For the batching probes (run in a child process): rows advanced to their end through ``advance``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indextts_server.core.engine import SynthesisJob


class DecodeSpy:
    """Wraps ``module.decode`` and keeps every call's codes, per row."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.real: Callable[..., Any] = module.decode
        self.calls: list[list[list[int]]] = []
        module.decode = self

    def __call__(self, model: object, works: Sequence[Any], **kwargs: Any) -> Any:
        codes = self.real(model, works, **kwargs)
        self.calls.append([code.tolist() for code in codes])
        return codes

    def instead(self, decode: Callable[..., Any] | None) -> None:
        """Let ``decode`` stand in for the spy (``None``: the spy again)."""
        self.module.decode = self if decode is None else decode

    def raising_when_batched(self, error: BaseException) -> None:
        """From now on a decode of more than one row raises ``error``; one row decodes."""

        def decode(model: object, works: Sequence[Any], **kwargs: Any) -> Any:
            if len(works) > 1:
                raise error
            return self(model, works, **kwargs)

        self.instead(decode)


def run_rows(
    engine: Any, jobs: Sequence[SynthesisJob], spy: DecodeSpy
) -> tuple[list[Any], list[list[list[int]]], list[str | None]]:
    """Every job to its end, its rows advanced together: each row's audio (``None`` if it had
    none), its codes per step (when the step decoded all the live rows at once) and its error."""
    rows = [engine.synthesize(job) for job in jobs]
    audio: list[list[Any]] = [[] for _ in rows]
    codes: list[list[list[int]]] = [[] for _ in rows]
    errors: list[str | None] = [None] * len(rows)
    live = list(range(len(rows)))
    while live:
        before = len(spy.calls)
        outcomes = engine.advance([rows[i] for i in live])
        step = [code for call in spy.calls[before:] for code in call]
        keep = []
        for i, outcome in zip(live, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                errors[i] = str(outcome)
                continue
            if outcome is None:
                continue
            audio[i].append(outcome.pcm)
            if len(step) == len(live):
                codes[i].append(step[live.index(i)])
            if not outcome.last:
                keep.append(i)
        live = keep
    return [np.concatenate(a) if a else None for a in audio], codes, errors


def retried_alone(
    engine: Any, spy: DecodeSpy, jobs: Sequence[SynthesisJob], first_alone: Any
) -> dict[str, Any]:
    """Two rows whose batched decode fails and whose second prompt file breaks before the step:
    what each row's step gave, and whether the first row's audio is its audio alone."""
    spy.raising_when_batched(RuntimeError("a batched stage failed"))
    rows = [engine.synthesize(job) for job in jobs]
    Path(jobs[1].prompt_audio).write_bytes(b"not audio at all")
    outcomes = engine.advance(rows)
    spy.instead(None)
    first = outcomes[0].pcm
    return {
        "retried": [type(outcome).__name__ for outcome in outcomes],
        "retried_first_equal": bool(np.array_equal(first, first_alone[: len(first)])),
    }


def seeded_in_a_batch(
    engine: Any, spy: DecodeSpy, seeded: SynthesisJob, others: Sequence[SynthesisJob]
) -> bool:
    """Whether a seeded row batched between ``others`` speaks as it does one at a time."""
    reference = np.concatenate([segment.pcm for segment in engine.synthesize(seeded)])
    mixed, _, _ = run_rows(engine, [others[0], seeded, *others[1:]], spy)
    return bool(np.array_equal(mixed[1], reference))
