"""The IndexTTS-2.5 engine: the Engine port on ``indextts25``, with text emotion from ``indextts``."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import threading
import warnings
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Final, Protocol, cast

import numpy as np
import torch

from ...core import texts
from ...core.config import EngineOptions
from ...core.engine import (
    PCM,
    SAMPLE_RATE,
    Lang,
    Segment,
    SynthesisJob,
    detect_lang,
    split_speed,
)
from .indextts2 import (
    EngineLoadError,
    SynthesisError,
    _check_device,
    _make_rng_neutral,
    _require_file,
    _RngState,
    client_error,
    engine_step,
    normalize_emo_vector,
)
from .speed import close_segments, stretched

__all__ = ["LANGS", "NATIVE_SPEEDS", "IndexTTS25Engine"]

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
        else:
            log.warning("no %s/ in %s: emo_mode 'text' will fail", QWEN_DIR, model_path)

    # --- the Engine port ------------------------------------------------------------------------

    def synthesize(self, job: SynthesisJob) -> Iterator[Segment]:
        """Check the job and return a lazy iterator; the model runs only inside ``next()``.

        ``lang`` absent: `detect_lang`. ``speed`` within `NATIVE_SPEEDS` is the model's own
        ``duration_factor``; beyond it the rest is a time-stretch.
        """
        lang = job.lang or detect_lang(job.text)
        if lang not in LANGS:
            raise SynthesisError(texts.lang_unsupported(lang, "IndexTTS-2.5", "/".join(LANGS)))
        if lang == "ja" and not japanese_available():
            raise SynthesisError(
                'lang ja needs the Japanese segmenter: pip install "indextts25-inference[ja]"'
            )
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
        if job.emo_mode == "audio":
            if job.emo_audio is None:
                raise SynthesisError("emo_mode 'audio' needs emo_audio")
            _require_file(job.emo_audio, "emotion prompt")
            kwargs.update(emo_audio_prompt=job.emo_audio, emo_alpha=job.emo_alpha)
        elif job.emo_mode == "vector":
            if job.emo_vector is None:
                raise SynthesisError("emo_mode 'vector' needs emo_vector")
            try:
                vector = normalize_emo_vector(job.emo_vector)
            except ValueError as exc:
                raise SynthesisError(str(exc)) from exc
            kwargs.update(emo_vector=vector, emo_alpha=job.emo_alpha)
        elif job.emo_mode == "text":
            if self._emotion is None:
                raise SynthesisError(f"emo_mode 'text' needs {QWEN_DIR}/ in the model directory")
            kwargs.update(emo_alpha=job.emo_alpha)
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

    # --- helpers used by _Segments ------------------------------------------------------------

    def _start(self, job: SynthesisJob, lang: str, kwargs: dict[str, object]) -> _ModelGen:
        if job.emo_mode == "text":
            assert self._emotion is not None
            weights = self._emotion.inference(job.emo_text or job.text)
            kwargs = {**kwargs, "emo_vector": list(weights.values())}
        return self._model.infer_generator(
            job.prompt_audio, job.text, None, lang, stream_return=True, emit_text=True, **kwargs
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

    def close(self) -> None:
        """Stop the model's generator (idempotent)."""
        self._done = True
        self._pending = None
        gen, self._gen = self._gen, None
        if gen is not None:
            with self._engine._lock, torch.inference_mode():
                gen.close()


def _to_int16(wav: torch.Tensor) -> PCM:
    """As the package's own whole-utterance output: already clamped to ±32767, truncated to int16."""
    return cast(PCM, wav.detach().to("cpu").reshape(-1).to(torch.int16).numpy())
