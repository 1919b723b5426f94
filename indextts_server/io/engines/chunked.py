"""Streaming inside a segment (experimental): the IndexTTS-2 pipeline run on growing windows.

Theory of operation. A segment's audio goes out in pieces whose sizes follow a `ChunkSchedule`:

- **Codes as they are decoded.** `decode_codes` runs the GPT one code at a time with its KV cache
  and the library's own sampling settings (repetition penalty 10, temperature 0.8, top-k 30,
  top-p 0.8) through transformers' own logits processors, in the order ``generate`` applies them.
  It samples a single sequence: ``num_beams`` is 1 in this mode (the unchunked path keeps the
  model's 3 beams), so chunked codes are not the unchunked ones.
- **Latents for committed codes.** The GPT is causal: the latent pass over a prefix of the codes
  gives that prefix's rows exactly as the pass over all of them does (`batching.latents`).
- **s2mel on windows.** The length regulator runs over every code decoded so far (its
  GroupNorm normalises over that prefix, not the whole segment: the one approximation of its
  whole-sequence normalisation). The CFM then runs on a window: its prompt is the reference mel
  plus up to ``left`` committed mel frames (with their conditions), it generates the new frames
  and ``lookahead`` codes' worth beyond, and only frames before the lookahead are committed.
  Its starting noise is one draw per segment from a generator seeded by the request's seed (or a
  number from the request's RNG), indexed by absolute frame: a frame starts from the same noise
  whichever window makes it.
- **BigVGAN on chunks.** Committed mel frames ``[a, b)`` are vocoded with ``context`` frames of
  committed mel on each side (fewer only at the segment's own edges, where whole vocoding sees
  its padding too), and the samples of ``[a, b)`` kept: with enough context this equals whole
  vocoding within float error (`vocoder_context` measures how much is enough).

So a piece of ``s`` seconds goes out once the codes cover the frames before it, its ``s`` seconds,
the vocoder's right context and the lookahead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final, NamedTuple, cast

import torch

from ...core.engine import SAMPLE_RATE, ChunkSchedule
from . import batching

HOP: Final = 256
"""Samples per mel frame (22050 Hz, hop 256)."""
FRAMES_PER_CODE: Final = 1.72
"""Mel frames per IndexTTS-2 code, as the library's length regulator target."""
VOCODER_CONTEXT: Final = 40
"""Mel frames of context on each side of a vocoded chunk (measured: see docs/engines.md)."""
LEFT_CONTEXT: Final = 48
"""Committed mel frames the CFM window takes as prompt after the reference (~0.56 s)."""
LOOKAHEAD: Final = 6
"""Codes decoded past a window's committed end, as the CFM's right context (~0.2 s)."""


class Window(NamedTuple):
    """How a segment is cut into windows (frames and codes)."""

    context: int = VOCODER_CONTEXT
    left: int = LEFT_CONTEXT
    lookahead: int = LOOKAHEAD


def frames_of(codes: int) -> int:
    """The mel frames of ``codes`` codes, as the length regulator's target."""
    return int(codes * FRAMES_PER_CODE)


def decode_codes(
    model: object,
    conds: torch.Tensor,
    tokens: list[int],
    *,
    max_mel_tokens: int,
    langs: torch.Tensor | None = None,
) -> Iterator[int]:
    """The GPT's codes for one segment, one per ``next()``, until its stop token or the cap
    (``langs``: IndexTTS-2.5's language id)."""
    from transformers import DynamicCache, LogitsProcessorList
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    lib: Any = model
    gpt = lib.gpt
    device = conds.device
    stop = int(lib.stop_mel_token)
    processors = LogitsProcessorList(
        [
            RepetitionPenaltyLogitsProcessor(batching.REPETITION_PENALTY),
            TemperatureLogitsWarper(batching.TEMPERATURE),
            TopKLogitsWarper(batching.TOP_K),
            TopPLogitsWarper(batching.TOP_P),
        ]
    )
    text = torch.tensor([tokens], dtype=torch.int32, device=device)
    with batching._autocast(lib):
        prefix = (
            gpt.prepare_gpt_inputs(conds, text)
            if langs is None
            else gpt.prepare_gpt_inputs(conds, text, langs)
        )
        input_ids, embeds, mask = prefix
        inference = gpt.inference_model
        inference.store_mel_emb(embeds)
        ids = cast(torch.Tensor, input_ids)
        cache = DynamicCache()
        for _ in range(max_mel_tokens):
            inputs = inference.prepare_inputs_for_generation(
                ids, past_key_values=cache, attention_mask=mask, use_cache=True
            )
            out = inference(**inputs, return_dict=True)
            cache = out.past_key_values
            scores = processors(cast(torch.LongTensor, ids), out.logits[:, -1, :].float())
            code = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)
            if int(code) == stop:
                return
            yield int(code)
            ids = torch.cat([ids, code.to(ids.dtype)], dim=1)
            mask = torch.cat([mask, mask.new_ones((1, 1))], dim=1)


def vocode(model: object, mel: torch.Tensor, start: int, end: int, context: int) -> torch.Tensor:
    """The samples of mel frames ``[start, end)``, vocoded with ``context`` frames each side."""
    lib: Any = model
    return vocode_with(lib.bigvgan, mel, start, end, context)


def vocode_with(
    vocoder: Callable[[torch.Tensor], torch.Tensor], mel: torch.Tensor, start: int, end: int, context: int
) -> torch.Tensor:
    """`vocode` with any vocoder (mel ``(1, 80, frames)`` to samples)."""
    low, high = max(0, start - context), min(mel.size(-1), end + context)
    wav = vocoder(mel[:, :, low:high].float()).reshape(-1)
    return torch.clamp(wav[(start - low) * HOP : (end - low) * HOP], -1.0, 1.0)


def vocoder_context(
    vocoder: Callable[[torch.Tensor], torch.Tensor],
    frames: int = 240,
    tolerance: float = 1e-4,
    device: str | torch.device = "cpu",
) -> int:
    """The fewest frames of context each side that make chunked vocoding equal whole vocoding
    (largest sample difference within ``tolerance``) on a random mel, found by doubling then
    bisecting."""
    generator = torch.Generator().manual_seed(0)
    mel = (torch.randn(1, 80, frames, generator=generator) - 5.0).to(device)
    whole = torch.clamp(vocoder(mel).reshape(-1), -1.0, 1.0)
    middle = frames // 2

    def exact(context: int) -> bool:
        chunk = vocode_with(vocoder, mel, middle - 8, middle + 8, context)
        return float((chunk - whole[(middle - 8) * HOP : (middle + 8) * HOP]).abs().max()) <= tolerance

    high = 1
    while not exact(high) and high < middle - 8:
        high *= 2
    low = high // 2
    while low + 1 < high:
        mid = (low + high) // 2
        low, high = (low, mid) if exact(mid) else (mid, high)
    return high


class Stages(NamedTuple):
    """One segment's model stages, as the windowed pipeline calls them (one model family's)."""

    codes: Iterator[int]
    """The GPT's codes, one per ``next()`` (`decode_codes`)."""
    frames: Callable[[int], int]
    """Mel frames of ``n`` codes (the length regulator's target)."""
    condition: Callable[[list[int]], torch.Tensor]
    """The CFM's condition ``(1, frames(n), C)`` for the codes decoded so far."""
    max_codes: int
    prompt_condition: torch.Tensor  # (1, R, C)
    ref_mel: torch.Tensor  # (1, 80, R)
    style: torch.Tensor  # (1, 192)
    steps: int  # diffusion steps


def stages2(model: object, prepared: batching.Prepared, tokens: list[int], max_mel_tokens: int) -> Stages:
    """IndexTTS-2's stages: the GPT's latents and codes through the length regulator."""
    lib: Any = model
    device = prepared.conds.device
    models = lib.s2mel.models

    def condition(codes: list[int]) -> torch.Tensor:
        code_tensor = torch.tensor(codes, dtype=torch.long, device=device)
        work = batching.Work(prepared, tokens, None)
        latent = batching.latents(lib, [work], [code_tensor])[0]  # causal: the prefix's rows are final
        hidden = models["gpt_layer"](latent)
        semantic = lib.semantic_codec.quantizer.vq2emb(code_tensor.view(1, 1, -1)).transpose(1, 2) + hidden
        target = torch.tensor([frames_of(len(codes))], dtype=torch.long, device=device)
        return cast(
            torch.Tensor, models["length_regulator"](semantic, ylens=target, n_quantizers=3, f0=None)[0]
        )

    return Stages(
        codes=decode_codes(model, prepared.conds, tokens, max_mel_tokens=max_mel_tokens),
        frames=frames_of,
        condition=condition,
        max_codes=max_mel_tokens,
        prompt_condition=prepared.prompt_condition,
        ref_mel=prepared.ref_mel,
        style=prepared.style,
        steps=batching.DIFFUSION_STEPS,
    )


def segment_pieces(
    model: object,
    stages: Stages,
    *,
    schedule: ChunkSchedule,
    noise: torch.Generator,
    window: Window,
) -> Iterator[tuple[torch.Tensor, bool]]:
    """One segment's audio in pieces: ``(samples in [-1, 1], final)``, the final one last."""
    lib: Any = model
    device = stages.ref_mel.device
    cfm = lib.s2mel.models["cfm"]
    channels = int(cfm.in_channels)
    starts = torch.randn([1, channels, stages.frames(stages.max_codes) + 2], generator=noise).to(device)
    codes: list[int] = []
    done = False
    mel = torch.zeros(1, channels, 0, device=device)
    vocoded = 0

    def committed() -> int:
        return stages.frames(len(codes)) if done else stages.frames(max(0, len(codes) - window.lookahead))

    def commit(end: int) -> torch.Tensor:
        """``mel`` with frames up to ``end`` added: one CFM window over the codes so far."""
        start = mel.size(-1)
        if end <= start:
            return mel
        cond = stages.condition(codes)
        left = min(window.left, start)
        prompt = torch.cat([stages.ref_mel, mel[:, :, start - left : start]], dim=2)
        mu = torch.cat([stages.prompt_condition, cond[:, start - left :]], dim=1)
        head = torch.zeros(1, channels, prompt.size(-1), device=device)
        x = torch.cat([head, starts[:, :, start : cond.size(1)]], dim=2)
        out = batching.solve_euler(cfm, x, prompt, mu, stages.style, stages.steps)
        return torch.cat([mel, out[:, :, prompt.size(-1) :][:, :, : end - start]], dim=2)

    for seconds in schedule.sizes():
        want = vocoded + round(seconds * SAMPLE_RATE / HOP)
        while not done and committed() < want + window.context:
            code = next(stages.codes, None)
            if code is None:
                done = True
            else:
                codes.append(code)
        if done:
            break
        mel = commit(committed())
        yield vocode(model, mel, vocoded, want, window.context), False
        vocoded = want
    mel = commit(stages.frames(len(codes)))
    if vocoded >= mel.size(-1):  # a GPT that stopped at once: nothing to vocode
        yield torch.zeros(0, device=device), True
        return
    yield vocode(model, mel, vocoded, mel.size(-1), window.context), True
