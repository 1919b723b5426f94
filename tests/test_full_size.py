"""The full-size random-weight checkpoints have the real models' widths and depths.

Nothing is written and no weight is allocated: the generators' configs are checked against the
values of upstream's config.yaml files, and every component is built on the meta device and its
parameters counted against the real model's figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

if os.environ.get("INDEXTTS_SERVER_LIGHT") == "1":
    pytest.skip("light mode (INDEXTTS_SERVER_LIGHT=1): no torch, no real engine", allow_module_level=True)
import indextts  # type: ignore[import-untyped]  # noqa: F401 - fail early without the package
import indextts25  # type: ignore[import-untyped]  # noqa: F401
import torch
from torch import nn

from indextts_server.devtools.tiny_checkpoint import (
    _full_config,
    _never_sample_start_or_stop,
    parameter_counts,
)
from indextts_server.devtools.tiny_checkpoint25 import _full_config25, parameter_counts25

pytestmark = pytest.mark.timeout(300)

# Transcribed from upstream index-tts's checkpoints/config.yaml (IndexTTS-2); configs/config_v2_5.yaml
# has the same semantic_codec and s2mel sections and differs in the GPT as below.
_CONFORMER = {"input_layer": "conv2d2", "perceiver_mult": 2}
UPSTREAM_2: dict[str, dict[str, object]] = {
    "gpt": {
        "model_dim": 1280, "max_mel_tokens": 1815, "max_text_tokens": 600, "heads": 20, "layers": 24,
        "number_text_tokens": 12000, "number_mel_codes": 8194, "start_mel_token": 8192,
        "stop_mel_token": 8193, "start_text_token": 0, "stop_text_token": 1,
        "condition_module": {"output_size": 512, "linear_units": 2048, "attention_heads": 8, "num_blocks": 6, **_CONFORMER},
        "emo_condition_module": {"output_size": 512, "linear_units": 1024, "attention_heads": 4, "num_blocks": 4, **_CONFORMER},
    },
    "semantic_codec": {
        "codebook_size": 8192, "hidden_size": 1024, "codebook_dim": 8, "vocos_dim": 384,
        "vocos_intermediate_dim": 2048, "vocos_num_layers": 12,
    },
    "s2mel": {
        "length_regulator": {"channels": 512, "in_channels": 1024, "content_codebook_size": 2048, "sampling_ratios": [1, 1, 1, 1]},
        "DiT": {"hidden_dim": 512, "num_heads": 8, "depth": 13, "block_size": 8192, "in_channels": 80, "content_dim": 512, "uvit_skip_connection": True, "long_skip_connection": True},
        "wavenet": {"hidden_dim": 512, "num_layers": 8, "kernel_size": 5, "dilation_rate": 1},
    },
}  # fmt: skip
UPSTREAM_25_GPT = {**UPSTREAM_2["gpt"], "number_text_tokens": 60509}
del UPSTREAM_25_GPT["condition_module"]  # 2.5's speaker conditioning is CAMPPlus's vector

# Parameters per component. Published: BigVGAN v2 22 kHz 80-band 256x "112M" (NVIDIA's model
# card); facebook/w2v-bert-2.0's model.safetensors is 2.32 GB of float32, ~580M. The 2.5 GPT's
# training-only text head, which its package leaves out, is "77 M" by the package's own comment:
# 60510 x 1280. The rest follow from the config values above (the real IndexTTS-2 files hold
# more than weights, so their sizes are no check): the counts of these shapes as built on
# 2026-11-27 (torch 2.9.1, transformers 5.17), loaded and run by the real engines.
EXPECTED_2 = {
    "gpt": 865_980_639, "s2mel": 103_668_688, "semantic_codec": 44_289_808,
    "w2v_bert": 580_493_120, "campplus": 6_848_544, "bigvgan": 112_231_249,
}  # fmt: skip
EXPECTED_25 = {
    "gpt": 734_776_150, "s2mel": 103_150_672, "semantic_codec": 25_324_416,
    "w2v_bert": 580_493_120, "campplus": 6_848_544, "bigvgan": 112_199_472,
}  # fmt: skip
PUBLISHED = {"w2v_bert": 580e6, "bigvgan": 112e6}


def assert_contains(actual: Mapping[str, object], expected: Mapping[str, object], where: str = "") -> None:
    for key, value in expected.items():
        assert key in actual, f"{where}{key} missing"
        if isinstance(value, Mapping):
            assert_contains(actual[key], value, f"{where}{key}.")  # type: ignore[arg-type]
        else:
            assert actual[key] == value, f"{where}{key}: {actual[key]!r}, upstream {value!r}"


def assert_counts(counts: Mapping[str, int], expected: Mapping[str, int]) -> None:
    assert set(counts) == set(expected)
    for name, want in expected.items():
        assert counts[name] == pytest.approx(want, rel=0.005), (
            f"{name}: {counts[name]:,} parameters, want {want:,}"
        )
    for name, published in PUBLISHED.items():
        assert counts[name] == pytest.approx(published, rel=0.01), (
            f"{name}: {counts[name]:,}, published {published:,.0f}"
        )


def test_the_full_size_indextts2_config_is_upstreams_and_its_components_have_the_real_sizes() -> None:
    assert_contains(_full_config(), UPSTREAM_2)
    full, tiny = parameter_counts(full_size=True), parameter_counts(full_size=False)
    assert_counts(full, EXPECTED_2)
    assert tiny["gpt"] < full["gpt"] / 10 and tiny["s2mel"] < full["s2mel"] / 100  # the flag matters


def test_the_full_size_indextts25_config_is_upstreams_and_its_components_have_the_real_sizes() -> None:
    cfg = _full_config25()
    assert_contains(cfg, {**UPSTREAM_2, "gpt": UPSTREAM_25_GPT})
    assert cfg["version"] == 2.5
    full, tiny = parameter_counts25(full_size=True), parameter_counts25(full_size=False)
    assert_counts(full, EXPECTED_25)
    assert tiny["gpt"] < full["gpt"] / 10


def test_a_full_size_gpt_never_samples_its_start_or_stop_code_so_every_row_decodes_to_the_cap() -> None:
    gpt = nn.Module()
    gpt.mel_head = nn.Linear(4, 10)
    with torch.no_grad():
        gpt.mel_head.bias.zero_()
    _never_sample_start_or_stop(gpt, {"start_mel_token": 8, "stop_mel_token": 9})
    logits = gpt.mel_head(torch.randn(64, 4))
    picked = set(torch.multinomial(torch.softmax(logits, -1), 50, replacement=True).flatten().tolist())
    assert picked <= set(range(8)) and len(picked) > 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU this would run the whole benchmark")
def test_the_gpu_benchmark_without_a_gpu_says_so_and_writes_what_machine_it_saw(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "indextts_server.bench.gpu", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "no CUDA device" in done.stderr and "--smoke" in done.stderr
    report = json.loads((tmp_path / "gpu-bench.json").read_text())
    assert report["machine"]["cuda"] is False and report["settings"]["sizes"] == [1, 2, 4, 8, 16]
    assert "steps" not in report  # nothing was built or run
