"""The IndexTTS2 engine: the Engine port implemented on the ``indextts`` package's IndexTTS2 model."""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
import random
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Final, NamedTuple, Protocol, TypeVar, cast

import numpy as np
import torch

from ...core.config import EngineOptions
from ...core.contract.jobs import unfit
from ...core.engine import (
    DEFAULT_SCHEDULE,
    EMO_MODES,
    PCM,
    SAMPLE_RATE,
    Capabilities,
    ChunkSchedule,
    Lang,
    Segment,
    SynthesisJob,
)
from . import batching, chunked
from .speed import close_segments, stretched

__all__ = ["EMO_BIAS", "EngineLoadError", "IndexTTS2Engine", "SynthesisError", "normalize_emo_vector"]

log = logging.getLogger(__name__)

EMO_BIAS = (0.9375, 0.875, 1.0, 1.0, 0.9375, 0.9375, 0.6875, 0.5625)
"""Per-emotion damping that upstream's web UI applies to slider vectors, in the model's order:
happy, angry, sad, afraid, disgusted, melancholic, surprised, calm."""

_EMO_SUM_CAP = 0.8
_AUDIO_READERS = frozenset({"audioread", "librosa", "soundfile", "torchaudio", "torchcodec"})
_WARMUP_TEXT = "你好，今天天气很好。"
LANGS: Final[tuple[Lang, ...]] = ("zh", "en")


class EngineLoadError(RuntimeError):
    """The model could not be loaded; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SynthesisError(RuntimeError):
    """A synthesis failed; the message is fit for a client, the cause is chained."""


def normalize_emo_vector(vector: Sequence[float], *, apply_bias: bool = True) -> list[float]:
    """Upstream web UI's ``normalize_emo_vec``: damp each weight by ``EMO_BIAS`` (when
    ``apply_bias``), then, if the weights sum to more than 0.8, scale them all so they sum to 0.8.
    The model mixes ``1 - sum`` of the prompt's own emotion back in, so the cap keeps some of it."""
    if len(vector) != len(EMO_BIAS):
        raise ValueError(f"emo_vector needs {len(EMO_BIAS)} weights, got {len(vector)}")
    values = [float(v) for v in vector]
    if not all(math.isfinite(v) and v >= 0.0 for v in values):
        raise ValueError("emo_vector weights must be finite and >= 0")
    if apply_bias:
        values = [v * b for v, b in zip(values, EMO_BIAS, strict=True)]
    total = sum(values)
    if total > _EMO_SUM_CAP:
        values = [v * (_EMO_SUM_CAP / total) for v in values]
    return values


# --- the slice of the untyped ``indextts`` package that this adapter touches -----------------


class _Tokenizer(Protocol):
    def tokenize(self, text: str) -> list[str]: ...

    def split_segments(self, tokenized: list[str], *args: int, **kwargs: int) -> list[list[str]]: ...


class _Model(Protocol):
    tokenizer: _Tokenizer

    def infer(self, spk_audio_prompt: str, text: str, output_path: None, **kwargs: object) -> object: ...


_ModelGen = Generator[object, None, object]
_END = object()
_T = TypeVar("_T")


class _RngState(NamedTuple):
    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor] | None
    numpy: object
    python: object

    @classmethod
    def capture(cls, cuda_too: bool) -> _RngState:
        cuda = torch.cuda.get_rng_state_all() if cuda_too else None
        return cls(torch.get_rng_state(), cuda, np.random.get_state(), random.getstate())

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)
        np.random.set_state(cast(tuple[str, np.ndarray, int, int, float], self.numpy))
        random.setstate(cast(tuple[object, ...], self.python))


class _RngGate:
    """Who may use the process-wide RNGs: seeded steps one at a time, alone; others together.

    torch's CPU generator, numpy's and Python's ``random`` are process-wide, and a seeded step
    swaps its own state into them (and every CUDA device's). With several engines (one per
    device, each stepping in its own thread), a seeded step therefore runs with no other
    engine's step beside it, and unseeded steps share. Waiting seeded steps go first, so a
    stream of unseeded work cannot starve them.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sharing = 0
        self._alone = False
        self._waiting_alone = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._alone and not self._waiting_alone)
            self._sharing += 1
        try:
            yield
        finally:
            with self._cond:
                self._sharing -= 1
                self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._waiting_alone += 1
            self._cond.wait_for(lambda: not self._alone and not self._sharing)
            self._waiting_alone -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()


_RNG_GATE: Final = _RngGate()
"""One for the process: every IndexTTS2Engine's steps pass it."""


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # CPU and every CUDA device
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _unit_scale(model_cls: type) -> bool | None:
    """Whether the installed ``infer_generator`` yields speech in [-1, 1] (indextts2-inference)
    rather than int16-scale floats (upstream); None when its source says neither."""
    try:
        source = inspect.getsource(getattr(model_cls, "infer_generator"))  # noqa: B009 - untyped class
    except (AttributeError, OSError, TypeError):
        return None
    if re.search(r"clamp\(\s*32767\s*\*", source):
        return False
    if re.search(r"clamp\(\s*wav\s*,\s*-1(\.0)?\s*,\s*1(\.0)?\s*\)", source):
        return True
    return None


def _to_int16(speech: torch.Tensor, unit_scale: bool | None) -> PCM:
    """Quantise exactly as the model's own non-streaming path does (scale, clamp, truncate)."""
    wav = speech.detach().to("cpu", torch.float32).reshape(-1)
    if unit_scale is None:  # unknown build: int16-scale values exceed 1 wherever speech is audible
        unit_scale = bool(wav.numel() == 0 or wav.abs().max() <= 1.0)
    if unit_scale:
        wav = wav * 32767
    return cast(PCM, wav.clamp(-32767, 32767).to(torch.int16).numpy())


def _no_progress(iterable: _T, *args: object, **kwargs: object) -> _T:
    """Stands in for ``tqdm`` in the diffusion loop: iterates, draws nothing."""
    return iterable


_tamed = False


def _tame_library_output() -> None:
    """Route the package's logs through the app's logging, drop its progress bars and warnings."""
    global _tamed
    try:  # creates the text normaliser's logger (with its own stderr handler) now, not mid-load
        importlib.import_module("nemo_text_processing.utils.logging")
    except ImportError:
        pass
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger):
            continue
        if name == "indextts" or name.startswith("indextts.") or name == "NeMo-text-processing":
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:  # the handlers those packages add themselves
                    logger.removeHandler(handler)
            if name == "NeMo-text-processing":
                logger.setLevel(logging.WARNING)
    if _tamed:
        return
    _tamed = True
    flow_matching = importlib.import_module("indextts.s2mel.modules.flow_matching")
    if hasattr(flow_matching, "tqdm"):
        setattr(flow_matching, "tqdm", _no_progress)  # noqa: B010 - untyped module
    # "generation stopped due to exceeding max_mel_tokens" and segment-length notices.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"indextts(\.|$)")


class IndexTTS2Engine:
    """One IndexTTS2 model behind the Engine port. Calls are serialised by an internal lock."""

    name = "indextts2"

    def __init__(
        self,
        options: EngineOptions,
        device: str = "cpu",
        *,
        warmup_prompt: str | os.PathLike[str] | None = None,
        deterministic: bool = False,
        schedule: ChunkSchedule = DEFAULT_SCHEDULE,
    ) -> None:
        model_path = Path(options.model_dir)
        config_path = Path(options.cfg_path)
        max_mel_tokens, speaker_cache = options.max_mel_tokens, options.speaker_cache
        if not model_path.is_dir():
            raise EngineLoadError(f"model directory not found: {model_path}")
        if not config_path.is_file():
            raise EngineLoadError(f"model config not found: {config_path}")
        if max_mel_tokens < 1:
            raise EngineLoadError("max_mel_tokens must be >= 1")
        self.device = _check_device(device)
        # Test-only: batched rows decode greedily (beam search without sampling) and draw their
        # s2mel noise from a generator of their own, so a row's output is independent of its batch.
        self.deterministic = deterministic
        self.max_mel_tokens = max_mel_tokens
        self.chunked = options.chunked_streaming  # the default for jobs that do not say
        self.schedule = schedule
        self.window = chunked.Window()
        self.warmup_prompt = None if warmup_prompt is None else str(warmup_prompt)
        self._lock = threading.Lock()
        if speaker_cache < 1:
            raise EngineLoadError("speaker_cache must be >= 1")
        self.speaker_cache = speaker_cache
        self._conditioning: OrderedDict[tuple[object, ...], tuple[object, ...]] = OrderedDict()
        self._memo = batching.Memo(2 * speaker_cache, _file_key)  # batched rows' GPT conditioning
        self.cache_hits = 0
        self.cache_misses = 0

        try:
            model_cls = cast(type, importlib.import_module("indextts.infer_v2").IndexTTS2)
        except Exception as exc:
            raise EngineLoadError(f"the indextts package could not be imported: {exc!r}") from exc
        _tame_library_output()
        params = inspect.signature(model_cls).parameters
        kwargs: dict[str, object] = {
            "model_dir": str(model_path),
            "cfg_path": str(config_path),
            "device": self.device,
        }
        for option, value in (
            ("use_fp16", options.fp16),
            ("use_cuda_kernel", options.cuda_kernel),
            ("use_deepspeed", options.deepspeed),
            ("use_accel", options.accel),
            ("use_torch_compile", options.torch_compile),
        ):
            if option in params:
                kwargs[option] = value
            elif value:
                log.warning("this IndexTTS2 build has no %s option; ignoring it", option)
        log.info("loading IndexTTS2 from %s on %s", model_path, self.device)
        try:
            self._model = cast(_Model, model_cls(**kwargs))
        except Exception as exc:
            self._free_device_memory()
            reason = f"IndexTTS2 failed to load from {model_path}: {type(exc).__name__}: {exc}"
            raise EngineLoadError(reason) from exc
        _tame_library_output()  # loggers created while loading
        _make_rng_neutral(getattr(self._model, "semantic_model", None))

        infer_params = inspect.signature(self._model.infer).parameters
        self._has_quick_streaming = "quick_streaming_tokens" in infer_params
        self._split_takes_quick = (
            "quick_streaming_tokens" in inspect.signature(self._model.tokenizer.split_segments).parameters
        )
        self._unit_scale = _unit_scale(model_cls)
        self.capabilities = declared_capabilities(
            "IndexTTS-2", LANGS, emotion_model=getattr(self._model, "qwen_emo", None) is not None
        )

    # --- the Engine port ------------------------------------------------------------------------

    def synthesize(self, job: SynthesisJob) -> Iterator[Segment]:
        """Check the job and return a lazy iterator; the model runs only inside ``next()``.

        ``lang``: this model reads Chinese and English (and needs no hint); ``speed`` is a
        time-stretch, as the model has no duration control.
        """
        if (problem := unfit(job, self.capabilities)) is not None:  # refused before the queue
            raise SynthesisError(problem.message)
        _require_file(job.prompt_audio, "speaker prompt")
        kwargs: dict[str, object] = {
            "interval_silence": job.interval_silence,
            "max_text_tokens_per_segment": job.max_tokens,
            "use_random": job.use_random,
            "verbose": False,
            "stream_return": True,
            "max_mel_tokens": self.max_mel_tokens,
        }
        if job.quick_first and self._has_quick_streaming:
            kwargs["quick_streaming_tokens"] = job.quick_first
        kwargs.update(emotion_kwargs(job))
        if job.emo_mode == "text":
            kwargs.update(use_emo_text=True, emo_text=job.emo_text, emo_alpha=job.emo_alpha)
        if self.chunked if job.chunked is None else job.chunked:
            pieces = partial(self._pieces, job, kwargs)
            chunks = ChunkedPieces(
                self._lock, self.device, self._free_device_memory, job.seed, pieces, model="IndexTTS2"
            )
            return stretched(chunks, job.speed)
        return stretched(_Segments(self, job, kwargs), job.speed)

    def advance(self, rows: Sequence[Iterator[Segment]]) -> list[Segment | BaseException | None]:
        """Advance every row by one segment, together (see `batching`); ``None`` for a finished row.

        Rows from ``synthesize`` that have not started alone and carry no seed share one batched
        step; a seeded row, a row already advanced with ``next()`` and any other iterator are
        advanced alone, in order. An exception belongs to its row: the row is closed and its
        error returned in its place.
        """
        return batching.advance(rows, self._claim, self._advance_together)

    def _claim(self, row: Iterator[Segment]) -> _Segments | None:
        return row if isinstance(row, _Segments) and row._engine is self and row.batchable else None

    def _advance_together(self, rows: list[_Segments]) -> list[Segment | BaseException | None]:
        with self._lock, torch.inference_mode(), _RNG_GATE.shared():
            return batching.step(rows, self._run_works, self._free_device_memory)

    def _run_works(self, works: Sequence[batching.Work]) -> list[torch.Tensor]:
        """Decode and run the latent pass for all rows together, then s2mel and BigVGAN on the rows
        whose shapes agree."""
        model = self._model
        codes = batching.decode(
            model, works, max_mel_tokens=self.max_mel_tokens, sample=not self.deterministic
        )
        latent = batching.latents(model, works, codes)
        wavs: list[torch.Tensor | None] = [None] * len(works)
        for rows in batching.groups(works, codes, batching.mel_key):
            spoken = batching.speak(
                model,
                [works[i] for i in rows],
                [codes[i] for i in rows],
                [latent[i] for i in rows],
            )
            for index, wav in zip(rows, spoken, strict=True):
                wavs[index] = wav
        return [cast(torch.Tensor, wav) for wav in wavs]

    def warm_up(self) -> None:
        """One short synthesis with the bundled prompt, so the first request pays no start-up cost."""
        if self.warmup_prompt is None:
            log.info("no warm-up prompt configured; skipping warm-up")
            return
        job = SynthesisJob(text=_WARMUP_TEXT, prompt_audio=self.warmup_prompt, seed=0)
        segments = self.synthesize(job)
        try:
            samples = sum(len(segment.pcm) for segment in segments)
        finally:
            close_segments(segments)
        log.info("warm-up rendered %.2f s of audio", samples / SAMPLE_RATE)

    def close(self) -> None:
        """At shutdown, on the engine's thread: forget the remembered conditionings, free device memory."""
        with self._lock:
            self._conditioning.clear()
            self._memo.clear()
            self._free_device_memory()

    # --- helpers used by _Segments ------------------------------------------------------------

    def _start(self, job: SynthesisJob, kwargs: dict[str, object]) -> tuple[_ModelGen, list[str]]:
        """The model's generator and the text of each segment it will yield (split as infer does)."""
        self._restore_conditioning(job)
        segments = self._split(self._model.tokenizer.tokenize(job.text), job, kwargs)
        gen = self._model.infer(job.prompt_audio, job.text, None, **kwargs)
        if not isinstance(gen, Generator):
            raise TypeError(
                f"IndexTTS2.infer(stream_return=True) returned {type(gen).__name__}, not a generator"
            )
        return cast(_ModelGen, gen), [_segment_text(piece) for piece in segments]

    def _split(self, tokens: list[str], job: SynthesisJob, kwargs: dict[str, object]) -> list[list[str]]:
        """The text's segments, as ``infer`` splits them."""
        tokenizer = self._model.tokenizer
        if self._split_takes_quick:
            quick = int(cast(int, kwargs.get("quick_streaming_tokens", 0)))
            return tokenizer.split_segments(tokens, job.max_tokens, quick_streaming_tokens=quick)
        return tokenizer.split_segments(tokens, job.max_tokens)

    def _prepare(self, job: SynthesisJob, kwargs: dict[str, object]) -> tuple[batching.Prepared, list[str]]:
        """A batched row's conditioning (through the speaker cache, as ``_start``), and each
        segment's text."""
        self._restore_conditioning(job)
        pieces: list[list[str]] = []

        def split(tokens: list[str]) -> list[list[str]]:
            pieces[:] = self._split(tokens, job, kwargs)
            return pieces

        prepared = batching.prepare(self._model, kwargs, job.prompt_audio, job.text, split, self._memo)
        self._remember_conditioning(job)
        return prepared, [_segment_text(piece) for piece in pieces]

    def _pieces(self, job: SynthesisJob, kwargs: dict[str, object]) -> Iterator[Segment]:
        """A chunked job's pieces (`chunked`), each segment's last one with its pause."""
        prepared, texts = self._prepare(job, kwargs)
        seed = job.seed if job.seed is not None else int(torch.randint(0, 2**31 - 1, ()))
        noise = torch.Generator().manual_seed(seed)
        count = len(prepared.segments)
        pause = np.zeros(int(SAMPLE_RATE * job.interval_silence / 1000.0), dtype=np.int16)
        for index, tokens in enumerate(prepared.segments):
            text = texts[index] if index < len(texts) else ""
            last = index == count - 1
            stages = chunked.stages2(self._model, prepared, tokens, self.max_mel_tokens)
            pieces = chunked.segment_pieces(
                self._model, stages, schedule=self.schedule, noise=noise, window=self.window
            )
            for wav, final in pieces:
                pcm = _to_int16(wav, True)
                if not final:
                    yield Segment(pcm, False, text, partial=True)
                elif last:
                    yield Segment(pcm, True, text)
                else:
                    yield Segment(np.concatenate([pcm, pause]), False, text)

    def _restore_conditioning(self, job: SynthesisJob) -> None:
        """Put the job's prompt conditionings back into the model if they are remembered.

        The model keeps only the last speaker's and the last emotion reference's conditioning,
        keyed by path alone. We keep ``speaker_cache`` of each, keyed by path, size, mtime and
        inode, so an alternating set of voices is computed once and an edited file never stale.
        A miss clears the model's own entry, so it recomputes from the file as it is now.
        """
        model = self._model
        for kind, path in (("spk", job.prompt_audio), ("emo", _emotion_reference(job))):
            attrs, prompt_attr = _CONDITIONING[kind]
            key = _file_key(path)
            entry = None if key is None else (kind, *key)
            cached = None if entry is None else self._conditioning.get(entry)
            if entry is None or cached is None:
                setattr(model, prompt_attr, None)
                self.cache_misses += 1
                continue
            self._conditioning.move_to_end(entry)
            for attr, value in zip(attrs, cached, strict=True):
                setattr(model, attr, value)
            setattr(model, prompt_attr, path)
            self.cache_hits += 1

    def _remember_conditioning(self, job: SynthesisJob) -> None:
        """After the model has conditioned on the job's prompts, keep what it computed."""
        model = self._model
        for kind, path in (("spk", job.prompt_audio), ("emo", _emotion_reference(job))):
            attrs, prompt_attr = _CONDITIONING[kind]
            key = _file_key(path)
            if key is None or getattr(model, prompt_attr, None) != path:
                continue
            values = tuple(getattr(model, attr, None) for attr in attrs)
            if any(value is None for value in values):
                continue
            self._conditioning[(kind, *key)] = values
            self._conditioning.move_to_end((kind, *key))
        while len(self._conditioning) > 2 * self.speaker_cache:
            self._conditioning.popitem(last=False)

    def _free_device_memory(self) -> None:
        if self.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()

    @contextmanager
    def _step(self, rng: list[_RngState | int | None]) -> Iterator[None]:
        with engine_step(self._lock, self.device, rng):
            yield


@contextmanager
def engine_step(lock: threading.Lock, device: str, rng: list[_RngState | int | None]) -> Iterator[None]:
    """Serialise on ``lock``, run under inference_mode, and swap in the job's private RNG state.

    ``rng[0]`` is the job's seed before its first step, then the state its last step left. The
    swap happens with no other engine stepping (``_RNG_GATE``), so a seeded request's sampling
    is its own on any number of engines, of either family.
    """
    with lock, torch.inference_mode():
        state = rng[0]
        if state is None:
            with _RNG_GATE.shared():
                yield
            return
        with _RNG_GATE.alone():
            cuda_too = device.startswith("cuda")
            outer = _RngState.capture(cuda_too)
            if isinstance(state, int):
                _seed_everything(state)
            else:
                state.restore()
            try:
                yield
            finally:
                rng[0] = _RngState.capture(cuda_too)
                outer.restore()


_NOISE_SEED: Final = 20260
"""Deterministic mode: segment i of every row draws its s2mel noise from a generator seeded
``_NOISE_SEED + i``."""


def _make_rng_neutral(module: object) -> None:
    """Make a module's forward leave the CPU RNG as it found it.

    transformers' Wav2Vec2-BERT encoder draws ``torch.rand`` per layer for layerdrop even in eval
    mode. IndexTTS2 runs it only for prompt conditioning, which it caches by path, so without this a
    seeded request would sound different depending on whether its prompt was already cached.
    """
    if not isinstance(module, torch.nn.Module):
        log.debug("no semantic_model to make RNG-neutral")
        return
    inner = module.forward

    def forward(*args: object, **kwargs: object) -> object:
        with torch.random.fork_rng(devices=[]):
            return inner(*args, **kwargs)

    module.forward = forward  # instance-level wrap; nn.Module.__call__ looks it up per call


def _check_device(device: str) -> str:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise EngineLoadError(f"invalid device {device!r}: {exc}") from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineLoadError(f"device {device!r} requested but CUDA is not available")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise EngineLoadError(f"device {device!r} requested but only {count} CUDA device(s) exist")
        return f"cuda:{parsed.index or 0}"
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise EngineLoadError(f"device {device!r} requested but MPS is not available")
    return device


# The model's one-entry caches: the attributes holding a conditioning, and the one naming its file.
_CONDITIONING: Final[dict[str, tuple[tuple[str, ...], str]]] = {
    "spk": (
        ("cache_spk_cond", "cache_s2mel_style", "cache_s2mel_prompt", "cache_mel"),
        "cache_spk_audio_prompt",
    ),
    "emo": (("cache_emo_cond",), "cache_emo_audio_prompt"),
}


def _emotion_reference(job: SynthesisJob) -> str:
    """The file the model conditions emotion on: the emotion prompt, else the speaker's own."""
    if job.emo_mode == "audio" and job.emo_audio is not None:
        return job.emo_audio
    return job.prompt_audio


def _file_key(path: str) -> tuple[str, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)


def declared_capabilities(
    model: str,
    langs: tuple[Lang, ...],
    *,
    emotion_model: bool,
    missing_tokenizers: tuple[Lang, ...] = (),
    detects_lang: bool = False,
) -> Capabilities:
    """What a loaded model of either family can do: every emotion mode (``text`` only with its
    emotion model) and every speed (what the model cannot render is time-stretched)."""
    if not emotion_model:
        log.warning("%s has no emotion model (qwen0.6bemo4-merge/): emo_mode text is refused", model)
    return Capabilities(
        model=model,
        langs=langs,
        missing_tokenizers=missing_tokenizers,
        detects_lang=detects_lang,
        emo_modes=tuple(mode for mode in EMO_MODES if emotion_model or mode != "text"),
        emotion_model=emotion_model,
    )


def emotion_kwargs(job: SynthesisJob) -> dict[str, object]:
    """The model's keyword arguments for an emotion given by reference audio or by vector (both
    model families take them alike); nothing for the other modes."""
    if job.emo_mode == "audio":
        if job.emo_audio is None:
            raise SynthesisError("emo_mode 'audio' needs emo_audio")
        _require_file(job.emo_audio, "emotion prompt")
        return {"emo_audio_prompt": job.emo_audio, "emo_alpha": job.emo_alpha}
    if job.emo_mode == "vector":
        if job.emo_vector is None:
            raise SynthesisError("emo_mode 'vector' needs emo_vector")
        try:
            vector = normalize_emo_vector(job.emo_vector)
        except ValueError as exc:
            raise SynthesisError(str(exc)) from exc
        return {"emo_vector": vector, "emo_alpha": job.emo_alpha}
    return {}


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise SynthesisError(f"{what} not found: {os.path.basename(path) or path}")


def client_error(exc: Exception, model: str, where: str) -> SynthesisError:
    """What a client is told of an exception inside the model (the cause stays chained)."""
    if isinstance(exc, SynthesisError):
        return exc
    if isinstance(exc, torch.OutOfMemoryError):
        return SynthesisError(f"out of GPU memory during {where}; try shorter segments (max_tokens)")
    kind = type(exc).__name__
    text = str(exc).strip()
    detail = f"{kind}: {text.splitlines()[0]}" if text else kind
    if type(exc).__module__.split(".")[0] in _AUDIO_READERS:
        return SynthesisError(f"could not decode the prompt audio ({detail})")
    return SynthesisError(f"{model} failed at {where}: {detail}")


def _segment_text(tokens: Sequence[str]) -> str:
    """A tokenizer segment's text as it reads (SentencePiece marks a word's start with ▁)."""
    return "".join(tokens).replace("▁", " ").strip()


class _Segments(Iterator[Segment]):
    """Yields one int16 segment per ``next()``; each call advances the model just one segment."""

    def __init__(self, engine: IndexTTS2Engine, job: SynthesisJob, kwargs: dict[str, object]) -> None:
        self._engine = engine
        self._job = job
        self._kwargs = kwargs
        self._gen: _ModelGen | None = None
        self._count = 0
        self._texts: list[str] = []
        self._index = 0
        self._pending: object = None  # a speech item read ahead (only if the segment count was off)
        self._done = False
        self._rng: list[_RngState | int | None] = [job.seed]
        self._prepared: batching.Prepared | None = None

    def __next__(self) -> Segment:
        if self._done:
            raise StopIteration
        try:
            with self._engine._step(self._rng):
                pcm = self._advance()
        except Exception as exc:
            self.close()
            self._engine._free_device_memory()
            raise self._error(exc) from exc
        if pcm is None:
            self.close()
            raise StopIteration
        text = self._texts[self._index - 1] if self._index <= len(self._texts) else ""
        return Segment(pcm, self._done, text)

    def _advance(self) -> PCM | None:
        """The next segment, or None when the model has no more."""
        first = self._gen is None
        if self._gen is None:
            self._gen, self._texts = self._engine._start(self._job, self._kwargs)
            self._count = len(self._texts)
        gen = self._gen
        speech = self._pending if self._pending is not None else next(gen, _END)
        self._pending = None
        if first:
            self._engine._remember_conditioning(self._job)
        if speech is _END:
            return None
        silence = next(gen, None)  # infer yields the interval silence after every segment
        pcm = _to_int16(cast(torch.Tensor, speech), self._engine._unit_scale)
        self._index += 1
        if self._index >= self._count:  # believed last: confirm the model is done before dropping the pause
            ahead = next(gen, _END)
            if ahead is _END:
                self._done = True
                return pcm
            self._pending = ahead
            log.warning("segment count mismatch: the model produced more than %d segments", self._count)
        if isinstance(silence, torch.Tensor) and silence.numel():
            pcm = np.concatenate([pcm, np.zeros(silence.shape[-1], dtype=np.int16)])
        return pcm

    # --- batched mode (IndexTTS2Engine.advance), under the engine's lock -------------------

    @property
    def batchable(self) -> bool:
        """Unseeded and not started alone: may share a batched step."""
        return self._rng[0] is None and self._gen is None

    def prepare(self) -> bool:
        """Compute the conditioning on the first step; False when there is nothing (more) to say."""
        if self._done:
            return False
        if self._prepared is None:
            self._prepared, self._texts = self._engine._prepare(self._job, self._kwargs)
            self._count = len(self._prepared.segments)
        if self._index >= self._count:
            self._done = True
            return False
        return True

    def work(self) -> batching.Work:
        prepared = cast(batching.Prepared, self._prepared)
        noise = None
        if self._engine.deterministic:  # the same noise alone or in any batch
            noise = torch.Generator().manual_seed(_NOISE_SEED + self._index)
        return batching.Work(prepared, prepared.segments[self._index], noise)

    def deliver(self, wav: torch.Tensor) -> Segment:
        """The step's audio for this row, with the interval silence unless it is the last."""
        pcm = _to_int16(wav, True)
        text = self._texts[self._index] if self._index < len(self._texts) else ""
        self._index += 1
        if self._index >= self._count:
            self._done = True
            self._prepared = None
        elif self._job.interval_silence > 0:
            pause = np.zeros(int(SAMPLE_RATE * self._job.interval_silence / 1000.0), dtype=np.int16)
            pcm = np.concatenate([pcm, pause])
        return Segment(pcm, self._done, text)

    def fail(self, exc: BaseException) -> SynthesisError:
        """This row's error: the row is closed."""
        error = self._error(exc) if isinstance(exc, Exception) else SynthesisError(repr(exc))
        self._done = True
        self._prepared = None
        self._engine._free_device_memory()
        return error

    def _error(self, exc: Exception) -> SynthesisError:
        where = f"segment {self._index + 1}" + (f" of {self._count}" if self._count else "")
        return client_error(exc, "IndexTTS2", where)

    def close(self) -> None:
        """Stop the model's generator (idempotent)."""
        self._done = True
        self._pending = None
        self._prepared = None
        gen, self._gen = self._gen, None
        if gen is not None:
            with self._engine._lock, torch.inference_mode():
                gen.close()


class ChunkedPieces(Iterator[Segment]):
    """A chunked job (experimental), of either family: one piece of a segment per ``next()``
    (`chunked`), run alone (never batched), under the engine's lock with the job's own RNG state,
    as `_Segments` does.

    ``pieces`` makes the job's generator of pieces, inside its first step. A job whose every
    segment stops at once ends with an empty last segment when ``empty_last`` (as IndexTTS-2.5's
    `_Segments` ends), else with no more segments.
    """

    def __init__(
        self,
        lock: threading.Lock,
        device: str,
        free_memory: Callable[[], None],
        seed: int | None,
        pieces: Callable[[], Iterator[Segment]],
        *,
        model: str,
        empty_last: bool = False,
    ) -> None:
        self._lock = lock
        self._device = device
        self._free_memory = free_memory
        self._make = pieces
        self._model = model
        self._empty_last = empty_last
        self._pieces: Iterator[Segment] | None = None
        self._done = False
        self._rng: list[_RngState | int | None] = [seed]

    def __next__(self) -> Segment:
        if self._done:
            raise StopIteration
        try:
            with engine_step(self._lock, self._device, self._rng):
                if self._pieces is None:
                    self._pieces = self._make()
                piece = next(self._pieces, None)
        except Exception as exc:
            self.close()
            self._free_memory()
            raise client_error(exc, self._model, "chunked synthesis") from exc
        if piece is None:
            self.close()
            if self._empty_last:
                return Segment(np.zeros(0, np.int16), True, "")
            raise StopIteration
        self._done = piece.last
        return piece

    def close(self) -> None:
        """Stop the pieces' generator (idempotent)."""
        self._done = True
        pieces, self._pieces = self._pieces, None
        close = getattr(pieces, "close", None)
        if close is not None:
            with self._lock, torch.inference_mode():
                close()
