"""IndexTTS2 rows advanced together: one padded GPT decode per step, later stages grouped by shape.

Theory of operation. A row is one task's utterance. Its conditioning (speaker and emotion
latents, the s2mel prompt, the emotion vector) is computed once, alone, when it joins, exactly
as ``IndexTTS2.infer_generator`` computes it for every segment (the values are the same each
time). The GPT's speaker latent and merged emotion vector depend only on the prompt files and
the emotion weight, so a `Memo` keeps those of recent voices for the next task (the engine's
speaker cache keeps the audio features they come from). A step takes the next text segment of
every row:

- The autoregressive GPT stage runs once for all rows: each row's ``[cond][text]`` prefix is
  left-padded to the longest (``UnifiedVoice.prepare_gpt_inputs`` builds the mask), and
  ``generate`` decodes with the model's own settings (3 beams, top-p 0.8, top-k 30, temperature
  0.8, repetition penalty 10). Every row stops on its own stop token; a finished row idles until
  the longest is done, then each row's codes are cut at its first stop token.
- The latent pass (one causal GPT pass over ``[cond][text][codes]``) runs once for all rows,
  left-padded and masked like the decode. s2mel (length regulator, 25 CFM steps) and BigVGAN
  are convolutional along time: rows share them when their code and prompt lengths agree.
  Otherwise a row runs them alone.

The library's own path is never changed: a seeded row is advanced alone through it (its private
RNG state swapped in, as at batch size 1), so its audio is the same as served one at a time.

The plumbing at the end (`advance`, `step`, `groups`, `split_on_oom`, `solve_euler`) is shared
with IndexTTS-2.5, whose own stages live beside its engine (``indextts25``).
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, Final, NamedTuple, Protocol, TypeVar, cast

import torch

from ...core.engine import Segment

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R")
_W_co = TypeVar("_W_co", covariant=True)
_R_contra = TypeVar("_R_contra", contravariant=True)
_Row = TypeVar("_Row")

Outcome = Segment | BaseException | None
"""What a step gives one row: its next segment, the error it raised, or ``None``: no more."""

DIFFUSION_STEPS: Final = 25
CFG_RATE: Final = 0.7
"""s2mel settings hard-coded in ``infer_generator``."""

# The decoding settings ``infer_generator`` uses when a caller passes none.
TOP_P: Final = 0.8
TOP_K: Final = 30
TEMPERATURE: Final = 0.8
NUM_BEAMS: Final = 3
LENGTH_PENALTY: Final = 0.0
REPETITION_PENALTY: Final = 10.0


class Prepared(NamedTuple):
    """One row's conditioning, computed once when it joins."""

    latent: torch.Tensor  # (1, 32, D): the speaker conditioning latent
    emovec: torch.Tensor  # (1, D): the emotion vector after mixing
    conds: torch.Tensor  # (1, 34, D): latent + emovec, then the two duration embeddings
    style: torch.Tensor  # (1, 192)
    prompt_condition: torch.Tensor  # (1, P, C)
    ref_mel: torch.Tensor  # (1, 80, R)
    segments: list[list[int]]  # text token ids per segment


class Work(NamedTuple):
    """One row's part in a step: its conditioning, the segment to speak and its noise source."""

    prepared: Prepared
    tokens: list[int]
    noise: torch.Generator | None  # deterministic mode: the row's own; else the global RNG


class Memo:
    """Tensors computed from prompt files, kept for the ``size`` most recently used keys.

    A key names its files by ``file_key`` (path, size, mtime, inode: an edited file is a new
    key); a file without a key is never kept.
    """

    def __init__(self, size: int, file_key: Callable[[str], Hashable | None]) -> None:
        self.size = size
        self.file_key = file_key
        self.hits = self.misses = 0
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()

    def get(
        self, kind: str, paths: Sequence[str], extra: Hashable, compute: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        files = [self.file_key(path) for path in paths]
        if any(key is None for key in files):
            return compute()
        key = (kind, *files, extra)
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return value
        self.misses += 1
        value = self._entries[key] = compute()
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()


def prepare(
    model: object,
    kwargs: dict[str, object],
    spk_audio: str,
    text: str,
    split: Callable[[list[str]], list[list[str]]],
    memo: Memo | None = None,
) -> Prepared:
    """A row's conditioning, computed as ``infer_generator`` does before its segment loop; the
    speaker latent and the merged emotion vector come from ``memo`` when it has them."""
    lib: Any = model  # the untyped indextts model: typed values leave as casts
    emo_vector = cast("list[float] | None", kwargs.get("emo_vector"))
    if kwargs.get("use_emo_text", False):
        emo_text = cast("str | None", kwargs.get("emo_text")) or text
        emo_vector = list(lib.qwen_emo.inference(emo_text).values())
    emo_audio, emo_alpha, emo_vector = emotion_inputs(kwargs, spk_audio, emo_vector)
    spk_cond, style, prompt_condition, ref_mel = lib._get_speaker_conditioning(spk_audio, False)
    emovec_mat = weight = None
    if emo_vector is not None:
        from indextts.emotion import find_most_similar_cosine  # type: ignore[import-untyped]

        weight, emovec_mat = mix_emotions(lib, emo_vector, style, kwargs, find_most_similar_cosine)
    emo_cond = lib._get_emotion_conditioning(emo_audio, False)
    gpt = lib.gpt
    device = spk_cond.device
    with _autocast(lib):
        spk_len = torch.tensor([spk_cond.shape[-1]], device=device)
        emo_len = torch.tensor([emo_cond.shape[-1]], device=device)

        def merged() -> torch.Tensor:
            return cast(torch.Tensor, gpt.merge_emovec(spk_cond, emo_cond, spk_len, emo_len, alpha=emo_alpha))

        def speaker() -> torch.Tensor:
            return cast(torch.Tensor, gpt.get_conditioning(spk_cond.transpose(1, 2), spk_len))

        if memo is None:
            emovec, latent = merged(), speaker()
        else:
            emovec = memo.get("emovec", (spk_audio, emo_audio), emo_alpha, merged)
            latent = memo.get("latent", (spk_audio,), None, speaker)
        if emovec_mat is not None and weight is not None:
            emovec = emovec_mat + (1 - torch.sum(weight)) * emovec
        zero = torch.zeros(1, device=device).long()
        durations = (gpt.speed_emb(zero + 1).unsqueeze(1), gpt.speed_emb(zero).unsqueeze(1))
        conds = torch.cat((latent + emovec.unsqueeze(1), *durations), 1)
    tokenizer = lib.tokenizer
    segments = [tokenizer.convert_tokens_to_ids(sent) for sent in split(tokenizer.tokenize(text))]
    return Prepared(latent, emovec, conds, style, prompt_condition, ref_mel, cast(list[list[int]], segments))


def emotion_inputs(
    kwargs: dict[str, object], spk_audio: str, emo_vector: list[float] | None
) -> tuple[str, float, list[float] | None]:
    """The emotion reference, alpha and vector, as both libraries settle them: a vector replaces
    the emotion audio and carries alpha itself; without emotion audio the speaker's own, at 1."""
    emo_audio = cast("str | None", kwargs.get("emo_audio_prompt"))
    emo_alpha = float(cast(float, kwargs.get("emo_alpha", 1.0)))
    if emo_vector is not None:
        emo_audio = None
        scale = max(0.0, min(1.0, emo_alpha))
        if scale != 1.0:
            emo_vector = [int(x * scale * 10000) / 10000 for x in emo_vector]
    if emo_audio is None:
        return spk_audio, 1.0, emo_vector
    return emo_audio, emo_alpha, emo_vector


def mix_emotions(
    lib: Any,
    emo_vector: list[float],
    style: torch.Tensor,
    kwargs: dict[str, object],
    nearest: Callable[[torch.Tensor, torch.Tensor], Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The vector's weights and its mix of the model's emotion matrix, as both libraries compute
    them (``nearest``: the library's own cosine search, unless ``use_random``)."""
    weight = torch.tensor(emo_vector, device=lib.device)
    index: list[Any]
    if kwargs.get("use_random"):
        index = [random.randint(0, x - 1) for x in lib.emo_num]
    else:
        index = [nearest(style, tmp) for tmp in lib.spk_matrix]
    matrix = torch.cat([tmp[i].unsqueeze(0) for i, tmp in zip(index, lib.emo_matrix, strict=True)], 0)
    return weight, torch.sum(weight.unsqueeze(1) * matrix, 0).unsqueeze(0)


def _autocast(lib: Any) -> torch.autocast:
    dtype = cast("torch.dtype | None", lib.dtype)
    device_type = torch.device(cast(str, lib.device)).type
    return torch.autocast(device_type, enabled=dtype is not None, dtype=dtype)


def decode(model: object, works: Sequence[Work], *, max_mel_tokens: int, sample: bool) -> list[torch.Tensor]:
    """The GPT stage for every row at once: each row's codes, cut at its first stop token."""
    conds = [work.prepared.conds for work in works]
    return generate(
        model, conds, [work.tokens for work in works], max_mel_tokens=max_mel_tokens, sample=sample
    )


def generate(
    model: object,
    conds: Sequence[torch.Tensor],
    tokens: Sequence[Sequence[int]],
    langs: torch.Tensor | None = None,
    *,
    max_mel_tokens: int,
    sample: bool,
) -> list[torch.Tensor]:
    """One padded ``generate`` for rows of conditioning ``conds`` and text ``tokens`` (and, for
    IndexTTS-2.5, language ids ``langs``): each row's codes, cut at its first stop token."""
    from transformers import LogitsProcessorList

    lib: Any = model  # the untyped indextts model: typed values leave as casts
    gpt = lib.gpt
    stop_text = int(cast(int, gpt.stop_text_token))
    device = conds[0].device
    width = max(len(row) for row in tokens)
    # prepare_gpt_inputs drops stop text tokens and left-pads each row itself.
    text = torch.full((len(tokens), width), stop_text, dtype=torch.int32, device=device)
    for row, ids in enumerate(tokens):
        text[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.int32, device=device)
    stop = int(cast(int, lib.stop_mel_token))
    with _autocast(lib):
        cond = torch.cat(list(conds), 0)
        prefix = (
            gpt.prepare_gpt_inputs(cond, text) if langs is None else gpt.prepare_gpt_inputs(cond, text, langs)
        )
        input_ids, embeds, mask = prefix
        gpt.inference_model.store_mel_emb(embeds)
        start = int(cast(torch.Tensor, input_ids).shape[1])
        output = cast(
            torch.Tensor,
            gpt.inference_model.generate(
                input_ids,
                bos_token_id=int(cast(int, gpt.start_mel_token)),
                pad_token_id=stop,
                eos_token_id=stop,
                attention_mask=mask,
                max_length=start + max_mel_tokens,
                logits_processor=LogitsProcessorList(),
                num_return_sequences=1,
                do_sample=sample,
                top_p=TOP_P,
                top_k=TOP_K,
                temperature=TEMPERATURE,
                length_penalty=LENGTH_PENALTY,
                num_beams=NUM_BEAMS,
                repetition_penalty=REPETITION_PENALTY,
            ),
        )
    codes = []
    for row in output[:, start:]:
        stops = (row == stop).nonzero(as_tuple=False)
        codes.append(row[: int(stops[0, 0]) if stops.numel() else len(row)])
    return codes


def mel_key(work: Work, codes: torch.Tensor) -> tuple[int, int, int]:
    """Rows that may share s2mel and BigVGAN: equal code and prompt lengths (the CFM's convolutions
    see past a padded end, and the length regulator interpolates every row to the longest)."""
    prepared = work.prepared
    return (len(codes), prepared.ref_mel.shape[-1], prepared.prompt_condition.shape[1])


def latents(model: object, works: Sequence[Work], codes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The GPT's latent pass for every row at once: each row's ``(1, codes, D)`` latent.

    Each row's ``[cond][text][codes]`` embedding is composed as ``UnifiedVoice.forward`` composes
    it; rows of different lengths are left-padded and masked. The GPT has no position embedding of
    its own (the text and code positions are in the embeddings), so where a row starts changes
    nothing but the summation order. Rows of one length go through unpadded, as the library's
    forward would run them together.
    """
    lib: Any = model  # the untyped indextts model: typed values leave as casts
    gpt = lib.gpt
    device = works[0].prepared.conds.device
    embeds: list[torch.Tensor] = []
    with _autocast(lib):
        for work, row_codes in zip(works, codes, strict=True):
            text = torch.tensor([work.tokens], dtype=torch.int32, device=device)
            text = torch.nn.functional.pad(text, (0, 1), value=int(gpt.stop_text_token))
            text = gpt.build_aligned_inputs_and_targets(text, gpt.start_text_token, gpt.stop_text_token)[0]
            mel = torch.nn.functional.pad(row_codes.unsqueeze(0), (0, 1), value=int(gpt.stop_mel_token))
            mel = gpt.build_aligned_inputs_and_targets(mel, gpt.start_mel_token, gpt.stop_mel_token)[0]
            text_emb = gpt.text_embedding(text) + gpt.text_pos_embedding(text)
            mel_emb = gpt.mel_embedding(mel) + gpt.mel_pos_embedding(mel)
            embeds.append(torch.cat([work.prepared.conds, text_emb, mel_emb], dim=1))
        width = max(embed.shape[1] for embed in embeds)
        mask = None
        if any(embed.shape[1] != width for embed in embeds):
            mask = torch.zeros((len(embeds), width), dtype=torch.long, device=device)
            for row, embed in enumerate(embeds):
                mask[row, width - embed.shape[1] :] = 1
                embeds[row] = torch.nn.functional.pad(embed, (0, 0, width - embed.shape[1], 0))
        hidden = gpt.gpt(inputs_embeds=torch.cat(embeds, 0), attention_mask=mask, return_dict=True)
        out = cast(torch.Tensor, hidden.last_hidden_state)
        # The last len(codes) + 2 positions are the codes' (start and stop added); forward drops two.
        return [
            cast(torch.Tensor, gpt.final_norm(out[row : row + 1, width - len(row_codes) - 2 :]))[
                :, : len(row_codes)
            ]
            for row, row_codes in enumerate(codes)
        ]


def speak(
    model: object, works: Sequence[Work], codes: Sequence[torch.Tensor], latent: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """s2mel and BigVGAN for rows of one `mel_key`: each row's wav, ``(1, samples)`` in [-1, 1]."""
    lib: Any = model
    n = len(works)
    device = works[0].prepared.conds.device
    code_len = len(codes[0])
    stacked = torch.stack(list(codes), 0)
    models = lib.s2mel.models
    hidden = models["gpt_layer"](torch.cat(list(latent), 0))
    semantic = lib.semantic_codec.quantizer.vq2emb(stacked.unsqueeze(1)).transpose(1, 2) + hidden
    target = (torch.full((n,), code_len, dtype=torch.long, device=device) * 1.72).long()
    cond = models["length_regulator"](semantic, ylens=target, n_quantizers=3, f0=None)[0]
    prompt = torch.cat([work.prepared.prompt_condition for work in works], 0)
    condition = torch.cat([prompt, cond], dim=1)
    ref_mel = torch.cat([work.prepared.ref_mel for work in works], 0)
    style = torch.cat([work.prepared.style for work in works], 0)
    cfm = models["cfm"]
    frames = condition.size(1)
    channels = int(cast(int, cfm.in_channels))
    noise = torch.cat([draw_noise(work.noise, channels, frames, device) for work in works], 0)
    mel = solve_euler(cfm, noise, ref_mel, condition, style, DIFFUSION_STEPS)
    mel = mel[:, :, ref_mel.size(-1) :]
    wav = cast(torch.Tensor, lib.bigvgan(mel.float()))
    return [torch.clamp(wav[row].reshape(1, -1), -1.0, 1.0) for row in range(n)]


def solve_euler(
    cfm: Any,
    x: torch.Tensor,
    prompt: torch.Tensor,
    mu: torch.Tensor,
    style: torch.Tensor,
    steps: int,
    cfg_rate: float = CFG_RATE,
) -> torch.Tensor:
    """The CFM's fixed-step Euler solve with classifier-free guidance, for ``n`` rows at once.

    The same arithmetic as the libraries' ``solve_euler``, whose time input is one row per CFG
    half (so it only runs one row): here each of the ``2n`` stacked rows gets its own. Every row
    of a group has one frame count, so the estimator gets it once and broadcasts it over the
    stacked rows (one mask, not ``2n`` equal ones), as upstream does at n = 1.
    """
    rows, frames = x.size(0), x.size(-1)
    device = x.device
    t_span = torch.linspace(0, 1, steps + 1, device=device)
    guided = cfg_rate > 0
    width = 2 * rows if guided else rows
    lens = torch.full((1,), frames, dtype=torch.long, device=device)
    prompt_len = prompt.size(-1)
    prompt_x = torch.zeros_like(x)
    prompt_x[..., :prompt_len] = prompt[..., :prompt_len]
    x[..., :prompt_len] = 0
    if getattr(cfm, "zero_prompt_speech_token", False):
        mu[..., :prompt_len] = 0
    if guided:
        prompt_x, style, mu = (torch.cat([v, torch.zeros_like(v)], dim=0) for v in (prompt_x, style, mu))
    t = t_span[0]
    for step in range(1, len(t_span)):
        dt = t_span[step] - t_span[step - 1]
        stacked_t = t.unsqueeze(0).expand(width).contiguous()
        out = cast(
            torch.Tensor,
            cfm.estimator(torch.cat([x, x], dim=0) if guided else x, prompt_x, lens, stacked_t, style, mu),
        )
        if guided:
            dphi_dt, cfg_dphi_dt = out.chunk(2, dim=0)
            out = (1.0 + cfg_rate) * dphi_dt - cfg_rate * cfg_dphi_dt
        x = x + dt * out
        t = t + dt
        x[:, :, :prompt_len] = 0
    return x


def draw_noise(
    generator: torch.Generator | None, channels: int, frames: int, device: torch.device
) -> torch.Tensor:
    """One row's starting noise: from its own generator (deterministic mode), else the global RNG."""
    if generator is None:
        return torch.randn([1, channels, frames], device=device)
    return torch.randn([1, channels, frames], generator=generator, device=generator.device).to(device)


def split_on_oom(
    items: Sequence[_T], run: Callable[[Sequence[_T]], list[_R]], on_split: Callable[[], None]
) -> list[_R]:
    """``run(items)``; when it runs out of device memory, in two halves (recursively), never whole.

    A single item that still does not fit raises the error.
    """
    try:
        return run(items)
    except torch.OutOfMemoryError:
        if len(items) < 2:
            raise
    on_split()
    half = len(items) // 2
    return split_on_oom(items[:half], run, on_split) + split_on_oom(items[half:], run, on_split)


def groups(
    items: Sequence[_T], codes: Sequence[torch.Tensor], key: Callable[[_T, torch.Tensor], Hashable]
) -> list[list[int]]:
    """The rows' indices, grouped by ``key`` (first appearance first)."""
    found: dict[Hashable, list[int]] = {}
    for index, (item, code) in enumerate(zip(items, codes, strict=True)):
        found.setdefault(key(item, code), []).append(index)
    return list(found.values())


class Row(Protocol[_W_co, _R_contra]):
    """An engine's iterator in batched mode, under the engine's lock."""

    def prepare(self) -> bool:
        """Compute the conditioning on the first step; False when there is nothing (more) to say."""

    def work(self) -> _W_co:
        """This row's part in the step."""

    def deliver(self, result: _R_contra) -> Segment | None:
        """The step's segment for this row; ``None``: it came out empty, run the row's next one."""

    def fail(self, exc: BaseException) -> BaseException:
        """This row's error: the row is closed."""


def advance(
    rows: Sequence[Iterator[Segment]],
    claim: Callable[[Iterator[Segment]], _Row | None],
    together: Callable[[list[_Row]], list[Outcome]],
) -> list[Outcome]:
    """Every row one segment on: the rows ``claim`` accepts in one batched step (``together``),
    any other alone, in order. An exception belongs to its row, returned in its place."""
    results: list[Outcome] = [None] * len(rows)
    claimed: list[tuple[int, _Row]] = []
    for index, row in enumerate(rows):
        mine = claim(row)
        if mine is not None:
            claimed.append((index, mine))
        else:
            results[index] = _next_or_error(row)
    if claimed:
        for (index, _), outcome in zip(claimed, together([row for _, row in claimed]), strict=True):
            results[index] = outcome
    return results


def step(
    rows: Sequence[Row[_T, _R]], run: Callable[[Sequence[_T]], list[_R]], free_memory: Callable[[], None]
) -> list[Outcome]:
    """One batched step, under the engine's lock: ``run`` on every ready row's work, split in
    halves on running out of memory; when it fails, each row alone before failing any. A row
    whose segment came out empty runs its next one before the step ends."""
    outcomes: dict[int, Outcome] = {}
    ready: list[Row[_T, _R]] = []
    for row in rows:
        try:
            if row.prepare():
                ready.append(row)
            else:
                outcomes[id(row)] = None
        except Exception as exc:
            outcomes[id(row)] = row.fail(exc)
    while ready:
        works = [row.work() for row in ready]
        results: list[_R | BaseException]
        try:
            results = [*split_on_oom(works, run, free_memory)]
        except Exception:  # whose it is cannot be known: each row alone, before failing any
            log.warning("batched step of %d rows failed; retrying each alone", len(works), exc_info=True)
            free_memory()
            results = []
            for work in works:
                alone = _run_alone(run, work)
                results.append(alone)
        again: list[Row[_T, _R]] = []
        for row, result in zip(ready, results, strict=True):
            if isinstance(result, BaseException):
                outcomes[id(row)] = row.fail(result)
            elif (segment := row.deliver(result)) is not None:
                outcomes[id(row)] = segment
            else:
                again.append(row)
        ready = again
    return [outcomes[id(row)] for row in rows]


def _run_alone(run: Callable[[Sequence[_T]], list[_R]], work: _T) -> _R | BaseException:
    try:
        result: _R | BaseException = run([work])[0]
    except Exception as exc:
        result = exc
    return result


def _next_or_error(row: Iterator[Segment]) -> Outcome:
    """``next(row)``: the segment, ``None`` at the end, or the exception it raised."""
    try:
        return next(row)
    except StopIteration:
        return None
    except Exception as exc:
        return exc
