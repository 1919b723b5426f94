"""Speaker-cache benchmark on the real engine: alternating two voices against repeating one.

    python -m indextts_server.bench.probes.speakers --model-dir DIR --cfg-path FILE [--device cpu]

Set ``HF_HUB_CACHE``/``HF_HUB_OFFLINE`` first when the model's auxiliary files come from a local
cache (the tiny test checkpoint prints the exports). Each pattern runs ``--rounds`` requests of
the same text, seeded, in one process; the report gives seconds per request and the ratio
alternating / repeating, with the cache on (``--speaker-cache``) and with a one-entry cache (the
model's own behaviour) for contrast.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ...core.config import EngineOptions
from ...core.engine import SynthesisJob

REPO = Path(__file__).resolve().parents[3]
VOICES = (REPO / "asset" / "zero_shot_prompt.wav", REPO / "asset" / "emo_prompt.wav")


def run(engine: object, prompts: Sequence[str], rounds: int) -> float:
    """Seconds per request, cycling through ``prompts``."""
    from ...io.engines.indextts2 import IndexTTS2Engine

    assert isinstance(engine, IndexTTS2Engine)
    began = time.perf_counter()
    for index in range(rounds):
        job = SynthesisJob(
            text="大家好，今天天气很好。", prompt_audio=prompts[index % len(prompts)], seed=index
        )
        for _ in engine.synthesize(job):
            pass
    return (time.perf_counter() - began) / rounds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m indextts_server.bench.probes.speakers", description=__doc__
    )
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--cfg-path", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-mel-tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--speaker-cache", type=int, default=8)
    args = parser.parse_args(argv)
    from ...io.engines.indextts2 import IndexTTS2Engine

    report: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        a, b = (str(Path(scratch, f"voice{i}.wav")) for i in range(2))
        for source, target in zip(VOICES, (a, b), strict=True):
            shutil.copy(source, target)
        for label, size in (("cache", args.speaker_cache), ("one_entry", 1)):
            options = EngineOptions(
                model_dir=args.model_dir,
                cfg_path=args.cfg_path,
                max_mel_tokens=args.max_mel_tokens,
                speaker_cache=size,
            )
            engine = IndexTTS2Engine(options, args.device)
            run(engine, [a, b], 2)  # warm both voices and the code paths
            repeat = run(engine, [a], args.rounds)
            alternate = run(engine, [a, b], args.rounds)
            report[f"{label}_repeat_s"] = repeat
            report[f"{label}_alternate_s"] = alternate
            report[f"{label}_ratio"] = alternate / repeat
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
