"""Start-up of the real engine: optional download, one model per device, warm-up, clear failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Final

from ...core.config import EngineOptions
from ...core.engine import Engine
from .thread import home_thread, start_engine

log = logging.getLogger("indextts_server")

HUB_REPO: Final = "IndexTeam/IndexTTS-2"
PROMPT_NAME: Final = "asset/zero_shot_prompt.wav"


class LoadFailed(Exception):
    """The model cannot be served; ``str(error)`` is the reason, ``hint`` what to try."""

    def __init__(self, reason: str, hint: str):
        super().__init__(reason)
        self.hint = hint


def download_hint(model_dir: str) -> str:
    return (
        f"下载模型: hf download {HUB_REPO} --local-dir {model_dir} "
        "（或启动时加 --download）；没有网络时请在别处下载后拷贝过来"
    )


CPU_HINT: Final = "本机没有可用的 CUDA：可改用 --device cpu（或 --device auto）"
CPU_IS_SLOW: Final = (
    "--device auto: no CUDA device here, running IndexTTS2 on the CPU, which is slow "
    "(many seconds per second of speech); use a CUDA GPU to serve in real time"
)
INSTALL_HINT: Final = 'indextts2 引擎需要安装可选依赖: pip install -e ".[indextts]"'


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
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise LoadFailed(f"--download needs huggingface_hub: {exc}", INSTALL_HINT) from None
    log.info("downloading %s into %s (several GB, once)", HUB_REPO, model_dir)
    try:
        snapshot_download(repo_id=HUB_REPO, local_dir=model_dir)
    except Exception as exc:
        raise LoadFailed(
            f"下载 {HUB_REPO} 失败: {type(exc).__name__}: {exc}", download_hint(model_dir)
        ) from None


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
    """One IndexTTS2 per device, each loaded and warmed up once; `LoadFailed` on any problem.

    Each engine is built, warmed up and later run on a thread of its own (`start_engine`).
    """
    if options.download:
        progress(f"downloading {HUB_REPO}")
        download_model(options.model_dir)
    try:
        from .indextts2 import EngineLoadError, IndexTTS2Engine
    except ImportError as exc:
        raise LoadFailed(f"the indextts package is not installed ({exc})", INSTALL_HINT) from None
    model_dir, cfg_path = options.model_dir, options.cfg_path
    if not Path(model_dir).is_dir():
        raise LoadFailed(f"模型目录不存在: {model_dir}", download_hint(model_dir))
    if not Path(cfg_path).is_file():
        raise LoadFailed(f"配置文件不存在: {cfg_path}", download_hint(model_dir))
    devices = options.devices
    if "auto" in devices:
        present = cuda_present()
        devices = tuple(resolve_device(device, present) for device in devices)
        if not present:
            log.warning(CPU_IS_SLOW)
    engines: list[Engine] = []
    for device in devices:
        progress(f"loading IndexTTS2 on {device}")
        began = time.monotonic()
        try:
            model = partial(IndexTTS2Engine, options, device, warmup_prompt=warmup_prompt())
            engine = start_engine(model, f"engine-{device}")
        except EngineLoadError as exc:
            reason = str(exc)
            hint = CPU_HINT if "cuda" in reason.lower() else download_hint(model_dir)
            raise LoadFailed(reason, hint) from None
        log.info("model loaded on %s in %.1f s", device, time.monotonic() - began)
        progress(f"warming up IndexTTS2 on {device}")
        began = time.monotonic()
        try:
            home_thread(engine).call(engine.warm_up)
        except Exception as exc:
            raise LoadFailed(f"warm-up failed on {device}: {type(exc).__name__}: {exc}", CPU_HINT) from None
        log.info("warm-up on %s took %.1f s", device, time.monotonic() - began)
        engines.append(engine)
    return engines
