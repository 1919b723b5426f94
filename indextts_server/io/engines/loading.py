"""Start-up of the real engine: optional download, one model per device, warm-up, clear failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from ...core.engine import Engine

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


CPU_HINT: Final = "本机没有可用的 CUDA：可改用 --device cpu"
INSTALL_HINT: Final = 'indextts2 引擎需要安装可选依赖: pip install -e ".[indextts]"'


def warmup_prompt() -> str | None:
    """The bundled speaker clip: from the working directory, else beside the package."""
    for candidate in (Path(PROMPT_NAME), Path(__file__).resolve().parents[2] / PROMPT_NAME):
        if candidate.is_file():
            return str(candidate)
    return None


def download_model(model_dir: str) -> None:
    """Fetch the checkpoint with huggingface_hub (progress bars on stderr) when it is missing."""
    if Path(model_dir, "config.yaml").is_file():
        return
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise LoadFailed(f"--download needs huggingface_hub: {exc}", INSTALL_HINT) from None
    log.info("downloading %s into %s", HUB_REPO, model_dir)
    try:
        snapshot_download(repo_id=HUB_REPO, local_dir=model_dir)
    except Exception as exc:
        raise LoadFailed(
            f"下载 {HUB_REPO} 失败: {type(exc).__name__}: {exc}", download_hint(model_dir)
        ) from None


def load_engines(
    *,
    model_dir: str,
    cfg_path: str,
    devices: Sequence[str],
    download: bool = False,
    max_mel_tokens: int = 1500,
    speaker_cache: int = 8,
    fp16: bool = False,
    cuda_kernel: bool = False,
    deepspeed: bool = False,
    accel: bool = False,
    torch_compile: bool = False,
    progress: Callable[[str], None] = lambda _status: None,
) -> list[Engine]:
    """One IndexTTS2 per device, each loaded and warmed up once; `LoadFailed` on any problem."""
    if download:
        progress(f"downloading {HUB_REPO}")
        download_model(model_dir)
    try:
        from .indextts2 import EngineLoadError, IndexTTS2Engine
    except ImportError as exc:
        raise LoadFailed(f"the indextts package is not installed ({exc})", INSTALL_HINT) from None
    if not Path(model_dir).is_dir():
        raise LoadFailed(f"模型目录不存在: {model_dir}", download_hint(model_dir))
    if not Path(cfg_path).is_file():
        raise LoadFailed(f"配置文件不存在: {cfg_path}", download_hint(model_dir))
    engines: list[Engine] = []
    for device in devices:
        progress(f"loading IndexTTS2 on {device}")
        began = time.monotonic()
        try:
            engine = IndexTTS2Engine(
                model_dir,
                cfg_path,
                device,
                fp16=fp16,
                cuda_kernel=cuda_kernel,
                deepspeed=deepspeed,
                accel=accel,
                torch_compile=torch_compile,
                max_mel_tokens=max_mel_tokens,
                warmup_prompt=warmup_prompt(),
                speaker_cache=speaker_cache,
            )
        except EngineLoadError as exc:
            reason = str(exc)
            hint = CPU_HINT if "cuda" in reason.lower() else download_hint(model_dir)
            raise LoadFailed(reason, hint) from None
        log.info("model loaded on %s in %.1f s", device, time.monotonic() - began)
        progress(f"warming up IndexTTS2 on {device}")
        began = time.monotonic()
        try:
            engine.warm_up()
        except Exception as exc:
            raise LoadFailed(f"warm-up failed on {device}: {type(exc).__name__}: {exc}", CPU_HINT) from None
        log.info("warm-up on %s took %.1f s", device, time.monotonic() - began)
        engines.append(engine)
    return engines
