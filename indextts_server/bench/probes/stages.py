"""Where a batched IndexTTS2 or 2.5 step spends its time: each stage, rows alone against together.

    python -m indextts_server.bench.probes.stages --model-dir DIR [--cfg-path FILE] [--rows 1,2,4,8]

Set ``HF_HUB_CACHE``/``HF_HUB_OFFLINE`` first when the model's auxiliary files come from a local
cache (the tiny test checkpoint prints the exports). For each row count R it advances R rows of
one segment each (the same speaker, so every stage may batch) one at a time, then all together,
in a worker thread as the server does, and reports the seconds of each stage (conditioning,
GPT decode, latent pass, s2mel + BigVGAN; for IndexTTS-2.5, which the directory's files tell
apart: conditioning, GPT decode, codec + s2mel + BigVGAN) and the speed-up of together over alone.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...core.config import EngineOptions
from ...core.engine import SynthesisJob

REPO = Path(__file__).resolve().parents[3]
TEXT = "今天天气很好，阳光明媚又温暖。"
STAGES = ("prepare", "decode", "latents", "speak")
STAGES25 = ("prepare", "decode", "speak")


def _timed(module: Any, stages: Sequence[str], spent: dict[str, float]) -> None:
    """Wrap a module's stage functions so that each adds its seconds to ``spent``."""
    for name in stages:
        inner: Callable[..., object] = getattr(module, name)

        def timed(
            *args: object, _inner: Callable[..., object] = inner, _name: str = name, **kwargs: object
        ) -> object:
            began = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - began

        setattr(module, name, timed)


def _in_thread(work: Callable[[], None]) -> None:
    """Run ``work`` in a fresh thread, as the server's engine calls run."""
    error: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:  # re-raised in the caller
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]


def measure_once(engine: Any) -> None:
    engine.advance(
        [
            engine.synthesize(
                SynthesisJob(text=TEXT, prompt_audio=str(REPO / "asset" / "zero_shot_prompt.wav"))
            )
        ]
    )


def measure(
    engine: Any, rows: int, spent: dict[str, float], stages: Sequence[str] = STAGES
) -> dict[str, object]:
    jobs = [
        SynthesisJob(text=TEXT, prompt_audio=str(REPO / "asset" / "zero_shot_prompt.wav"))
        for _ in range(rows)
    ]
    result: dict[str, object] = {"rows": rows}
    for label, groups in (("alone", [[job] for job in jobs]), ("together", [jobs])):
        spent.clear()
        began = time.perf_counter()

        def work(groups: Sequence[Sequence[SynthesisJob]] = groups) -> None:
            for group in groups:
                engine.advance([engine.synthesize(job) for job in group])

        _in_thread(work)
        result[label] = {
            "total_s": round(time.perf_counter() - began, 3),
            **{k: round(v, 3) for k, v in spent.items()},
        }
    alone, together = result["alone"], result["together"]
    assert isinstance(alone, dict) and isinstance(together, dict)
    result["speedup"] = {
        key: round(alone[key] / together[key], 2) for key in ("total_s", *stages) if together.get(key)
    }
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m indextts_server.bench.probes.stages", description=__doc__
    )
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--cfg-path", help="IndexTTS-2's config (default: the directory's config.yaml)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-mel-tokens", type=int, default=16)
    parser.add_argument("--rows", default="1,2,4,8", help="row counts, comma-separated")
    args = parser.parse_args(argv)
    from ...io.engines import batching, indextts25
    from ...io.engines.loading import model_family

    cfg_path = args.cfg_path or str(Path(args.model_dir) / "config.yaml")
    options = EngineOptions(model_dir=args.model_dir, cfg_path=cfg_path, max_mel_tokens=args.max_mel_tokens)
    spent: dict[str, float] = {}
    engine: Any
    stages: Sequence[str]
    if model_family(args.model_dir) == "indextts25":
        engine, stages = indextts25.IndexTTS25Engine(options, args.device), STAGES25
        _timed(indextts25, stages, spent)
    else:
        from ...io.engines.indextts2 import IndexTTS2Engine

        engine, stages = IndexTTS2Engine(options, args.device), STAGES
        _timed(batching, stages, spent)
    _in_thread(lambda: measure_once(engine))  # the first call's one-off costs
    for rows in (int(value) for value in args.rows.split(",")):
        print(json.dumps(measure(engine, rows, spent, stages)), flush=True)


if __name__ == "__main__":
    main()
