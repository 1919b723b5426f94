"""Build a complete tiny random-weight IndexTTS-2.5 model directory for offline tests.

With ``--full-size`` the same builder gives IndexTeam/IndexTTS-2.5's widths and depths (random
values), for timings: speed depends on shapes, not values.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import torch
from torch import nn

from .tiny_checkpoint import (
    _EMO_NUM,
    _attr,
    _bigvgan_hparams,
    _config,
    _full_config,
    _half,
    _never_sample_start_or_stop,
    _seed,
    _stamp,
    _tree_size,
    _w2v_bert_config,
    _write_qwen,
    _write_w2v_bert,
    count_on_meta,
    generator_args,
)
from .tiny_checkpoint import (
    _is_complete as _is_built,
)

# transformers is imported only inside the builders (see tiny_checkpoint): importing this module
# must not pull in huggingface_hub.

__all__ = ["build_tiny_checkpoint25", "parameter_counts25"]

_FORMAT_VERSION = 3
_MARKER = ".tiny-checkpoint25-complete"
_TIKTOKEN = "multilingual_zh_ja_yue_char_del.tiktoken"
_QWEN_DIR = "qwen0.6bemo4-merge"
_GPT_DIM = 64  # free in 2.5 (2.0 hard-codes 1280)
_MEL_CODES = 130  # the GPT emits ids below this; the codec's codebook covers them all
_CODEBOOK_SIZE = 256
_SPECIAL_TOKENS = 1673  # indextts25.utils.tokenizer.get_encoding appends these to the ranks


def build_tiny_checkpoint25(
    root: Path, *, seed: int = 0, isolated: bool = True, full_size: bool = False
) -> Path:
    """Build the model directory ``root/model`` (everything offline, ``hf_cache/`` included) and
    return it; reuse it when already complete. ``isolated`` builds in a child process, so this one
    never imports transformers."""
    root = Path(root).resolve()
    model_dir = root / "model"
    if _is_complete(root, seed, full_size):
        return model_dir
    if isolated:
        module = __spec__.name if __spec__ else "indextts_server.devtools.tiny_checkpoint25"
        env = dict(os.environ)
        package_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
        env["HF_HUB_OFFLINE"] = "1"
        result = subprocess.run(
            [
                *(sys.executable, "-m", module, str(root), "--seed", str(seed), "--in-process"),
                *(["--full-size"] if full_size else []),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not _is_complete(root, seed, full_size):
            tail = (result.stdout + result.stderr)[-4000:]
            raise RuntimeError(f"tiny 2.5 checkpoint build failed (exit {result.returncode}):\n{tail}")
        return model_dir
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_complete(root, seed, full_size):
            _build(root, seed, model_dir, full_size)
    return model_dir


def _is_complete(root: Path, seed: int, full_size: bool = False) -> bool:
    return _is_built(root, seed, full_size, name=_MARKER, version=_FORMAT_VERSION)


def _build(root: Path, seed: int, model_dir: Path, full_size: bool = False) -> None:
    from omegaconf import OmegaConf

    marker = root / _MARKER
    for path in (model_dir, marker):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    model_dir.mkdir(parents=True)
    aux = model_dir / "hf_cache"
    aux.mkdir()

    # A byte-level vocabulary: every text encodes, one token per UTF-8 byte.
    ranks = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    (model_dir / _TIKTOKEN).write_text("\n".join(ranks) + "\n", encoding="utf-8")
    text_tokens = 256 + _SPECIAL_TOKENS

    cfg = _full_config25() if full_size else _config25(text_tokens)
    (model_dir / "config.yaml").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    omega = OmegaConf.create(cfg)

    _seed(seed, 1)
    gpt_cfg = cast(dict[str, object], cfg["gpt"])
    gpt = cast(nn.Module, _attr("indextts25.gpt.model_v2", "UnifiedVoice")(**gpt_cfg))
    if full_size:
        _never_sample_start_or_stop(gpt, gpt_cfg)
    else:
        _sharpen(gpt)
    torch.save({"model": _half(gpt.state_dict())}, model_dir / "gpt.pth")
    del gpt

    _seed(seed, 2)
    s2mel = cast(nn.Module, _attr("indextts25.s2mel.modules.commons", "MyModel")(omega.s2mel))
    models = cast(nn.ModuleDict, s2mel.models)
    torch.save({"net": {k: _half(m.state_dict()) for k, m in models.items()}}, model_dir / "s2mel.pth")
    del s2mel, models

    _seed(seed, 3)
    codec = cast(nn.Module, _attr("indextts25.codec.models", "EnhancedCodec")(**cfg["semantic_codec"]))  # type: ignore[arg-type]
    torch.save({"model": _half(codec.state_dict())}, model_dir / "codec.pth")
    del codec

    _seed(seed, 4)
    rows = sum(_EMO_NUM)
    width = cast(int, gpt_cfg["model_dim"])
    torch.save(torch.randn(rows, width) * 0.02, model_dir / "feat2.pt")  # emotion matrix (GPT space)
    torch.save(torch.randn(rows, 192), model_dir / "feat1.pt")  # speaker matrix (CAMPPlus space)
    torch.save(
        {"mean": torch.randn(1024) * 0.1, "var": torch.rand(1024) + 0.5}, model_dir / "wav2vec2bert_stats.pt"
    )

    _seed(seed, 5)
    _write_qwen(model_dir / _QWEN_DIR)

    _seed(seed, 6)
    w2v = aux / "w2v-bert-2.0"
    w2v.mkdir()
    _write_w2v_bert(w2v, full_size)

    _seed(seed, 7)
    campplus_cls = _attr("indextts25.s2mel.modules.campplus.DTDNN", "CAMPPlus")
    campplus = cast(nn.Module, campplus_cls(feat_dim=80, embedding_size=192))  # hard-coded in infer_v2_5
    torch.save(_half(campplus.state_dict()), aux / "campplus_cn_common.bin")
    del campplus

    _seed(seed, 8)
    _write_bigvgan25(aux / "bigvgan", full_size)

    marker.write_text(_stamp(seed, full_size, _FORMAT_VERSION), encoding="utf-8")


def _sharpen(gpt: nn.Module) -> None:
    """The tiny GPT's sampling made to depend on every input, and never stopping."""
    head = cast(nn.Linear, gpt.mel_head)
    blocks = cast(nn.ModuleList, cast(nn.Module, gpt.gpt).h)
    attention = cast(nn.Module, blocks[0].attn)
    with torch.no_grad():
        # Sharp logits, and attention (over the conditioning and the text) outweighing the code's
        # own embedding, so every input (text, language, emotion) changes what is sampled; and no
        # stop token, so each segment runs to --max-mel-tokens and lengths are predictable.
        head.weight.mul_(8.0)
        cast(nn.Linear, attention.c_proj).weight.mul_(40.0)
        assert head.bias is not None
        head.bias[_MEL_CODES - 1] = -1e4


def _config25(text_tokens: int) -> dict[str, object]:
    """The config.yaml: IndexTTS-2.0's tiny s2mel (the same modules), a small GPT, 2.5's codec."""
    s2mel = cast(dict[str, object], _config()["s2mel"])
    emo_module = {
        "output_size": 32,
        "linear_units": 32,
        "attention_heads": 2,
        "num_blocks": 1,
        "input_layer": "conv2d2",
        "perceiver_mult": 1,
    }
    return {
        "gpt": {
            "model_dim": _GPT_DIM,
            "max_mel_tokens": 1815,
            "max_text_tokens": 600,
            "heads": 2,
            "layers": 1,
            "number_text_tokens": text_tokens,
            "number_mel_codes": _MEL_CODES,
            "start_mel_token": _MEL_CODES - 2,
            "stop_mel_token": _MEL_CODES - 1,
            "start_text_token": 0,
            "stop_text_token": text_tokens,  # the embedding's extra row: never a real token
            "emo_condition_module": emo_module,
        },
        "semantic_codec": {
            "codebook_size": _CODEBOOK_SIZE,
            "hidden_size": 1024,  # hard-coded: the length regulator reads w2v-bert-wide features
            "codebook_dim": 8,
            "vocos_dim": 16,
            "vocos_intermediate_dim": 16,
            "vocos_num_layers": 1,
        },
        "s2mel": s2mel,
        "gpt_checkpoint": "gpt.pth",
        "w2v_stat": "wav2vec2bert_stats.pt",
        "s2mel_checkpoint": "s2mel.pth",
        "emo_matrix": "feat2.pt",
        "spk_matrix": "feat1.pt",
        "emo_num": list(_EMO_NUM),
        "qwen_emo_path": _QWEN_DIR + "/",
        "version": 2.5,
    }


def _full_config25() -> dict[str, object]:
    """IndexTeam/IndexTTS-2.5's config.yaml (upstream configs/config_v2_5.yaml): its widths and
    depths; the s2mel and codec sections are IndexTTS-2's."""
    full = _full_config()
    gpt = cast(dict[str, object], full["gpt"])
    cfg = _config25(60509)
    cast(dict[str, object], cfg["gpt"]).update(
        model_dim=gpt["model_dim"],
        heads=gpt["heads"],
        layers=gpt["layers"],
        number_mel_codes=gpt["number_mel_codes"],
        start_mel_token=gpt["start_mel_token"],
        stop_mel_token=gpt["stop_mel_token"],
        stop_text_token=1,
        emo_condition_module=gpt["emo_condition_module"],
    )
    cfg["semantic_codec"] = full["semantic_codec"]
    cfg["s2mel"] = full["s2mel"]
    return cfg


def parameter_counts25(full_size: bool = True) -> dict[str, int]:
    """Parameters of each 2.5 component the builder makes, counted on the meta device."""
    from omegaconf import OmegaConf
    from transformers import Wav2Vec2BertModel

    cfg = _full_config25() if full_size else _config25(256 + _SPECIAL_TOKENS)
    omega = OmegaConf.create(cfg)
    bigvgan = "indextts25.s2mel.modules.bigvgan."
    return count_on_meta(
        {
            "gpt": lambda: _attr("indextts25.gpt.model_v2", "UnifiedVoice")(
                **cast(dict[str, object], cfg["gpt"])
            ),
            "s2mel": lambda: _attr("indextts25.s2mel.modules.commons", "MyModel")(omega.s2mel),
            "semantic_codec": lambda: _attr("indextts25.codec.models", "EnhancedCodec")(
                **cast(dict[str, object], cfg["semantic_codec"])
            ),
            "w2v_bert": lambda: Wav2Vec2BertModel(_w2v_bert_config(full_size)),
            "campplus": lambda: _attr("indextts25.s2mel.modules.campplus.DTDNN", "CAMPPlus")(
                feat_dim=80, embedding_size=192
            ),
            "bigvgan": lambda: _attr(bigvgan + "bigvgan", "BigVGAN")(
                _attr(bigvgan + "env", "AttrDict")(_bigvgan_hparams(full_size))
            ),
        }
    )


def _write_bigvgan25(directory: Path, full_size: bool = False) -> None:
    directory.mkdir()
    config_path = directory / "config.json"
    config_path.write_text(json.dumps(_bigvgan_hparams(full_size), indent=2) + "\n", encoding="utf-8")
    module = "indextts25.s2mel.modules.bigvgan.bigvgan"
    h = _attr(module, "load_hparams_from_json")(str(config_path))
    model = cast(nn.Module, _attr(module, "BigVGAN")(h))
    torch.save({"generator": _half(model.state_dict())}, directory / "bigvgan_generator.pt")


def main(argv: list[str] | None = None) -> int:
    args = generator_args("IndexTTS-2.5 model directory", argv)
    start = time.perf_counter()
    model_dir = build_tiny_checkpoint25(
        args.outdir, seed=args.seed, isolated=not args.in_process, full_size=args.full_size
    )
    size = _tree_size([model_dir])
    print(f"model_dir={model_dir}")
    print(f"size_mb={size / 1e6:.1f} seconds={time.perf_counter() - start:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
