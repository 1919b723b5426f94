"""Start-up of the real engine: optional download, one model per device, warm-up, clear failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Final, Literal

import msgspec

from ...core.config import EngineOptions
from ...core.engine import Engine
from .thread import home_thread, start_engine

log = logging.getLogger("indextts_server")

Family = Literal["indextts2", "indextts25"]
HUB_REPOS: Final[dict[Family, str]] = {
    "indextts2": "IndexTeam/IndexTTS-2",
    "indextts25": "IndexTeam/IndexTTS-2.5",
}
MODEL_NAMES: Final[dict[Family, str]] = {"indextts2": "IndexTTS2", "indextts25": "IndexTTS2.5"}
PROMPT_NAME: Final = "asset/zero_shot_prompt.wav"
_DEFAULTS: Final = EngineOptions()


class LoadFailed(Exception):
    """The model cannot be served; ``str(error)`` is the reason, ``hint`` what to try."""

    def __init__(self, reason: str, hint: str):
        super().__init__(reason)
        self.hint = hint


def model_family(model_dir: str) -> Family | None:
    """Which model a directory holds, by its files: IndexTTS-2.5 has ``codec.pth`` and a
    ``*.tiktoken`` vocabulary, IndexTTS-2 a ``bpe.model``; None when neither."""
    path = Path(model_dir)
    if (path / "codec.pth").is_file() and any(path.glob("*.tiktoken")):
        return "indextts25"
    if (path / "bpe.model").is_file():
        return "indextts2"
    return None


def requested_family(model_dir: str) -> Family:
    """The model a directory holds or, before it is downloaded, the one its name asks for:
    IndexTTS-2.5 when the name ends in ``2.5`` or ``25`` (``models/IndexTTS-2.5``)."""
    found = model_family(model_dir)
    if found is not None:
        return found
    name = Path(model_dir).resolve().name.lower()
    return "indextts25" if name.endswith(("2.5", "25")) else "indextts2"


def config_path(options: EngineOptions) -> str:
    """``--cfg-path``, or the ``config.yaml`` of a ``--model-dir`` given without one."""
    if options.cfg_path == _DEFAULTS.cfg_path and options.model_dir != _DEFAULTS.model_dir:
        return str(Path(options.model_dir) / "config.yaml")
    return options.cfg_path


def download_hint(model_dir: str) -> str:
    repo = HUB_REPOS[requested_family(model_dir)]
    return (
        f"下载模型: hf download {repo} --local-dir {model_dir} "
        "（或启动时加 --download）；没有网络时请在别处下载后拷贝过来"
    )


CPU_HINT: Final = "本机没有可用的 CUDA：可改用 --device cpu（或 --device auto）"
CPU_IS_SLOW: Final = (
    "--device auto: no CUDA device here, running {model} on the CPU, which is slow "
    "(many seconds per second of speech); use a CUDA GPU to serve in real time"
)


def warm_up_hint(device: str, model_dir: str) -> str:
    """What to try when the first synthesis fails: on a GPU, the CPU; on the CPU, the checkpoint."""
    if device.startswith("cuda"):
        return CPU_HINT
    return f"{model_dir} 中的模型文件可能不完整或与所装的推理包版本不符；" + download_hint(model_dir)


INSTALL_HINT: Final = '模型引擎需要安装可选依赖: pip install -e ".[indextts]"'


def warmup_prompt() -> str | None:
    """The bundled speaker clip: from the working directory, else beside the package."""
    for candidate in (Path(PROMPT_NAME), Path(__file__).resolve().parents[3] / PROMPT_NAME):
        if candidate.is_file():
            return str(candidate)
    return None


def download_model(model_dir: str) -> None:
    """Fetch the checkpoint with huggingface_hub when it is missing.

    Its progress bars go to stderr when that is a terminal (huggingface_hub's own choice; our
    logging leaves them on, see ``tests/test_config.py``).
    """
    if Path(model_dir, "config.yaml").is_file():
        return
    repo = HUB_REPOS[requested_family(model_dir)]
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise LoadFailed(f"--download needs huggingface_hub: {exc}", INSTALL_HINT) from None
    log.info("downloading %s into %s (several GB, once)", repo, model_dir)
    try:
        snapshot_download(repo_id=repo, local_dir=model_dir)
    except Exception as exc:
        raise LoadFailed(f"下载 {repo} 失败: {type(exc).__name__}: {exc}", download_hint(model_dir)) from None


def resolve_device(device: str, cuda_present: bool) -> str:
    """``auto`` is ``cuda`` when a CUDA device is present, else ``cpu``; any other device stays as given.

    ``cuda`` keeps meaning CUDA (the contract's default): without it the start fails clearly rather
    than running many times slower on the CPU unannounced.
    """
    if device != "auto":
        return device
    return "cuda" if cuda_present else "cpu"


def cuda_present() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def load_engines(
    options: EngineOptions, progress: Callable[[str], None] = lambda _status: None
) -> list[Engine]:
    """One model per device (IndexTTS-2 or 2.5, as the directory holds), each loaded and warmed
    up once; `LoadFailed` on any problem.

    Each engine is built, warmed up and later run on a thread of its own (`start_engine`).
    """
    model_dir, cfg_path = options.model_dir, config_path(options)
    if options.download:
        progress(f"downloading {HUB_REPOS[requested_family(model_dir)]}")
        download_model(model_dir)
    if not Path(model_dir).is_dir():
        raise LoadFailed(f"模型目录不存在: {model_dir}", download_hint(model_dir))
    if not Path(cfg_path).is_file():
        raise LoadFailed(f"配置文件不存在: {cfg_path}", download_hint(model_dir))
    family = model_family(model_dir)
    if family is None:
        raise LoadFailed(
            f"{model_dir} 既不是 IndexTTS-2 也不是 IndexTTS-2.5 的模型目录"
            "（IndexTTS-2 有 bpe.model；IndexTTS-2.5 有 codec.pth 和 *.tiktoken）",
            download_hint(model_dir),
        )
    make = _engine_factory(family, options, cfg_path)
    from .indextts2 import EngineLoadError  # importable now: both families need torch

    name = MODEL_NAMES[family]
    devices = options.devices
    if "auto" in devices:
        present = cuda_present()
        devices = tuple(resolve_device(device, present) for device in devices)
        if not present:
            log.warning(CPU_IS_SLOW.format(model=name))
    engines: list[Engine] = []
    for device in devices:
        progress(f"loading {name} on {device}")
        began = time.monotonic()
        try:
            engine = start_engine(partial(make, device), f"engine-{device}")
        except EngineLoadError as exc:
            reason = str(exc)
            hint = CPU_HINT if "cuda" in reason.lower() else download_hint(model_dir)
            raise LoadFailed(reason, hint) from None
        log.info("%s model loaded on %s in %.1f s", name, device, time.monotonic() - began)
        progress(f"warming up {name} on {device}")
        began = time.monotonic()
        try:
            home_thread(engine).call(engine.warm_up)
        except Exception as exc:
            reason = f"warm-up failed on {device}: {type(exc).__name__}: {exc}"
            raise LoadFailed(reason, warm_up_hint(device, model_dir)) from None
        log.info("warm-up on %s took %.1f s", device, time.monotonic() - began)
        engines.append(engine)
    return engines


def _engine_factory(family: Family, options: EngineOptions, cfg_path: str) -> Callable[[str], Engine]:
    """How to load ``family`` on one device (its package imported now: `LoadFailed` if missing)."""
    prompt = warmup_prompt()
    try:
        if family == "indextts25":
            from .indextts25 import IndexTTS25Engine

            return lambda device: IndexTTS25Engine(options, device, cfg_path=cfg_path, warmup_prompt=prompt)
        from .indextts2 import IndexTTS2Engine
    except ImportError as exc:
        package = "indextts25" if family == "indextts25" else "indextts"
        raise LoadFailed(f"the {package} package is not installed ({exc})", INSTALL_HINT) from None
    adjusted = msgspec.structs.replace(options, cfg_path=cfg_path)
    return lambda device: IndexTTS2Engine(adjusted, device, warmup_prompt=prompt)
