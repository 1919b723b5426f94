"""What private seeded sampling costs on the real engine: the process-wide RNG gate or per-request generators.

    python -m indextts_server.bench.probes.rng --model-dir DIR --cfg-path FILE [--rounds 3]

Set ``HF_HUB_CACHE``/``HF_HUB_OFFLINE`` first when the auxiliary files come from a local cache
(the tiny test checkpoint prints the exports). Two engines are loaded on the CPU. Measured, in
seconds per request (median of ``--rounds``):

- ``seeded`` / ``unseeded``: one engine, a seeded request (RNG state swapped in, behind the gate)
  and an unseeded one;
- ``generator_mode``: one engine, the seeded request with a per-request ``torch.Generator``
  injected into every random torch call by a thread-local ``TorchFunctionMode`` (the alternative
  to the gate; its cost is the mode's per-call overhead);
- ``two_seeded_at_once`` / ``two_unseeded_at_once``: wall time for one request on each engine at
  once; seeded requests pass the gate one step at a time, unseeded ones run side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...core.config import EngineOptions
from ...core.engine import SynthesisJob

REPO = Path(__file__).resolve().parents[3]
PROMPT = str(REPO / "asset" / "zero_shot_prompt.wav")
TEXT = "今天天气很好。我们一起去公园散步吧。"


def _median(rounds: int, once: Callable[[], None]) -> float:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        once()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m indextts_server.bench.probes.rng")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--cfg-path", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-mel-tokens", type=int, default=24)
    args = p.parse_args(argv)

    import torch
    from torch.overrides import TorchFunctionMode

    from ...io.engines.indextts2 import IndexTTS2Engine

    options = EngineOptions(
        model_dir=args.model_dir, cfg_path=args.cfg_path, max_mel_tokens=args.max_mel_tokens
    )
    engines = [IndexTTS2Engine(options, "cpu") for _ in range(2)]

    def job(seed: int | None) -> SynthesisJob:
        return SynthesisJob(text=TEXT, prompt_audio=PROMPT, max_tokens=20, seed=seed)

    def say(engine: IndexTTS2Engine, seed: int | None) -> None:
        for _ in engine.synthesize(job(seed)):
            pass

    random_ops = {torch.randn, torch.rand, torch.randint, torch.multinomial, torch.normal, torch.bernoulli}

    class PrivateGenerator(TorchFunctionMode):
        def __init__(self, generator: torch.Generator):
            super().__init__()
            self.generator = generator

        def __torch_function__(
            self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
        ) -> Any:
            kwargs = dict(kwargs or {})
            if func in random_ops and "generator" not in kwargs:
                kwargs["generator"] = self.generator
            elif func is torch.randn_like:
                (like,) = args
                return torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=self.generator)
            return func(*args, **kwargs)

    def with_generator() -> None:
        with PrivateGenerator(torch.Generator().manual_seed(7)):
            say(engines[0], None)

    def both(seed: int | None) -> None:
        threads = [threading.Thread(target=say, args=(engine, seed)) for engine in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    say(engines[0], 1)  # warm both paths and the speaker caches
    say(engines[1], 1)
    report = {
        "seeded": _median(args.rounds, lambda: say(engines[0], 7)),
        "unseeded": _median(args.rounds, lambda: say(engines[0], None)),
        "generator_mode": _median(args.rounds, with_generator),
        "two_seeded_at_once": _median(args.rounds, lambda: both(7)),
        "two_unseeded_at_once": _median(args.rounds, lambda: both(None)),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps({key: round(value, 3) for key, value in report.items()}))


if __name__ == "__main__":
    main()
