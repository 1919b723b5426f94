"""Build a complete tiny random-weight IndexTTS2 checkpoint (plus a hub cache) for offline tests.

With ``--full-size`` the same builder gives the real model's widths and depths (random values):
speed depends on shapes, not values, so timings on it stand for IndexTeam/IndexTTS-2's.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import Wav2Vec2BertConfig

# transformers, huggingface_hub & co. are imported only inside the builders: huggingface_hub reads
# HF_HUB_CACHE / HF_HUB_OFFLINE once, at import, so importing this module must not pull it in.

__all__ = ["TinyCheckpoint", "build_tiny_checkpoint", "count_on_meta", "offline_env", "parameter_counts"]

_FORMAT_VERSION = 3
_MARKER = ".tiny-checkpoint-complete"

# Hub repos that IndexTTS2.__init__ resolves by name (see indextts/infer_v2.py).
_W2V_REPO = "facebook/w2v-bert-2.0"
_CODEC_REPO = "amphion/MaskGCT"
_CAMPPLUS_REPO = "funasr/campplus"
_BIGVGAN_REPO = "nvidia/bigvgan_v2_22khz_80band_256x"
_QWEN_DIR = "qwen0.6bemo4-merge"

# Mel codes: the GPT emits ids below _MEL_CODES; the semantic codec's codebook must cover them all
# (the start token included, since random weights may sample it).
_MEL_CODES = 130
_CODEBOOK_SIZE = 256
_EMO_NUM = [3, 17, 2, 8, 4, 5, 10, 24]  # the real model's emotion bucket counts
_GPT_DIM = 1280  # hard-coded: s2mel's gpt_layer is Linear(1280, ...)
_TEXT_TOKENS = 512  # GPT text vocabulary; the BPE must fit in it

# A few sentences for the BPE: Chinese with its punctuation, English, digits spelt out.
_BPE_CORPUS = (
    "大家好，我是测试语音。今天天气很好，我们一起去公园散步吧！",
    "这是一个用于测试的小模型，它的权重是随机的。你听到的声音没有任何意义？",
    "服务器把文本切成几段，然后一段一段地合成语音，再把它们拼接起来。",
    "我们说中文，也说英文。一二三四五六七八九十，百千万亿，点零。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "请稍等一下，马上就好了。谢谢你的耐心，再见！",
    "Hello everyone, this is a tiny test voice. The weather is nice today!",
    "The server splits the text into segments, then speaks them one by one.",
    "Random weights make random noise, so nothing you hear means anything?",
    "One two three four five six seven eight nine ten, hundred thousand million.",
    "Please wait a moment. Thank you for your patience, goodbye!",
    "It's a quick brown fox that jumps over the lazy dog - and then it rests.",
)
_BPE_SYMBOLS = [",", ".", "!", "?", "'", "-", "…"]


class TinyCheckpoint(NamedTuple):
    """Where a tiny checkpoint lives: pass model_dir/cfg_path to IndexTTS2, hub_cache via offline_env."""

    model_dir: Path
    cfg_path: Path
    hub_cache: Path


def offline_env(ckpt: TinyCheckpoint) -> dict[str, str]:
    """Environment variables that make IndexTTS2 resolve its auxiliary models from ``ckpt.hub_cache``.

    huggingface_hub reads them when it is first imported: set them before anything imports it
    (transformers, indextts), or pass them to a child process.
    """
    return {
        "HF_HUB_CACHE": str(ckpt.hub_cache),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def build_tiny_checkpoint(
    root: Path, *, seed: int = 0, isolated: bool = True, full_size: bool = False
) -> TinyCheckpoint:
    """Build the checkpoint under ``root`` (``root/model``, ``root/hub``); reuse it if already complete.

    With ``isolated`` (the default) the build runs in a child Python process, so this process never
    imports huggingface_hub before the caller has set ``offline_env`` (which it reads at import).
    """
    root = Path(root).resolve()
    ckpt = TinyCheckpoint(root / "model", root / "model" / "config.yaml", root / "hub")
    if _is_complete(root, seed, full_size):
        return ckpt
    if isolated:
        _build_in_child(root, seed, ckpt, full_size)
        if not _is_complete(root, seed, full_size):
            raise RuntimeError(f"tiny checkpoint build in {root} did not complete")
        return ckpt
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent builders (e.g. pytest-xdist workers) take turns
        if not _is_complete(root, seed, full_size):
            _build(root, seed, ckpt, full_size)
    return ckpt


def _stamp(seed: int, full_size: bool, version: int = _FORMAT_VERSION) -> str:
    stamp: dict[str, object] = {"format": version, "seed": seed}
    if full_size:
        stamp["full_size"] = True
    return json.dumps(stamp)


def _is_complete(
    root: Path, seed: int, full_size: bool = False, *, name: str = _MARKER, version: int = _FORMAT_VERSION
) -> bool:
    """Whether ``root`` holds a finished build of this seed, size and format (its marker file)."""
    marker = root / name
    return marker.is_file() and marker.read_text(encoding="utf-8") == _stamp(seed, full_size, version)


def _build_in_child(root: Path, seed: int, ckpt: TinyCheckpoint, full_size: bool) -> None:
    package_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env.update(offline_env(ckpt))  # the build itself needs no network either
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", __spec__.name if __spec__ else "indextts_server.devtools.tiny_checkpoint"]
    result = subprocess.run(
        [*cmd, str(root), "--seed", str(seed), "--in-process", *(["--full-size"] if full_size else [])],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        raise RuntimeError(f"tiny checkpoint build failed (exit {result.returncode}):\n{tail}")


def _build(root: Path, seed: int, ckpt: TinyCheckpoint, full_size: bool = False) -> None:
    from omegaconf import OmegaConf

    marker = root / _MARKER
    for path in (ckpt.model_dir, ckpt.hub_cache, marker):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    ckpt.model_dir.mkdir(parents=True)
    ckpt.hub_cache.mkdir(parents=True)

    cfg = _full_config() if full_size else _config()
    # JSON is valid YAML; OmegaConf.load reads it as such.
    ckpt.cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    omega = OmegaConf.create(cfg)

    vocab_size = _write_bpe(ckpt.model_dir / "bpe.model")
    if vocab_size > _TEXT_TOKENS:
        raise RuntimeError(f"BPE vocabulary ({vocab_size}) exceeds gpt.number_text_tokens")

    _seed(seed, 1)
    gpt_cls = _attr("indextts.gpt.model_v2", "UnifiedVoice")
    gpt = cast(nn.Module, gpt_cls(**cast(dict[str, object], cfg["gpt"])))
    if full_size:
        _never_sample_start_or_stop(gpt, cast(dict[str, object], cfg["gpt"]))
    torch.save({"model": _half(gpt.state_dict())}, ckpt.model_dir / "gpt.pth")
    del gpt

    _seed(seed, 2)
    s2mel_cls = _attr("indextts.s2mel.modules.commons", "MyModel")
    s2mel = cast(nn.Module, s2mel_cls(omega.s2mel, use_gpt_latent=True))
    models = cast(nn.ModuleDict, s2mel.models)
    net = {key: _half(module.state_dict()) for key, module in models.items()}
    torch.save({"net": net}, ckpt.model_dir / "s2mel.pth")
    del s2mel, models

    _seed(seed, 3)
    rows = sum(_EMO_NUM)
    torch.save(torch.randn(rows, _GPT_DIM) * 0.02, ckpt.model_dir / "feat2.pt")  # emotion matrix (GPT space)
    torch.save(torch.randn(rows, 192), ckpt.model_dir / "feat1.pt")  # speaker matrix (CAMPPlus space)
    torch.save(
        {"mean": torch.randn(1024) * 0.1, "var": torch.rand(1024) + 0.5},
        ckpt.model_dir / "wav2vec2bert_stats.pt",
    )

    _seed(seed, 4)
    _write_qwen(ckpt.model_dir / _QWEN_DIR)

    hub = ckpt.hub_cache
    _seed(seed, 5)
    _write_w2v_bert(_snapshot(hub, _W2V_REPO, seed), full_size)

    _seed(seed, 6)
    codec = cast(
        nn.Module, _attr("indextts.utils.maskgct_utils", "build_semantic_codec")(omega.semantic_codec)
    )
    codec_dir = _snapshot(hub, _CODEC_REPO, seed) / "semantic_codec"
    codec_dir.mkdir()
    _save_safetensors(codec.state_dict(), codec_dir / "model.safetensors")
    del codec

    _seed(seed, 7)
    campplus_cls = _attr("indextts.s2mel.modules.campplus.DTDNN", "CAMPPlus")
    campplus = cast(nn.Module, campplus_cls(feat_dim=80, embedding_size=192))  # hard-coded in infer_v2
    torch.save(_half(campplus.state_dict()), _snapshot(hub, _CAMPPLUS_REPO, seed) / "campplus_cn_common.bin")
    del campplus

    _seed(seed, 8)
    _write_bigvgan(_snapshot(hub, _BIGVGAN_REPO, seed), full_size)

    marker.write_text(_stamp(seed, full_size), encoding="utf-8")


def _config() -> dict[str, object]:
    """The config.yaml, shaped like IndexTeam/IndexTTS-2's with everything not hard-coded shrunk."""
    small_conformer = {
        "output_size": 32,
        "linear_units": 32,
        "attention_heads": 2,
        "num_blocks": 1,
        "input_layer": "conv2d2",
        "perceiver_mult": 1,
    }
    return {
        "dataset": {"bpe_model": "bpe.model", "sample_rate": 24000, "squeeze": False},
        "gpt": {
            "model_dim": _GPT_DIM,
            "max_mel_tokens": 1815,
            "max_text_tokens": 600,
            "heads": 20,
            "use_mel_codes_as_input": True,
            "mel_length_compression": 1024,
            "layers": 1,
            "number_text_tokens": _TEXT_TOKENS,
            "number_mel_codes": _MEL_CODES,
            "start_mel_token": _MEL_CODES - 2,
            "stop_mel_token": _MEL_CODES - 1,
            "start_text_token": 0,
            "stop_text_token": 1,
            "train_solo_embeddings": False,
            "condition_type": "conformer_perceiver",
            "condition_module": dict(small_conformer),
            "emo_condition_module": dict(small_conformer),
        },
        "semantic_codec": {
            "codebook_size": _CODEBOOK_SIZE,
            "hidden_size": 1024,  # hard-coded: w2v-bert features and gpt_layer output are 1024 wide
            "codebook_dim": 8,
            "vocos_dim": 16,
            "vocos_intermediate_dim": 16,
            "vocos_num_layers": 1,
        },
        "s2mel": {
            "preprocess_params": {
                "sr": 22050,
                "spect_params": {
                    "n_fft": 1024,
                    "win_length": 1024,
                    "hop_length": 256,
                    "n_mels": 80,
                    "fmin": 0,
                    "fmax": "None",
                },
            },
            "dit_type": "DiT",
            "reg_loss_type": "l1",
            "style_encoder": {"dim": 192},  # hard-coded: CAMPPlus embedding size
            "length_regulator": {
                "channels": 32,
                "is_discrete": False,
                "in_channels": 1024,
                "content_codebook_size": 16,
                "sampling_ratios": [1],
                "vector_quantize": False,
                "n_codebooks": 1,
                "quantizer_dropout": 0.0,
                "f0_condition": False,
                "n_f0_bins": 16,
            },
            "DiT": {
                "hidden_dim": 32,
                "num_heads": 2,
                "depth": 2,
                "class_dropout_prob": 0.1,
                "block_size": 8192,
                "in_channels": 80,
                "style_condition": True,
                "final_layer_type": "wavenet",
                "target": "mel",
                "content_dim": 32,
                "content_codebook_size": 16,
                "content_type": "discrete",
                "f0_condition": False,
                "n_f0_bins": 16,
                "content_codebooks": 1,
                "is_causal": False,
                "long_skip_connection": True,
                "zero_prompt_speech_token": False,
                "time_as_token": False,
                "style_as_token": False,
                "uvit_skip_connection": True,
                "add_resblock_in_transformer": False,
            },
            "wavenet": {
                "hidden_dim": 32,  # must equal DiT.hidden_dim (FinalLayer is conditioned on DiT features)
                "num_layers": 1,
                "kernel_size": 3,
                "dilation_rate": 1,
                "p_dropout": 0.2,
                "style_condition": True,
            },
        },
        "gpt_checkpoint": "gpt.pth",
        "w2v_stat": "wav2vec2bert_stats.pt",
        "s2mel_checkpoint": "s2mel.pth",
        "emo_matrix": "feat2.pt",
        "spk_matrix": "feat1.pt",
        "emo_num": list(_EMO_NUM),
        "qwen_emo_path": _QWEN_DIR + "/",
        "vocoder": {"type": "bigvgan", "name": _BIGVGAN_REPO},
        "version": 2.0,
    }


def _full_config() -> dict[str, object]:
    """IndexTeam/IndexTTS-2's config.yaml: its widths and depths (the tiny one's file layout)."""
    cfg = _config()
    gpt = cast(dict[str, object], cfg["gpt"])
    gpt.update(
        layers=24,
        number_text_tokens=12000,
        number_mel_codes=8194,
        start_mel_token=8192,
        stop_mel_token=8193,
        condition_module={
            "output_size": 512,
            "linear_units": 2048,
            "attention_heads": 8,
            "num_blocks": 6,
            "input_layer": "conv2d2",
            "perceiver_mult": 2,
        },
        emo_condition_module={
            "output_size": 512,
            "linear_units": 1024,
            "attention_heads": 4,
            "num_blocks": 4,
            "input_layer": "conv2d2",
            "perceiver_mult": 2,
        },
    )
    cfg["semantic_codec"] = {
        "codebook_size": 8192,
        "hidden_size": 1024,
        "codebook_dim": 8,
        "vocos_dim": 384,
        "vocos_intermediate_dim": 2048,
        "vocos_num_layers": 12,
    }
    s2mel = cast(dict[str, dict[str, object]], cfg["s2mel"])
    s2mel["length_regulator"].update(
        channels=512, content_codebook_size=2048, sampling_ratios=[1, 1, 1, 1], n_f0_bins=512
    )
    s2mel["DiT"].update(
        hidden_dim=512, num_heads=8, depth=13, content_dim=512, content_codebook_size=1024, n_f0_bins=512
    )
    s2mel["wavenet"].update(hidden_dim=512, num_layers=8, kernel_size=5)
    return cfg


def _never_sample_start_or_stop(gpt: nn.Module, gpt_cfg: Mapping[str, object]) -> None:
    """The real codec's 8192 codes do not cover the start token, and a stop would end a row before
    the ``max_mel_tokens`` cap: with both logits at -1e4 every row decodes exactly the cap."""
    bias = cast(nn.Linear, gpt.mel_head).bias
    assert bias is not None
    with torch.no_grad():
        for key in ("start_mel_token", "stop_mel_token"):
            bias[cast(int, gpt_cfg[key])] = -1e4


def parameter_counts(full_size: bool = True) -> dict[str, int]:
    """Parameters of each component the builder makes, counted on the meta device (no memory, a
    few seconds): what a test compares with the real model's published sizes."""
    from omegaconf import OmegaConf
    from transformers import Wav2Vec2BertModel

    cfg = _full_config() if full_size else _config()
    omega = OmegaConf.create(cfg)
    bigvgan = "indextts.s2mel.modules.bigvgan."
    return count_on_meta(
        {
            "gpt": lambda: _attr("indextts.gpt.model_v2", "UnifiedVoice")(
                **cast(dict[str, object], cfg["gpt"])
            ),
            "s2mel": lambda: _attr("indextts.s2mel.modules.commons", "MyModel")(
                omega.s2mel, use_gpt_latent=True
            ),
            "semantic_codec": lambda: _attr("indextts.utils.maskgct_utils", "build_semantic_codec")(
                omega.semantic_codec
            ),
            "w2v_bert": lambda: Wav2Vec2BertModel(_w2v_bert_config(full_size)),
            "campplus": lambda: _attr("indextts.s2mel.modules.campplus.DTDNN", "CAMPPlus")(
                feat_dim=80, embedding_size=192
            ),
            "bigvgan": lambda: _attr(bigvgan + "bigvgan", "BigVGAN")(
                _attr(bigvgan + "env", "AttrDict")(_bigvgan_hparams(full_size)), use_cuda_kernel=False
            ),
        }
    )


def count_on_meta(builders: Mapping[str, Callable[[], object]]) -> dict[str, int]:
    """Build each module on the meta device and count its parameters."""
    counts: dict[str, int] = {}
    with torch.device("meta"):
        for name, build in builders.items():
            counts[name] = sum(p.numel() for p in cast(nn.Module, build()).parameters())
    return counts


def _attr(module: str, name: str) -> Callable[..., object]:
    """A constructor from the untyped ``indextts`` package, imported lazily."""
    return cast(Callable[..., object], getattr(importlib.import_module(module), name))


def _seed(seed: int, part: int) -> None:
    torch.manual_seed(seed * 1000 + part)


def _half(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Store float weights as fp16 to halve the size; load_state_dict casts them back to fp32."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        fits = value.is_floating_point() and bool(value.abs().max() < 60000) if value.numel() else False
        out[key] = value.detach().half().clone() if fits else value.detach().clone()
    return out


def _save_safetensors(state: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in _half(state).items()}, str(path))


def _snapshot(hub: Path, repo: str, seed: int) -> Path:
    """Create ``models--ORG--NAME/{refs/main,snapshots/<rev>}`` as huggingface_hub lays it out."""
    rev = hashlib.sha1(f"tiny-indextts2:{repo}:{seed}".encode()).hexdigest()
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(rev, encoding="utf-8")
    snap = repo_dir / "snapshots" / rev
    snap.mkdir(parents=True)
    return snap


def _write_bpe(path: Path) -> int:
    import sentencepiece as spm

    pre = cast(Callable[[str], str], _attr("indextts.utils.common", "tokenize_by_CJK_char"))
    punct = str.maketrans({"，": ",", "。": ".", "！": "!", "？": "?"})
    lines = [pre(line.translate(punct)) for line in _BPE_CORPUS]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=300,
        hard_vocab_limit=False,
        character_coverage=1.0,
        user_defined_symbols=_BPE_SYMBOLS,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    processor = spm.SentencePieceProcessor(model_file=str(path))
    return processor.GetPieceSize()


def _write_w2v_bert(snap: Path, full_size: bool = False) -> None:
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel

    config = _w2v_bert_config(full_size)
    model = Wav2Vec2BertModel(config)
    # Weights are stored as fp16; with dtype float32 in config.json, from_pretrained (dtype="auto")
    # builds a float32 model and upcasts them. Without it the model would load as float16.
    config.dtype = torch.float32
    config.save_pretrained(str(snap))
    _save_safetensors(model.state_dict(), snap / "model.safetensors")
    SeamlessM4TFeatureExtractor(  # type: ignore[no-untyped-call]  # unannotated in transformers
        feature_size=80, num_mel_bins=80, sampling_rate=16000, stride=2, padding_value=1.0
    ).save_pretrained(str(snap))


def _w2v_bert_config(full_size: bool) -> Wav2Vec2BertConfig:
    """facebook/w2v-bert-2.0's shape at full size; tiny keeps only what the code hard-codes."""
    from transformers import Wav2Vec2BertConfig

    return Wav2Vec2BertConfig(
        hidden_size=1024,  # hard-coded: the GPT's conditioning encoders take 1024-wide features
        num_hidden_layers=24 if full_size else 17,  # hard-coded: IndexTTS2.get_emb reads hidden_states[17]
        num_attention_heads=16 if full_size else 1,
        intermediate_size=4096 if full_size else 8,
        conv_depthwise_kernel_size=31 if full_size else 3,
        position_embeddings_type="relative_key",
        left_max_position_embeddings=64 if full_size else 8,
        right_max_position_embeddings=8 if full_size else 2,
        feature_projection_input_dim=160,
        add_adapter=False,
        apply_spec_augment=False,
        layerdrop=0.0,
    )


def _write_qwen(qwen_dir: Path) -> None:
    """A tiny Qwen3 causal LM whose output head is zero, so greedy decoding emits EOS (id 0) at once."""
    import tokenizers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    byte_level = tokenizers.pre_tokenizers.ByteLevel
    alphabet = sorted(byte_level.alphabet())
    vocab = {token: index for index, token in enumerate([*specials, *alphabet])}
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = byte_level(add_prefix_space=False, use_regex=True)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.add_special_tokens(specials)
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # unannotated in transformers
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        chat_template=template,
    )
    fast.save_pretrained(str(qwen_dir))

    config = Qwen3Config(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = Qwen3ForCausalLM(config)  # type: ignore[no-untyped-call]  # unannotated in transformers
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]  # unannotated in transformers
        do_sample=False, bos_token_id=0, eos_token_id=0, pad_token_id=0
    )
    model.save_pretrained(str(qwen_dir))


def _write_bigvgan(snap: Path, full_size: bool = False) -> None:
    config_path = snap / "config.json"
    config_path.write_text(json.dumps(_bigvgan_hparams(full_size), indent=2) + "\n", encoding="utf-8")
    module = "indextts.s2mel.modules.bigvgan.bigvgan"
    h = _attr(module, "load_hparams_from_json")(str(config_path))
    model = cast(nn.Module, _attr(module, "BigVGAN")(h, use_cuda_kernel=False))
    torch.save({"generator": _half(model.state_dict())}, snap / "bigvgan_generator.pt")


def _bigvgan_hparams(full_size: bool) -> dict[str, object]:
    """The vocoder's config.json; full size is nvidia/bigvgan_v2_22khz_80band_256x's generator."""
    return {
        "resblock": "1",
        "upsample_rates": [4, 4, 2, 2, 2, 2] if full_size else [4, 4, 4, 4],  # product: 256, the mel hop
        "upsample_kernel_sizes": [8, 8, 4, 4, 4, 4] if full_size else [8, 8, 8, 8],
        "upsample_initial_channel": 1536 if full_size else 32,
        "resblock_kernel_sizes": [3, 7, 11] if full_size else [3],
        "resblock_dilation_sizes": [[1, 3, 5]] * 3 if full_size else [[1]],
        "use_tanh_at_final": False,
        "use_bias_at_final": False,
        "activation": "snakebeta",
        "snake_logscale": True,
        "num_mels": 80,
        "n_fft": 1024,
        "hop_size": 256,
        "win_size": 1024,
        "sampling_rate": 22050,
        "fmin": 0,
        "fmax": None,
    }


def _tree_size(paths: Iterable[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file())


def generator_args(model: str, argv: list[str] | None) -> argparse.Namespace:
    """The command line both generators take (``model`` names what they build)."""
    parser = argparse.ArgumentParser(description=f"Build a random-weight {model} (tiny or full size).")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-process", action="store_true", help="build here, not in a child process")
    parser.add_argument(
        "--full-size",
        action="store_true",
        help="the real model's widths and depths (random values; several GB): for timings, not tests",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = generator_args("IndexTTS2 checkpoint", argv)
    start = time.perf_counter()
    ckpt = build_tiny_checkpoint(
        args.outdir, seed=args.seed, isolated=not args.in_process, full_size=args.full_size
    )
    elapsed = time.perf_counter() - start
    size = _tree_size([ckpt.model_dir, ckpt.hub_cache])
    print(f"model_dir={ckpt.model_dir}")
    print(f"cfg_path={ckpt.cfg_path}")
    print(f"hub_cache={ckpt.hub_cache}")
    print(f"size_mb={size / 1e6:.1f} seconds={elapsed:.1f}")
    for key, value in offline_env(ckpt).items():
        print(f"export {key}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
