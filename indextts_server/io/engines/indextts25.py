"""The IndexTTS-2.5 engine: the Engine port on ``indextts25``, with text emotion from ``indextts``.

Batched mode (``advance``, ``--batch-size N``) mirrors IndexTTS-2's (see `batching`): a row's
conditioning (the library's cached speaker and emotion conditioning, its emotion vector, the
GPT prefix ``spk_emb_proj(style) + emovec`` and two zero rows) is computed once when it joins,
as ``infer_generator`` does before its segment loop. A step decodes every row's next segment in
one left-padded ``generate`` (per-row language ids, the library's decoding settings, per-row
stop). 2.5 has no latent pass: the codec, the length regulator (with the row's own duration
factor), the CFM and BigVGAN run together for rows whose code count, target frames and prompt
lengths agree, else per row. A seeded row, and every row with the flash GPT engine (one
sequence at a time), advances alone through the library's own path.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import threading
import warnings
from collections.abc import Generator, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol, cast

import numpy as np
import torch

from ...core.config import EngineOptions
from ...core.contract.jobs import unfit
from ...core.engine import (
    DEFAULT_SCHEDULE,
    PCM,
    SAMPLE_RATE,
    Capabilities,
    ChunkSchedule,
    Lang,
    Segment,
    SynthesisJob,
    detect_lang,
    split_speed,
)
from . import batching, chunked
from .indextts2 import (
    _NOISE_SEED,
    _RNG_GATE,
    ChunkedPieces,
    EngineLoadError,
    SynthesisError,
    _check_device,
    _make_rng_neutral,
    _require_file,
    _RngState,
    client_error,
    declared_capabilities,
    emotion_kwargs,
    engine_step,
)
from .speed import close_segments, stretched

__all__ = ["LANGS", "NATIVE_SPEEDS", "IndexTTS25Engine", "capabilities25"]

log = logging.getLogger(__name__)

LANGS: Final[tuple[Lang, ...]] = ("zh", "en", "ja", "es", "ar")
NATIVE_SPEEDS: Final = (0.5, 2.0)
"""The speeds the model renders itself (``duration_factor = 1 / speed``, 2.0 to 0.5)."""
QWEN_DIR: Final = "qwen0.6bemo4-merge"
_WARMUP_TEXT = "你好，今天天气很好。"
# One sentence per language, normalized at warm-up so no request pays a grammar's compilation.
_NORMALIZER_SAMPLES: Final[dict[Lang, str]] = {
    "en": "It costs 12 dollars at 3:30 pm.",
    "es": "Cuesta 12 euros a las 3:30.",
    "ja": "今日は12時に会いましょう。",
}


class _Model(Protocol):
    """The slice of the untyped ``indextts25.infer_v2_5.IndexTTS2`` this adapter touches."""

    semantic_model: object

    def infer_generator(
        self, spk_audio_prompt: str, text: str, output_path: None, lang: str, **kwargs: object
    ) -> Generator[tuple[torch.Tensor, str], None, None]: ...

    def _prepare_text(self, text: str, lang: str) -> str: ...


class _Emotion(Protocol):
    def inference(self, text: str) -> dict[str, float]: ...


def japanese_available() -> bool:
    """Whether the Japanese segmenter (the ``indextts25-inference[ja]`` extra) is installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("fugashi", "unidic_lite"))


def capabilities25(*, emotion_model: bool, japanese: bool) -> Capabilities:
    """IndexTTS-2.5's, as loaded: five languages (``ja`` only with its segmenter), the language
    picked from the text when a request names none, ``text`` emotion with ``qwen0.6bemo4-merge/``."""
    if not japanese:
        log.warning('no Japanese segmenter: lang ja is refused (pip install "indextts25-inference[ja]")')
    return declared_capabilities(
        "IndexTTS-2.5",
        LANGS,
        emotion_model=emotion_model,
        missing_tokenizers=() if japanese else ("ja",),
        detects_lang=True,
    )


class IndexTTS25Engine:
    """One IndexTTS-2.5 model behind the Engine port. Calls are serialised by an internal lock.

    Emotion by text loads the checkpoint's ``qwen0.6bemo4-merge/`` with ``indextts2-inference``'s
    ``QwenEmotion`` (``indextts25`` has none): the text becomes 8 weights, used as a vector.
    """

    name = "indextts25"

    def __init__(
        self,
        options: EngineOptions,
        device: str = "cpu",
        *,
        cfg_path: str | os.PathLike[str] | None = None,
        warmup_prompt: str | os.PathLike[str] | None = None,
        deterministic: bool = False,
        schedule: ChunkSchedule = DEFAULT_SCHEDULE,
    ) -> None:
        model_path = Path(options.model_dir)
        config_path = Path(cfg_path) if cfg_path is not None else model_path / "config.yaml"
        if not model_path.is_dir():
            raise EngineLoadError(f"model directory not found: {model_path}")
        if not config_path.is_file():
            raise EngineLoadError(f"model config not found: {config_path}")
        self.device = _check_device(device)
        self.max_mel_tokens = options.max_mel_tokens
        self.diffusion_steps = options.diffusion_steps
        self.chunked = options.chunked_streaming  # the default for jobs that do not say
        self.schedule = schedule
        self.window = WINDOW25
        # Test-only, as IndexTTS2Engine's: batched rows decode greedily and draw their noise
        # from a generator of their own, so a row's output is independent of its batch.
        self.deterministic = deterministic
        self.warmup_prompt = None if warmup_prompt is None else str(warmup_prompt)
        self._lock = threading.Lock()
        try:
            model_cls = cast(type, importlib.import_module("indextts25.infer_v2_5").IndexTTS2)
        except Exception as exc:
            raise EngineLoadError(f"the indextts25 package could not be imported: {exc!r}") from exc
        cuda = self.device.startswith("cuda")
        if options.fp16 and not cuda:
            log.warning("--fp16 (bf16 for IndexTTS-2.5) applies on CUDA only; ignoring it")
        flash = options.attn_backend == "flash"
        if flash and not cuda:
            log.warning("--attn-backend flash needs CUDA; using sdpa")
            flash = False
        if flash and importlib.util.find_spec("flash_attn") is None:
            raise EngineLoadError(
                '--attn-backend flash needs flash-attn: pip install "indextts25-inference[flash]"'
            )
        log.info("loading IndexTTS-2.5 from %s on %s", model_path, self.device)
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"indextts25(\.|$)")
        try:
            self._model = cast(
                _Model,
                model_cls(
                    cfg_path=str(config_path),
                    model_dir=str(model_path),
                    device=self.device,
                    use_bf16=options.fp16 and cuda,
                    use_accel=flash,
                ),
            )
        except Exception as exc:
            if cuda:
                torch.cuda.empty_cache()
            reason = f"IndexTTS-2.5 failed to load from {model_path}: {type(exc).__name__}: {exc}"
            raise EngineLoadError(reason) from exc
        # w2v-bert draws from the RNG for layerdrop even in eval: conditioning (cached per file)
        # must not move a seeded request's sampling.
        _make_rng_neutral(self._model.semantic_model)
        # The flash engine decodes one sequence at a time: its rows advance alone.
        self._batchable = getattr(cast(Any, self._model).gpt, "accel_engine", None) is None
        self._emotion: _Emotion | None = None
        qwen = model_path / QWEN_DIR
        if qwen.is_dir():
            try:
                emotion_cls = importlib.import_module("indextts.infer_v2").QwenEmotion
                self._emotion = cast(_Emotion, emotion_cls(str(qwen)))
            except Exception as exc:
                raise EngineLoadError(
                    f"the emotion model {qwen} failed to load: {type(exc).__name__}: {exc}"
                ) from exc
        self.capabilities = capabilities25(
            emotion_model=self._emotion is not None, japanese=japanese_available()
        )

    # --- the Engine port ------------------------------------------------------------------------

    def synthesize(self, job: SynthesisJob) -> Iterator[Segment]:
        """Check the job and return a lazy iterator; the model runs only inside ``next()``.

        ``lang`` absent: `detect_lang`. ``speed`` within `NATIVE_SPEEDS` is the model's own
        ``duration_factor``; beyond it the rest is a time-stretch.
        """
        if (problem := unfit(job, self.capabilities)) is not None:  # refused before the queue
            raise SynthesisError(problem.message)
        lang = job.lang or detect_lang(job.text)
        _require_file(job.prompt_audio, "speaker prompt")
        native, stretch = split_speed(job.speed, NATIVE_SPEEDS)
        kwargs: dict[str, object] = {
            "interval_silence": job.interval_silence,
            "max_text_tokens_per_segment": job.max_tokens,
            "use_random": job.use_random,
            "max_mel_tokens": self.max_mel_tokens,
            "duration_factor": 1.0 / native,
        }
        if self.diffusion_steps is not None:
            kwargs["diffusion_steps"] = self.diffusion_steps
        kwargs.update(emotion_kwargs(job))
        if job.emo_mode == "text":
            kwargs.update(emo_alpha=job.emo_alpha)
        if self.chunked if job.chunked is None else job.chunked:
            pieces = partial(self._pieces, job, lang, kwargs)
            chunks = ChunkedPieces(
                self._lock,
                self.device,
                self._free_device_memory,
                job.seed,
                pieces,
                model="IndexTTS-2.5",
                empty_last=True,  # every segment stopped at once: an empty last one, as _Segments ends
            )
            return stretched(chunks, stretch)
        return stretched(_Segments(self, job, lang, kwargs), stretch)

    def warm_up(self) -> None:
        """One short synthesis, then each language's text normalizer loaded (the first load of a
        grammar takes up to a minute; its cache under ``$XDG_CACHE_HOME`` makes later starts quick)."""
        if self.warmup_prompt is None:
            log.info("no warm-up prompt configured; skipping warm-up")
        else:
            job = SynthesisJob(text=_WARMUP_TEXT, prompt_audio=self.warmup_prompt, seed=0, lang="zh")
            segments = self.synthesize(job)
            try:
                samples = sum(len(segment.pcm) for segment in segments)
            finally:
                close_segments(segments)
            log.info("warm-up rendered %.2f s of audio", samples / SAMPLE_RATE)
        for lang, sample in _NORMALIZER_SAMPLES.items():
            if lang == "ja" and not japanese_available():
                continue
            with self._lock:
                self._model._prepare_text(sample, lang)

    def advance(self, rows: Sequence[Iterator[Segment]]) -> list[Segment | BaseException | None]:
        """Advance every row by one segment, together (see the module's docstring); ``None`` for
        a finished row. As `IndexTTS2Engine.advance`: unseeded rows not started alone share the
        step, any other row advances alone, and an exception is its row's."""
        return batching.advance(rows, self._claim, self._advance_together)

    def _claim(self, row: Iterator[Segment]) -> _Segments | None:
        mine = isinstance(row, _Segments) and row._engine is self and row.batchable and self._batchable
        return cast(_Segments, row) if mine else None

    def _advance_together(self, rows: list[_Segments]) -> list[Segment | BaseException | None]:
        with self._lock, torch.inference_mode(), _RNG_GATE.shared():
            return batching.step(rows, self._run_works, self._free_device_memory)

    def _run_works(self, works: Sequence[_Work]) -> list[torch.Tensor | None]:
        """Decode all rows together, then render the rows whose shapes agree together; ``None``
        for a row whose GPT stopped at once (the library skips such a segment)."""
        model = self._model
        codes = decode(model, works, max_mel_tokens=self.max_mel_tokens, sample=not self.deterministic)
        wavs: list[torch.Tensor | None] = [None] * len(works)
        spoken = [i for i, code in enumerate(codes) if len(code)]
        steps = self.diffusion_steps or batching.DIFFUSION_STEPS
        for group in batching.groups([works[i] for i in spoken], [codes[i] for i in spoken], mel_key):
            rows = [spoken[i] for i in group]
            out = speak(model, [works[i] for i in rows], [codes[i] for i in rows], steps)
            for index, wav in zip(rows, out, strict=True):
                wavs[index] = wav
        return wavs

    def _free_device_memory(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    # --- helpers used by _Segments ------------------------------------------------------------

    def _with_emotion(self, job: SynthesisJob, kwargs: dict[str, object]) -> dict[str, object]:
        """``kwargs`` with emotion by text turned into the vector the library takes."""
        if job.emo_mode != "text":
            return kwargs
        assert self._emotion is not None
        weights = self._emotion.inference(job.emo_text or job.text)
        return {**kwargs, "emo_vector": list(weights.values())}

    def _pieces(self, job: SynthesisJob, lang: str, kwargs: dict[str, object]) -> Iterator[Segment]:
        """A chunked job's pieces (`chunked`), each segment's last one with its pause; a segment
        whose GPT stops at once is skipped, as the library skips it."""
        prepared = prepare(self._model, self._with_emotion(job, kwargs), job.prompt_audio, job.text, lang)
        seed = job.seed if job.seed is not None else int(torch.randint(0, 2**31 - 1, ()))
        noise = torch.Generator().manual_seed(seed)
        steps = self.diffusion_steps or batching.DIFFUSION_STEPS
        count = len(prepared.segments)
        pause = np.zeros(int(SAMPLE_RATE * job.interval_silence / 1000.0), dtype=np.int16)
        for index, tokens in enumerate(prepared.segments):
            text = prepared.texts[index].strip()
            last = index == count - 1
            stages = stages25(self._model, prepared, tokens, self.max_mel_tokens, steps)
            for wav, final in chunked.segment_pieces(
                self._model, stages, schedule=self.schedule, noise=noise, window=self.window
            ):
                pcm = (wav * 32767).to("cpu", torch.float32).to(torch.int16).numpy()
                if not final:
                    yield Segment(pcm, False, text, partial=True)
                elif last:
                    yield Segment(pcm, True, text if len(pcm) else "")
                elif len(pcm):
                    yield Segment(np.concatenate([pcm, pause]), False, text)

    def _start(self, job: SynthesisJob, lang: str, kwargs: dict[str, object]) -> _ModelGen:
        return self._model.infer_generator(
            job.prompt_audio,
            job.text,
            None,
            lang,
            stream_return=True,
            emit_text=True,
            **self._with_emotion(job, kwargs),
        )


_ModelGen = Generator[tuple[torch.Tensor, str], None, None]
_END: Final = object()


class _Segments(Iterator[Segment]):
    """Yields one int16 segment per ``next()``; each call advances the model one segment.

    The package yields each segment's audio with its text, then (between segments) the interval
    silence with no text. Reading one item past a segment tells whether another follows: a
    silence costs nothing; with ``interval_silence`` 0 that item is the next segment, kept.
    """

    def __init__(self, engine: IndexTTS25Engine, job: SynthesisJob, lang: str, kwargs: dict[str, object]):
        self._engine = engine
        self._job = job
        self._lang = lang
        self._kwargs = kwargs
        self._gen: _ModelGen | None = None
        self._pending: object = None
        self._index = 0
        self._done = False
        self._rng: list[_RngState | int | None] = [job.seed]
        self._prepared: Prepared | None = None

    def __next__(self) -> Segment:
        if self._done:
            raise StopIteration
        try:
            with engine_step(self._engine._lock, self._engine.device, self._rng):
                segment = self._advance()
        except Exception as exc:
            self.close()
            if self._engine.device.startswith("cuda"):
                torch.cuda.empty_cache()
            raise client_error(exc, "IndexTTS-2.5", f"segment {self._index + 1}") from exc
        if segment.last:
            self.close()
        return segment

    def _advance(self) -> Segment:
        if self._gen is None:
            self._gen = self._engine._start(self._job, self._lang, self._kwargs)
        gen = self._gen
        item = self._pending if self._pending is not None else next(gen, _END)
        self._pending = None
        while item is not _END and not cast(tuple[torch.Tensor, str], item)[1]:
            item = next(gen, _END)  # a silence whose segment came out empty (the GPT stopped at once)
        if item is _END:
            # Only when the last segments came out empty: the utterance ends here.
            return Segment(np.zeros(0, np.int16), True, "")
        wav, text = cast(tuple[torch.Tensor, str], item)
        self._index += 1
        pcm = _to_int16(wav)
        ahead = next(gen, _END)
        if ahead is _END:
            return Segment(pcm, True, text.strip())
        silence, silence_text = cast(tuple[torch.Tensor, str], ahead)
        if silence_text:  # no interval silence: this is already the next segment
            self._pending = ahead
        else:
            pcm = np.concatenate([pcm, np.zeros(silence.shape[-1], np.int16)])
        return Segment(pcm, False, text.strip())

    # --- batched mode (IndexTTS25Engine.advance; see batching.Row), under the engine's lock ------

    @property
    def batchable(self) -> bool:
        return self._gen is None and self._rng[0] is None  # unseeded, not started alone

    def prepare(self) -> bool:
        if self._prepared is None and not self._done:
            job = self._job
            kwargs = self._engine._with_emotion(job, self._kwargs)
            self._prepared = prepare(self._engine._model, kwargs, job.prompt_audio, job.text, self._lang)
        if self._prepared is None or self._index >= len(self._prepared.segments):
            self._done = True
        return not self._done

    def work(self) -> _Work:
        prepared = cast(Prepared, self._prepared)
        noise = None
        if self._engine.deterministic:  # the same noise alone or in any batch
            noise = torch.Generator().manual_seed(_NOISE_SEED + self._index)
        return _Work(prepared, prepared.segments[self._index], noise)

    def deliver(self, wav: torch.Tensor | None) -> Segment | None:
        """The step's audio for this row, with the interval silence unless it is the last; as
        the library, a segment that came out empty is skipped (``None``: run the next one)."""
        prepared = cast(Prepared, self._prepared)
        text = prepared.texts[self._index].strip()
        self._index += 1
        last = self._index >= len(prepared.segments)
        if last:
            self._done = True
            self._prepared = None
        if wav is None:
            return Segment(np.zeros(0, np.int16), True, "") if last else None
        pcm = _to_int16(wav)
        if not last and self._job.interval_silence > 0:
            pause = np.zeros(int(SAMPLE_RATE * self._job.interval_silence / 1000.0), np.int16)
            pcm = np.concatenate([pcm, pause])
        return Segment(pcm, last, text)

    def fail(self, exc: BaseException) -> SynthesisError:
        """This row's error: the row is closed."""
        where = f"segment {self._index + 1}"
        error = (
            client_error(exc, "IndexTTS-2.5", where)
            if isinstance(exc, Exception)
            else SynthesisError(repr(exc))
        )
        self._done = True
        self._prepared = None
        self._engine._free_device_memory()
        return error

    def close(self) -> None:
        """Stop the model's generator (idempotent)."""
        self._done = True
        self._pending = None
        self._prepared = None
        gen, self._gen = self._gen, None
        if gen is not None:
            with self._engine._lock, torch.inference_mode():
                gen.close()


def _to_int16(wav: torch.Tensor) -> PCM:
    """As the package's own whole-utterance output: already clamped to ±32767, truncated to int16."""
    return cast(PCM, wav.detach().to("cpu").reshape(-1).to(torch.int16).numpy())


# --- the batched stages (IndexTTS25Engine.advance) ------------------------------------------------


class Prepared(NamedTuple):
    """One row's conditioning, computed once when it joins."""

    conds: torch.Tensor  # (1, 3, D): spk_emb_proj(style) + emovec, then two zero rows
    lang: int  # the GPT's language id
    style: torch.Tensor  # (1, 192)
    prompt_condition: torch.Tensor  # (1, P, C)
    ref_mel: torch.Tensor  # (1, 80, R)
    duration_factor: float
    segments: list[list[int]]  # text token ids per segment, language prefix included
    texts: list[str]  # each segment's text as the model reads it


class _Work(NamedTuple):
    """One row's part in a step: its conditioning, the segment to speak and its noise source."""

    prepared: Prepared
    tokens: list[int]
    noise: torch.Generator | None  # deterministic mode: the row's own; else the global RNG


def prepare(model: object, kwargs: dict[str, object], spk_audio: str, text: str, lang: str) -> Prepared:
    """A row's conditioning, computed (and cached) as ``infer_generator`` does before its segment loop."""
    from indextts25.infer_v2_5 import _audio_key, _cache_put, find_most_similar_cosine  # type: ignore[import-untyped]
    from indextts25.utils.tokenizer import lang_to_token  # type: ignore[import-untyped]

    lib: Any = model  # the untyped indextts25 model: typed values leave as casts
    vector = cast("list[float] | None", kwargs.get("emo_vector"))
    emo_audio, emo_alpha, emo_vector = batching.emotion_inputs(kwargs, spk_audio, vector)
    spk_key, emo_key = _audio_key(spk_audio), _audio_key(emo_audio)
    spk_cond, style, prompt_condition, ref_mel = lib._speaker_conditioning(spk_audio, spk_key)
    emo_cond = lib._emotion_conditioning(emo_audio, emo_key)
    device = lib.device
    weight = mixed = None
    if emo_vector is not None:
        weight, mixed = batching.mix_emotions(lib, emo_vector, style, kwargs, find_most_similar_cosine)
    text = lib._prepare_text(text, lang)
    prefix = f"<|{lang.lower()}|> "
    max_tokens = int(cast(int, kwargs.get("max_text_tokens_per_segment", 120)))
    texts = cast(list[str], lib.split_text_by_tokens(text, max_tokens, prefix))
    segments = [
        cast(list[int], lib.tokenizer.encode(prefix + piece, allowed_special="all")) for piece in texts
    ]
    gpt = lib.gpt
    dtype = cast("torch.dtype | None", lib.dtype)
    with torch.autocast(torch.device(device).type, enabled=dtype is not None, dtype=dtype):
        emovec_key = (spk_key, emo_key, emo_alpha)
        emovec = lib._emovec_cache.get(emovec_key)
        if emovec is None:
            spk_len = torch.tensor([spk_cond.shape[-1]], device=device)
            emo_len = torch.tensor([emo_cond.shape[-1]], device=device)
            emovec = gpt.merge_emovec(spk_cond, emo_cond, spk_len, emo_len, alpha=emo_alpha)
            _cache_put(lib._emovec_cache, emovec_key, emovec)
        if mixed is not None and weight is not None:
            emovec = mixed + (1 - torch.sum(weight)) * emovec
        # inference_speech's prefix, per row (its own unsqueeze would cross rows at batch > 1)
        latent = gpt.spk_emb_proj(style).unsqueeze(0) + emovec.unsqueeze(1)
        conds = torch.cat((latent, latent.new_zeros(1, 2, latent.size(2))), 1)
    factor = float(cast(float, kwargs.get("duration_factor", 1.0)))
    return Prepared(
        conds, int(lang_to_token(lang)), style, prompt_condition, ref_mel, factor, segments, texts
    )


def decode(model: object, works: Sequence[_Work], *, max_mel_tokens: int, sample: bool) -> list[torch.Tensor]:
    """The GPT stage for every row at once: each row's codes, cut at its first stop token."""
    device = works[0].prepared.conds.device
    langs = torch.tensor([work.prepared.lang for work in works], dtype=torch.long, device=device)
    conds = [work.prepared.conds for work in works]
    tokens = [work.tokens for work in works]
    return batching.generate(model, conds, tokens, langs, max_mel_tokens=max_mel_tokens, sample=sample)


def _frames(work: _Work, codes: torch.Tensor) -> int:
    """The length regulator's target, as the library computes it (the codec doubles the rate)."""
    return int(2 * len(codes) * 1.72 * work.prepared.duration_factor)


def mel_key(work: _Work, codes: torch.Tensor) -> tuple[int, int, int, int]:
    """Rows that may share the codec, length regulator, CFM and BigVGAN: equal code counts,
    target frames and prompt lengths (all convolve or attend along time with no padding mask)."""
    prepared = work.prepared
    return (len(codes), _frames(work, codes), prepared.ref_mel.shape[-1], prepared.prompt_condition.shape[1])


def speak(
    model: object, works: Sequence[_Work], codes: Sequence[torch.Tensor], steps: int
) -> list[torch.Tensor]:
    """Codec, s2mel and BigVGAN for rows of one `mel_key`: each row's wav, ``(1, samples)``
    scaled to int16 range and clamped, as the library yields it."""
    lib: Any = model
    n = len(works)
    device = works[0].prepared.conds.device
    features = lib.semantic_codec.decode(torch.stack(list(codes), 0))
    target = torch.full((n,), _frames(works[0], codes[0]), dtype=torch.long, device=device)
    models = lib.s2mel.models
    cond = models["length_regulator"](features, ylens=target)
    condition = torch.cat([torch.cat([work.prepared.prompt_condition for work in works], 0), cond], dim=1)
    ref_mel = torch.cat([work.prepared.ref_mel for work in works], 0)
    style = torch.cat([work.prepared.style for work in works], 0)
    cfm = models["cfm"]
    channels, frames = int(cast(int, cfm.in_channels)), condition.size(1)
    noise = torch.cat([batching.draw_noise(work.noise, channels, frames, device) for work in works], 0)
    mel = batching.solve_euler(cfm, noise, ref_mel, condition, style, steps)[:, :, ref_mel.size(-1) :]
    wav = cast(torch.Tensor, lib.bigvgan(mel.float()))
    return [torch.clamp(32767 * wav[row].reshape(1, -1), -32767.0, 32767.0) for row in range(n)]


WINDOW25: Final = chunked.Window(lookahead=18)
"""IndexTTS-2.5's windows: 18 codes of lookahead (0.72 s at 25 Hz), so the codec's 12 ConvNeXt
blocks of kernel 7 (±36 features at 50 Hz, ±18 codes) see every code they would see whole."""


def stages25(
    model: object, prepared: Prepared, tokens: list[int], max_mel_tokens: int, steps: int
) -> chunked.Stages:
    """IndexTTS-2.5's stages for the windowed pipeline: the codec decode of the codes so far
    through the length regulator (each row's own ``duration_factor``)."""
    lib: Any = model
    device = prepared.conds.device
    langs = torch.tensor([prepared.lang], dtype=torch.long, device=device)
    factor = prepared.duration_factor

    def frames(codes: int) -> int:
        return int(2 * codes * 1.72 * factor)

    def condition(codes: list[int]) -> torch.Tensor:
        features = lib.semantic_codec.decode(torch.tensor([codes], dtype=torch.long, device=device))
        target = torch.tensor([frames(len(codes))], dtype=torch.long, device=device)
        return cast(torch.Tensor, lib.s2mel.models["length_regulator"](features, ylens=target))

    return chunked.Stages(
        codes=chunked.decode_codes(model, prepared.conds, tokens, max_mel_tokens=max_mel_tokens, langs=langs),
        frames=frames,
        condition=condition,
        max_codes=max_mel_tokens,
        prompt_condition=prepared.prompt_condition,
        ref_mel=prepared.ref_mel,
        style=prepared.style,
        steps=steps,
    )
