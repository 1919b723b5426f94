"""Streaming inside a segment on the real IndexTTS-2 engine: correctness checks and first audio.

    python -m indextts_server.bench.probes.chunked --model-dir DIR --cfg-path FILE [--codes 120]
    python -m indextts_server.bench.probes.chunked --family indextts25 --model-dir DIR [--codes 60]

Set ``HF_HUB_CACHE``/``HF_HUB_OFFLINE`` first for the tiny test checkpoint (it prints the exports).
One engine is loaded on ``--device`` (default: the CPU); prints one JSON line:

- ``codes_match``: the step-by-step decoder's codes equal ``generate``'s with one sampled beam;
- ``prefix_latents_match`` (IndexTTS-2): a prefix of the codes gets the whole pass's latents;
- ``vocoder_context``: the context (mel frames each side) that makes chunked vocoding equal whole
  vocoding, measured; ``vocoder_max_diff``: the largest sample difference at the engine's context;
- for one segment of ``--codes`` codes, chunked against one window over the same codes and noise
  (``whole``): ``pieces``, ``length_diff`` (samples), ``seam_jump`` / ``inner_jump`` (largest
  sample-to-sample step at a seam / inside pieces), ``mel_l1_chunked`` (chunked vs whole) beside
  ``mel_l1_seeds`` (two whole runs whose noise seeds differ);
- timings, seconds, medians of ``--rounds`` interleaved: ``first_*`` (first audio) and
  ``total_*`` for ``chunked``, ``window`` (the same pipeline in one window: the chunking's own
  cost) and ``off`` (today's unchunked path, 3 beams).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...core.config import EngineOptions
from ...core.engine import ChunkSchedule, SynthesisJob

REPO = Path(__file__).resolve().parents[3]
PROMPT = str(REPO / "asset" / "zero_shot_prompt.wav")
TEXT = "今天天气很好我们一起去公园散步吧"
TEXT25 = "The weather is fine today so let us walk in the park"
WHOLE = ChunkSchedule(first=1e6, growth=1.0, cap=1e6)
"""One piece per segment: the same pipeline over one window."""


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m indextts_server.bench.probes.chunked")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--cfg-path", help="IndexTTS-2's config.yaml")
    p.add_argument("--family", choices=["indextts2", "indextts25"], default="indextts2")
    p.add_argument("--steps", type=int, default=None, help="IndexTTS-2.5's diffusion steps")
    p.add_argument("--codes", type=int, default=120, help="codes per segment (random weights never stop)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from ...io.engines import batching, chunked

    report: dict[str, Any] = {}
    engine: Any
    if args.family == "indextts25":
        from ...io.engines import indextts25

        options = EngineOptions(
            model_dir=args.model_dir, max_mel_tokens=args.codes, diffusion_steps=args.steps
        )
        engine = indextts25.IndexTTS25Engine(options, args.device)
        model: Any = engine._model
        prepared25 = indextts25.prepare(model, {}, PROMPT, TEXT25, "en")
        tokens = prepared25.segments[0]
        conds = prepared25.conds
        langs: torch.Tensor | None = torch.tensor([prepared25.lang], dtype=torch.long, device=conds.device)

        def stages() -> chunked.Stages:
            return indextts25.stages25(model, prepared25, tokens, args.codes, args.steps or 25)

        text = TEXT25
    else:
        from ...io.engines.indextts2 import IndexTTS2Engine

        options = EngineOptions(model_dir=args.model_dir, cfg_path=args.cfg_path, max_mel_tokens=args.codes)
        engine = IndexTTS2Engine(options, args.device)
        model = engine._model
        job = SynthesisJob(text=TEXT, prompt_audio=PROMPT, seed=3, chunked=True)
        with torch.inference_mode():
            prepared, _ = engine._prepare(job, {"max_text_tokens_per_segment": 120})
        tokens = prepared.segments[0]
        conds = prepared.conds
        langs = None

        def stages() -> chunked.Stages:
            return chunked.stages2(model, prepared, tokens, args.codes)

        text = TEXT
        with torch.inference_mode():
            torch.manual_seed(11)
            codes = torch.tensor(
                list(chunked.decode_codes(model, conds, tokens, max_mel_tokens=args.codes)),
                device=conds.device,
            )
            work = batching.Work(prepared, tokens, None)
            whole_latent = batching.latents(model, [work], [codes])[0]
            half = len(codes) // 2
            prefix_latent = batching.latents(model, [work], [codes[:half]])[0]
            report["prefix_latents_match"] = bool(
                torch.allclose(prefix_latent, whole_latent[:, :half], atol=1e-5)
            )
    with torch.inference_mode():
        torch.manual_seed(11)
        stepped = list(chunked.decode_codes(model, conds, tokens, max_mel_tokens=args.codes, langs=langs))
        torch.manual_seed(11)
        saved = batching.NUM_BEAMS
        batching.NUM_BEAMS = 1  # type: ignore[misc]  # the probe's own comparison
        try:
            generated = batching.generate(
                model, [conds], [tokens], langs, max_mel_tokens=args.codes, sample=True
            )
        finally:
            batching.NUM_BEAMS = saved  # type: ignore[misc]
        report["codes"] = len(stepped)
        report["codes_match"] = stepped == [int(c) for c in generated[0]]
        report["vocoder_context"] = chunked.vocoder_context(model.bigvgan, device=conds.device)
        mel = (torch.randn(1, 80, 300, generator=torch.Generator().manual_seed(1)) - 5.0).to(conds.device)
        whole_wav = torch.clamp(model.bigvgan(mel).reshape(-1), -1.0, 1.0)
        cuts = [0, 37, 100, 171, 300]
        pieces = [
            chunked.vocode(model, mel, a, b, engine.window.context) for a, b in itertools.pairwise(cuts)
        ]
        report["vocoder_max_diff"] = float((torch.cat(pieces) - whole_wav).abs().max())

    def render(schedule: ChunkSchedule, noise_seed: int) -> list[np.ndarray]:
        """One segment through the chunked pipeline: codes from a fixed RNG, noise from ``noise_seed``."""
        torch.manual_seed(21)
        with torch.inference_mode():
            made = chunked.segment_pieces(
                model,
                stages(),
                schedule=schedule,
                noise=torch.Generator().manual_seed(noise_seed),
                window=engine.window,
            )
            return [(wav * 32767).to("cpu", torch.int32).numpy() for wav, _ in made]

    chunks = render(ChunkSchedule(), 5)
    whole = render(WHOLE, 5)[0]
    other = render(WHOLE, 6)[0]
    joined = np.concatenate(chunks)
    report["pieces"] = [round(len(c) / 22050, 3) for c in chunks]
    report["audio_s"] = round(len(joined) / 22050, 3)
    report["length_diff"] = int(len(joined) - len(whole))
    seams = np.cumsum([len(c) for c in chunks[:-1]])
    report["seam_jump"] = int(max(abs(joined[s] - joined[s - 1]) for s in seams)) if len(seams) else 0
    report["inner_jump"] = int(max(np.abs(np.diff(c)).max() for c in chunks if len(c) > 1))
    report["mel_l1_chunked"] = _mel_l1(joined, whole)
    report["mel_l1_seeds"] = _mel_l1(whole, other)

    def timed(job: SynthesisJob, schedule: ChunkSchedule) -> tuple[float, float]:
        engine.schedule = schedule
        began = time.perf_counter()
        first = 0.0
        for index, _ in enumerate(engine.synthesize(job)):
            if index == 0:
                first = time.perf_counter() - began
        return first, time.perf_counter() - began

    modes = {
        "chunked": (True, ChunkSchedule()),
        "window": (True, WHOLE),  # the chunked pipeline in one window (single beam)
        "off": (False, ChunkSchedule()),  # today's path: the library's, 3 beams
    }
    timings: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        for name, (on, schedule) in modes.items():
            job = SynthesisJob(text=text, prompt_audio=PROMPT, seed=100 + round_, chunked=on)
            first, total = timed(job, schedule)
            timings.setdefault(f"first_{name}", []).append(first)
            timings.setdefault(f"total_{name}", []).append(total)
    for name, values in timings.items():  # none with --rounds 0
        report[name] = round(statistics.median(values), 3)
    print(json.dumps(report))


def _mel_l1(a: Any, b: Any) -> float:
    """Mean absolute difference of the two signals' log-mel spectrograms (80 bands), over the
    shorter one's frames."""
    import numpy as np
    import torch
    import torchaudio  # type: ignore[import-untyped]

    transform = torchaudio.transforms.MelSpectrogram(22050, n_fft=1024, hop_length=256, n_mels=80)

    def logmel(x: Any) -> torch.Tensor:
        return torch.log(
            torch.clamp(transform(torch.from_numpy(np.asarray(x, np.float32) / 32768)), min=1e-5)
        )

    ma, mb = logmel(a), logmel(b)
    frames = min(ma.shape[-1], mb.shape[-1])
    return round(float((ma[:, :frames] - mb[:, :frames]).abs().mean()), 4)


if __name__ == "__main__":
    main()
