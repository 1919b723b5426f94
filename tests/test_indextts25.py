"""The real IndexTTS-2.5 engine, end to end: a tiny random-weight model directory behind the real server.

The directory is built once per test run from ``indextts25``'s own classes; the server is started
from the CLI on it (the family is detected from its files) and driven over WebSocket and HTTP.
Random weights rarely emit the stop token, so generation is capped with ``--max-mel-tokens``.

The text normalizers compile their grammars on first use (about 2-5 minutes together on a slow
machine); ``XDG_CACHE_HOME`` points them at a cache under ``~/.cache`` keyed by the package
versions, so later runs load them in seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import openai
import pytest
import soundfile
import trio

if os.environ.get("INDEXTTS_SERVER_LIGHT") == "1":
    pytest.skip("light mode (INDEXTTS_SERVER_LIGHT=1): no torch, no real engine", allow_module_level=True)
# Outside the light mode the real engine is part of what is tested: without torch or indextts25
# these imports fail the run instead of skipping it.
import indextts25  # type: ignore[import-untyped]  # noqa: F401 - untyped package, imported to fail early
import torch  # noqa: F401
from trio_websocket import open_websocket_url

from indextts_server.core.engine import SAMPLE_RATE
from indextts_server.core.texts import task_timed_out
from indextts_server.devtools.tiny_checkpoint25 import build_tiny_checkpoint25
from indextts_server.io.engines.indextts25 import QWEN_DIR

from .conftest import (
    CLIENT_MAX_MESSAGE,
    EMO_PROMPT,
    PROMPT,
    REPO,
    Client,
    CliServer,
    assert_three_pipelined_in_order,
    decode_wav,
    tts,
    wait_until,
)
from .test_agent_clients import livekit_speak
from .test_cluster import Node, broker, fleet  # noqa: F401 - fixtures: a redis-server, its nodes
from .test_contract_clients import contract_script

MAX_MEL_TOKENS = 16
DIFFUSION_STEPS = 4
pytestmark = pytest.mark.timeout(900)
TWO_SEGMENTS = "今天天气很好。我们一起去公园散步吧。"


def _text_cache_dir() -> Path:
    """Where the normalizers' compiled grammars persist between runs, keyed by what builds them."""
    packages = ("indextts25-inference", "nemo_text_processing", "pynini", "wetextprocessing")
    key = hashlib.sha256(" ".join(f"{p}={version(p)}" for p in packages).encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "indextts-server" / f"text-normalizers-{key}"


@pytest.fixture(scope="session")
def model25(tmp_path_factory: pytest.TempPathFactory) -> Path:
    began = time.monotonic()
    model_dir = build_tiny_checkpoint25(tmp_path_factory.mktemp("tiny-indextts25"))
    print(f"\ntiny 2.5 directory built in {time.monotonic() - began:.1f} s", file=sys.stderr)
    return model_dir


@pytest.fixture(scope="session")
def env25() -> dict[str, str]:
    cache = _text_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    # One thread: on a small shared machine torch's thread pool fights itself (10x slower here).
    return {**os.environ, "XDG_CACHE_HOME": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def cli_args(model_dir: Path, *extra: str) -> list[str]:
    return [
        "--engine", "indextts2", "--model-dir", str(model_dir), "--device", "cpu",
        "--max-mel-tokens", str(MAX_MEL_TOKENS), "--diffusion-steps", str(DIFFUSION_STEPS), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def server25(
    model25: Path, env25: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CliServer]:
    began = time.monotonic()
    voices = tmp_path_factory.mktemp("voices25")
    server = CliServer(cli_args(model25, "--voices-dir", str(voices), "--port", "0"), env=env25)
    print(f"IndexTTS-2.5 server ready in {time.monotonic() - began:.1f} s", file=sys.stderr)
    try:
        yield server
    finally:
        server.stop(timeout=60)


@pytest.fixture(scope="session")
def batch25(model25: Path, env25: dict[str, str]) -> Iterator[CliServer]:
    """The same model served with ``--batch-size 8``."""
    server = CliServer(cli_args(model25, "--batch-size", "8", "--port", "0"), env=env25)
    try:
        yield server
    finally:
        server.stop(timeout=60)


@pytest.fixture(params=["1", "8"], ids=["batch-size-1", "batch-size-8"])
def any25(request: pytest.FixtureRequest) -> CliServer:
    """The 2.5 server at the contract's batch size 1, then at 8."""
    return cast(CliServer, request.getfixturevalue("server25" if request.param == "1" else "batch25"))


@asynccontextmanager
async def connect(server: CliServer) -> AsyncIterator[Client]:
    async with open_websocket_url(server.url, max_message_size=CLIENT_MAX_MESSAGE) as ws:
        yield Client(ws, json.loads(await ws.get_message()))


async def pcm_of(server: CliServer, **fields: Any) -> np.ndarray:
    async with connect(server) as client:
        _, wav = await client.request(tts(**fields))
    return decode_wav(wav)[0]


# The library's own output, and the engine's segment texts, from a separate process.
PROBE = r"""
import json, random, sys
import numpy as np, torch
from indextts25.infer_v2_5 import IndexTTS2
from indextts_server.core.config import EngineOptions
from indextts_server.core.engine import SynthesisJob
from indextts_server.io.engines.indextts25 import IndexTTS25Engine

model_dir, max_mel, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cases = json.loads(sys.argv[4])
library = IndexTTS2(cfg_path=f"{model_dir}/config.yaml", model_dir=model_dir, device="cpu")
out = {"reference": {}, "texts": {}}
for name, case in cases["reference"].items():
    kwargs = dict(case["kwargs"], max_mel_tokens=max_mel, diffusion_steps=steps)
    library.infer(case["prompt"], case["text"], None, case["lang"], **kwargs)  # conditioning cached
    torch.manual_seed(case["seed"]); np.random.seed(case["seed"]); random.seed(case["seed"])
    rate, wav = library.infer(case["prompt"], case["text"], None, case["lang"], **kwargs)
    out["reference"][name] = wav.reshape(-1).tolist()
engine = IndexTTS25Engine(EngineOptions(model_dir=model_dir, max_mel_tokens=max_mel, diffusion_steps=steps))
for name, fields in cases["texts"].items():
    job = SynthesisJob(prompt_audio="asset/zero_shot_prompt.wav", seed=1, **fields)
    out["texts"][name] = [segment.text for segment in engine.synthesize(job)]
gpt = engine._model.gpt
seen = []
infer = gpt.inference_speech
gpt.inference_speech = lambda text, lang, emovec, *a, **k: seen.append(emovec.flatten().tolist()) or infer(text, lang, emovec, *a, **k)
out["emotion"] = {}
for name, fields in cases["emotion"].items():
    job = SynthesisJob(text="大家好。", prompt_audio="asset/zero_shot_prompt.wav", seed=1, **fields)
    list(engine.synthesize(job))
    out["emotion"][name] = seen[-1]
print(json.dumps(out))
"""

REFERENCE_CASES: dict[str, dict[str, Any]] = {
    "none": {"text": TWO_SEGMENTS, "lang": "zh", "seed": 11, "prompt": PROMPT, "kwargs": {}},
    "audio": {
        "text": TWO_SEGMENTS,
        "lang": "zh",
        "seed": 12,
        "prompt": PROMPT,
        "kwargs": {"emo_audio_prompt": EMO_PROMPT, "emo_alpha": 0.8},
    },
    # SSML's spans, each the library's own utterance (`test_ssml_spans_are_the_librarys_own_output`).
    "first_span": {"text": "今天天气很好。", "lang": "zh", "seed": 11, "prompt": PROMPT, "kwargs": {}},
    "second_span": {"text": "我们一起去公园散步吧。", "lang": "zh", "seed": 11, "prompt": PROMPT, "kwargs": {}},
}
TEXT_CASES: dict[str, dict[str, Any]] = {
    "pinyin": {"text": "我们<行|XING2>走吧。", "lang": "zh"},
    "phonemes": {"text": "Wait a <minute|M IH1 . N AH0 T>, it is 12 dollars.", "lang": "en"},
    "kana": {"text": "とても<上手|じょうず>です。", "lang": "ja"},
    "es_detected": {"text": "Hola, cuesta 12 euros."},
    "en_detected": {"text": "It costs 12 dollars."},
    "mixed_stays_zh": {"text": "我们用 Python 写代码。"},
    "ar_detected": {"text": "مرحبا بكم"},
}


@pytest.fixture(scope="session")
def probe(model25: Path, env25: dict[str, str], server25: CliServer) -> dict[str, Any]:
    # After server25: the server's warm-up has filled the normalizers' cache this probe reads.
    cases = {
        "reference": {
            name: {**case, "prompt": str(REPO / case["prompt"]), "kwargs": _absolute(case["kwargs"])}
            for name, case in REFERENCE_CASES.items()
        },
        "texts": TEXT_CASES,
        "emotion": EMOTIONS,
    }
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            str(model25),
            str(MAX_MEL_TOKENS),
            str(DIFFUSION_STEPS),
            json.dumps(cases),
        ],
        cwd=REPO,
        env=env25,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def _absolute(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: str(REPO / v) if k == "emo_audio_prompt" else v for k, v in kwargs.items()}


# --- the model family, detected ------------------------------------------------------------------


def test_the_server_detects_indextts25_from_the_directory_and_warms_it_up(server25: CliServer) -> None:
    text = server25.text
    load = text.index("IndexTTS2.5 model loaded on cpu in")
    assert load < text.index("warm-up on cpu took") < text.index("listening on ws://")


def _load_failure(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "indextts_server", "--host", "127.0.0.1", "--port", "0", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    return result.stderr


def test_a_directory_of_neither_model_fails_clearly(env25: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("gpt: {}\n", encoding="utf-8")
    stderr = _load_failure(env25, "--device", "cpu", "--model-dir", str(tmp_path))
    assert f"模型加载失败: {tmp_path} 既不是 IndexTTS-2 也不是 IndexTTS-2.5 的模型目录" in stderr


def test_download_fetches_the_repository_the_directory_names(env25: dict[str, str], tmp_path: Path) -> None:
    # Offline, so the download fails, naming the repository it tried.
    stderr = _load_failure(
        env25, "--device", "cpu", "--download", "--model-dir", str(tmp_path / "IndexTTS-2.5")
    )
    assert "模型加载失败: 下载 IndexTeam/IndexTTS-2.5 失败" in stderr
    assert "hf download IndexTeam/IndexTTS-2.5" in stderr


# --- fidelity: served audio is the library's own ---------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "audio"])
async def test_served_audio_is_the_librarys_own_output_sample_for_sample(
    server25: CliServer, probe: dict[str, Any], mode: str
) -> None:
    case = REFERENCE_CASES[mode]
    fields: dict[str, Any] = {"seed": case["seed"]}
    if mode == "audio":
        fields |= {"emo_mode": "audio", "emo_audio": EMO_PROMPT, "emo_alpha": 0.8}
    served = await pcm_of(server25, text=case["text"], **fields)
    reference = np.asarray(probe["reference"][mode], dtype=np.int16)
    assert np.array_equal(served, reference), (len(served), len(reference))
    assert len(served) > 0.1 * SAMPLE_RATE and np.abs(served).max() > 0


async def test_streamed_segments_are_the_whole_and_end_in_silence_but_the_last(server25: CliServer) -> None:
    request = tts(TWO_SEGMENTS, max_tokens=20, interval_silence=300, seed=5)
    async with connect(server25) as client:
        await client.send({**request, "stream": True})
        await client.recv_json()
        await client.recv_json()
        chunks = []
        while isinstance(message := await client.recv(), bytes):
            chunks.append(decode_wav(message)[0])
        assert message["type"] == "end", message
        _, whole = await client.request(request)
    assert len(chunks) >= 2
    silence = 300 * SAMPLE_RATE // 1000
    for chunk in chunks[:-1]:
        assert not chunk[-silence:].any() and chunk[:-silence].any()
    assert np.array_equal(np.concatenate(chunks), decode_wav(whole)[0])


# --- every emo_mode, the contract's clients --------------------------------------------------------


EMOTIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "audio": {"emo_mode": "audio", "emo_audio": EMO_PROMPT, "emo_alpha": 0.8},
    "vector": {"emo_mode": "vector", "emo_vector": (0.8, 0, 0, 0, 0, 0, 0.2, 0)},
    "text": {"emo_mode": "text", "emo_text": "我太开心了！", "emo_alpha": 0.9},
}


def test_every_emotion_mode_reaches_the_gpt(probe: dict[str, Any]) -> None:
    # The emotion vector the GPT is conditioned on, per mode, for one text and voice. (The tiny
    # GPT's sampling barely moves with its conditioning, so its audio can't show this.)
    vectors = probe["emotion"]
    assert set(vectors) == set(EMOTIONS)
    for a in EMOTIONS:
        for b in EMOTIONS:
            if a < b:
                assert not np.allclose(vectors[a], vectors[b]), (a, b)


@pytest.mark.parametrize("mode", ["audio", "vector", "text"])
async def test_every_emotion_mode_is_served(server25: CliServer, mode: str) -> None:
    fields = dict(EMOTIONS[mode])
    if mode == "vector":
        fields["emo_vector"] = list(fields["emo_vector"])
    pcm = await pcm_of(server25, text="大家好，我是测试语音。", seed=3, **fields)
    assert len(pcm) > 0.1 * SAMPLE_RATE and np.abs(pcm).max() > 0


@pytest.mark.parametrize("emo_mode", ["none", "audio", "vector", "text"])
def test_the_contracts_python_client_runs_in_every_emo_mode(
    any25: CliServer, tmp_path: Path, emo_mode: str
) -> None:
    script = contract_script("Python", any25.port, tmp_path / "contract_client.py")
    code = script.read_text(encoding="utf-8")
    # The example adds each mode's own field but leaves audio mode's emo_audio out (the server
    # would rightly refuse it): it is added where the example adds the others'.
    code = code.replace(
        '        if emo_mode == "vector":',
        '        if emo_mode == "audio":\n            request["emo_audio"] = "asset/emo_prompt.wav"\n'
        '        elif emo_mode == "vector":',
    )
    code = code.replace(
        'asyncio.run(synthesize("大家好，我现在正在体验 AI 科技！"))',
        f'asyncio.run(synthesize("大家好，我现在正在体验 AI 科技！", emo_mode="{emo_mode}"))',
    )
    assert code.count(emo_mode) >= 1 and 'emo_mode="' in code
    script.write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "连接成功: 已连接到 IndexTTS WebSocket"
    assert re.fullmatch(r"任务已排队: [0-9a-f]{8}\.\.\.", lines[1])
    assert lines[2] == "开始生成音频"
    assert re.fullmatch(r"收到音频数据 \(\d{5,} 字节\)", lines[3])
    assert lines[4:] == ["生成完成"]


def test_the_contracts_javascript_client_runs_unchanged(any25: CliServer, tmp_path: Path) -> None:
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = int(node.lstrip("v").split(".")[0])
    script = contract_script("JavaScript", any25.port, tmp_path / "contract_client.js")
    flags = ["--experimental-websocket"] if major < 22 else []
    result = subprocess.run(
        ["node", *flags, "--no-warnings", str(script)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    at = 0
    for pattern in (r"连接成功", r"任务已排队: [0-9a-f-]{36}", r"开始生成音频", r"收到完整音频", r"生成完成"):
        found = re.compile(rf"^{pattern}$", re.M).search(result.stdout, at)
        assert found, f"{pattern!r} missing after offset {at}:\n{result.stdout}"
        at = found.end()


async def test_pipelined_requests_on_one_connection_get_each_tasks_replies_together_and_in_order(
    any25: CliServer,
) -> None:
    await assert_three_pipelined_in_order(any25.url)


# --- lang --------------------------------------------------------------------------------------------


def test_lang_reaches_the_models_text_front_end(probe: dict[str, Any]) -> None:
    texts = {name: " ".join(segments) for name, segments in probe["texts"].items()}
    assert (
        "HOLA" in texts["es_detected"] and "DOCE" in texts["es_detected"]
    )  # es: uppercased, numbers in Spanish
    assert "twelve" in texts["en_detected"]  # detected en: numbers in English
    assert "python" in texts["mixed_stays_zh"] and "我们" in texts["mixed_stays_zh"]  # zh reads both
    assert "مرحبا" in texts["ar_detected"]


async def test_lang_absent_is_picked_from_the_text_and_named_lang_is_used(server25: CliServer) -> None:
    auto = await pcm_of(server25, text="大家好，我是测试语音。", seed=4)
    named = await pcm_of(server25, text="大家好，我是测试语音。", seed=4, lang="ZH")
    other = await pcm_of(server25, text="大家好，我是测试语音。", seed=4, lang="en")
    assert np.array_equal(auto, named)  # Chinese text is zh; the code is case-insensitive
    assert not np.array_equal(auto, other)  # the language token reaches the GPT


async def test_an_unknown_lang_is_refused_naming_the_field(server25: CliServer) -> None:
    async with connect(server25) as client:
        error = await client.error(tts(lang="fr"))
    assert (
        error["status"] == "error" and error["message"] == "lang 必须是 zh/en/ja/es/ar 之一（不区分大小写）"
    )


# --- pronunciation markup ----------------------------------------------------------------------------


def test_pronunciation_markup_reaches_the_model_untouched(probe: dict[str, Any]) -> None:
    texts = {name: " ".join(segments) for name, segments in probe["texts"].items()}
    assert "<|SPECIAL_TOKEN_2|>XING2<|SPECIAL_TOKEN_2|>" in texts["pinyin"]
    assert "<|SPECIAL_TOKEN_1|>M IH1 . N AH0 T<|SPECIAL_TOKEN_1|>" in texts["phonemes"]
    assert "twelve" in texts["phonemes"]  # the rest is normalized as usual
    assert "じょうず" in texts["kana"] and "上手" not in texts["kana"]


async def test_markup_over_the_websocket_is_served(server25: CliServer) -> None:
    pcm = await pcm_of(server25, text="Wait a <minute|M IH1 . N AH0 T>.", lang="en", seed=2)
    plain = await pcm_of(server25, text="Wait a minute.", lang="en", seed=2)
    assert len(pcm) > 0 and not np.array_equal(pcm, plain)


# --- SSML (text_format "ssml") ----------------------------------------------------------------------


async def test_ssml_around_plain_text_is_the_librarys_own_output(server25: CliServer, probe: dict[str, Any]) -> None:
    served = await pcm_of(server25, text=f"<speak>{TWO_SEGMENTS}</speak>", text_format="ssml", seed=11)
    assert np.array_equal(served, np.asarray(probe["reference"]["none"], dtype=np.int16))


async def test_ssml_spans_are_the_librarys_own_output_with_exact_breaks(
    server25: CliServer, probe: dict[str, Any]
) -> None:
    markup = '<speak><s>今天天气很好。</s><break time="450ms"/><s>我们一起去公园散步吧。</s></speak>'
    served = await pcm_of(server25, text=markup, text_format="ssml", seed=11)
    first, second = (np.asarray(probe["reference"][name], dtype=np.int16) for name in ("first_span", "second_span"))
    silence = np.zeros(450 * SAMPLE_RATE // 1000, dtype=np.int16)
    assert np.array_equal(served, np.concatenate([first, silence, second]))


async def test_ssml_phonemes_are_the_models_own_pronunciation_markup(server25: CliServer) -> None:
    markup = '<speak>我们<phoneme alphabet="pinyin" ph="xing2">行</phoneme>走吧。</speak>'
    served = await pcm_of(server25, text=markup, text_format="ssml", lang="zh", seed=3)
    marked = await pcm_of(server25, text="我们<行|XING2>走吧。", lang="zh", seed=3)
    assert np.array_equal(served, marked)
    cmu = '<speak>Wait a <phoneme alphabet="cmu" ph="M IH1 . N AH0 T">minute</phoneme>.</speak>'
    served = await pcm_of(server25, text=cmu, text_format="ssml", lang="en", seed=2)
    assert np.array_equal(served, await pcm_of(server25, text="Wait a <minute|M IH1 . N AH0 T>.", lang="en", seed=2))


async def test_ssml_cues_show_the_word_not_its_markup(server25: CliServer) -> None:
    markup = '<speak>我们<phoneme alphabet="pinyin" ph="xing2">行</phoneme>走吧。</speak>'
    async with connect(server25) as client:
        await client.send(tts(markup, text_format="ssml", lang="zh", seed=3, timestamps=True))
        while not isinstance(end := await client.recv(), dict) or end["type"] != "end":
            pass
    shown = " ".join(cue["text"] for cue in end["cues"])
    assert "行" in shown and "XING2" not in shown and "|" not in shown


# --- speed -------------------------------------------------------------------------------------------


async def test_speed_is_the_models_duration_within_its_range_and_a_stretch_beyond(
    server25: CliServer,
) -> None:
    # One segment and one seed: the GPT's codes are the same; only the duration differs.
    lengths = {
        speed: len(await pcm_of(server25, text="大家好。", seed=6, speed=speed))
        for speed in (0.8, 1.0, 1.25, 2.0, 4.0)
    }
    assert lengths[1.25] < lengths[1.0] < lengths[0.8]
    for speed in (0.8, 1.25, 2.0):  # the model's own frames: 1.72 per code / speed, 256 samples each
        assert lengths[speed] == pytest.approx(lengths[1.0] / speed, rel=0.05)
    assert lengths[4.0] == pytest.approx(lengths[2.0] / 2, rel=0.1)  # 2x native, then 2x stretched


# --- HTTP: the openai SDK in every format, speed, the voice library ---------------------------------


async def test_the_openai_sdk_gets_every_format_and_speed_moves_the_duration(server25: CliServer) -> None:
    client = openai.OpenAI(base_url=f"{server25.http}/v1", api_key="unused", max_retries=0, timeout=300)

    def speak(response_format: Any, speed: float = 1.0, **extra: Any) -> bytes:
        response = client.audio.speech.create(
            model="tts-1", voice="alloy", input="大家好。", response_format=response_format, speed=speed,
            extra_body={"seed": 8, **extra},
        )  # fmt: skip
        return bytes(response.content)

    for response_format in ("mp3", "opus", "aac", "flac", "wav"):
        data = await trio.to_thread.run_sync(speak, response_format)
        assert len(data) > 100, response_format
        if response_format in ("mp3", "flac", "wav"):
            assert soundfile.info(io.BytesIO(data)).duration > 0.1, response_format
    pcm = np.frombuffer(
        await trio.to_thread.run_sync(partial(speak, "pcm", sample_rate=SAMPLE_RATE)), dtype="<i2"
    )
    wav = decode_wav(await trio.to_thread.run_sync(speak, "wav"))[0]
    assert np.array_equal(pcm, wav)
    faster = np.frombuffer(
        await trio.to_thread.run_sync(partial(speak, "pcm", 1.25, sample_rate=SAMPLE_RATE)), dtype="<i2"
    )
    slower = np.frombuffer(
        await trio.to_thread.run_sync(partial(speak, "pcm", 0.8, sample_rate=SAMPLE_RATE)), dtype="<i2"
    )
    assert len(faster) < len(pcm) < len(slower)
    as_ws = await pcm_of(server25, text="大家好。", seed=8, speed=1.25)
    assert np.array_equal(faster, as_ws)  # the same speed control over either port
    spanish = await trio.to_thread.run_sync(partial(speak, "pcm", lang="es", sample_rate=SAMPLE_RATE))
    assert not np.array_equal(np.frombuffer(spanish, dtype="<i2"), pcm)  # lang as an extra body field


async def test_the_http_api_lists_and_accepts_the_25_model_id(server25: CliServer) -> None:
    async with httpx.AsyncClient(timeout=300) as http:
        listed = (await http.get(f"{server25.http}/v1/models")).json()
        assert [model["id"] for model in listed["data"]][:2] == ["indextts-2.5", "indextts2"]
        body = {"input": "大家好。", "voice": "alloy", "response_format": "wav", "seed": 8}
        own = await http.post(f"{server25.http}/v1/audio/speech", json={**body, "model": "indextts-2.5"})
        old = await http.post(f"{server25.http}/v1/audio/speech", json={**body, "model": "indextts2"})
    assert own.status_code == old.status_code == 200
    assert own.content == old.content  # one model behind either id


async def test_an_uploaded_voice_speaks_on_25(server25: CliServer) -> None:
    source = REPO / EMO_PROMPT

    def upload() -> None:
        with httpx.Client(timeout=60) as http:
            reply = http.post(
                f"{server25.http}/v1/audio/voices",
                data={"name": "二点五"},
                files={"audio_sample": (source.name, source.read_bytes())},
            )
        assert reply.status_code == 201, reply.text

    await trio.to_thread.run_sync(upload)
    async with connect(server25) as ws:
        by_name = tts("大家好。", voice="二点五", seed=3)
        del by_name["prompt_audio"]
        _, named = await ws.request(by_name)
        _, by_path = await ws.request(tts("大家好。", prompt_audio=EMO_PROMPT, seed=3))
    assert np.array_equal(decode_wav(named)[0], decode_wav(by_path)[0])


# --- --batch-size N: rows advanced together ----------------------------------------------------------

BATCH_PROBE = r"""
import json, os, shutil, sys
import numpy as np, torch
from indextts_server.core.config import EngineOptions
from indextts_server.core.engine import SynthesisJob
from indextts_server.io.engines import indextts25 as module
from indextts_server.io.engines.indextts25 import IndexTTS25Engine
from tests.batched_rows import DecodeSpy, retried_alone, run_rows, seeded_in_a_batch

model_dir, steps, tmp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
engine = IndexTTS25Engine(EngineOptions(model_dir=model_dir, max_mel_tokens=16, diffusion_steps=steps), "cpu")
gpt = engine._model.gpt
def stop_bias(value):  # the tiny GPT never stops (bias -1e4); near 0 it stops early for some inputs
    with torch.no_grad():
        gpt.mel_head.bias[int(gpt.stop_mel_token)] = value
stop_bias(0.25)
spy = DecodeSpy(module)
shared = []  # rows per call of the later stages
real_speak = module.speak
module.speak = lambda model, works, codes, steps: shared.append(len(works)) or real_speak(model, works, codes, steps)
voice = os.path.join(tmp, "voice.wav")
shutil.copy("asset/emo_prompt.wav", voice)
jobs = [  # different voices, emotion inputs, languages, speeds and lengths; four segments and one
    SynthesisJob(text="今天天气很好。我们一起去公园散步吧。", prompt_audio="asset/zero_shot_prompt.wav", max_tokens=20, lang="zh"),
    SynthesisJob(text="我们一起去公园散步吧。", prompt_audio=voice, emo_mode="vector", emo_vector=(0, .5, 0, 0, 0, 0, .3, 0),
                 speed=0.8, lang="zh"),
    SynthesisJob(text="Hello there, how are you today?", prompt_audio="asset/zero_shot_prompt.wav", emo_mode="audio",
                 emo_audio="asset/emo_prompt.wav", emo_alpha=0.6, speed=1.25, lang="en"),
    SynthesisJob(text="大家好。", prompt_audio="asset/zero_shot_prompt.wav", lang="zh"),
    SynthesisJob(text="大家好。", prompt_audio="asset/zero_shot_prompt.wav", emo_mode="text", emo_text="我太开心了！"),
]
engine.deterministic = True
alone = [run_rows(engine, [job], spy) for job in jobs]

# The library's own path, decoding greedily: the codes it generates per segment.
library_codes = []
infer = gpt.inference_speech
def seen(*args, **kwargs):
    out = infer(*args, **kwargs)
    codes = out[0].tolist()
    library_codes[-1].append(codes[: codes.index(gpt.stop_mel_token)] if gpt.stop_mel_token in codes else codes)
    return out
gpt.inference_speech = seen
def greedy(job):
    row = engine.synthesize(job)
    row._kwargs["do_sample"] = False
    return row
for job in jobs:
    library_codes.append([])
    list(greedy(job))
gpt.inference_speech = infer
shared.clear()
together, codes, _ = run_rows(engine, jobs, spy)
n = len(jobs)
report = {
    "first_lengths": [len(alone[i][1][0][0]) for i in range(n)],
    "steps": [len(alone[i][1][0]) for i in range(n)],
    "codes_equal": [codes[i] == alone[i][1][0] for i in range(n)],
    "library_equal": [library_codes[i] == alone[i][1][0] for i in range(n)],
    "max_diff": [int(np.abs(together[i].astype(int) - alone[i][0][0].astype(int)).max()) for i in range(n)],
    "most_shared": max(shared),
}

# Out of memory in the batched decode: split until it fits, never failed.
spy.raising_when_batched(torch.OutOfMemoryError("CUDA out of memory (simulated)"))
split, _, _ = run_rows(engine, jobs, spy)
report["oom_split_equal"] = [bool(np.array_equal(split[i], alone[i][0][0])) for i in range(n)]

# A batched stage that fails: each row alone, before failing any; a broken prompt fails only its row.
report.update(retried_alone(engine, spy, jobs[:2], alone[0][0][0]))

# A seeded row in a batch of sampled rows: advanced alone, as at batch size 1.
engine.deterministic = False
seeded = SynthesisJob(text="今天天气很好。我们去公园吧。", prompt_audio="asset/zero_shot_prompt.wav", max_tokens=20, seed=7)
report["seeded_equal"] = seeded_in_a_batch(engine, spy, seeded, [jobs[2], jobs[4]])

# Segments whose GPT stops at once are skipped, as the library skips them: the same segments
# (texts, lengths, last) batched as one at a time (both decoding greedily).
stop_bias(0.75)
engine.deterministic = True
empty = [jobs[0], jobs[2], SynthesisJob(text="Hello.", prompt_audio="asset/zero_shot_prompt.wav", lang="en")]
def shape(segments):
    return [(segment.text, len(segment.pcm), segment.last) for segment in segments]
one_at_a_time = [shape(greedy(job)) for job in empty]
mark = len(spy.calls)
rows = [engine.synthesize(job) for job in empty]
batched = [[] for _ in rows]
live = list(range(len(rows)))
while live:
    outcomes = engine.advance([rows[i] for i in live])
    for i, outcome in zip(live, outcomes):
        batched[i].append(outcome)
    live = [i for i, o in zip(live, outcomes) if o is not None and not isinstance(o, BaseException) and not o.last]
report["skipped"] = [shape(b) == a for a, b in zip(one_at_a_time, batched)]
report["empty_segments"] = sum(1 for call in spy.calls[mark:] for code in call if not code)
print(json.dumps(report))
"""

AUDIO_TOLERANCE = 64
"""int16 steps (2^-9 of full scale, -54 dBFS) by which a row's samples may differ from the row
run alone with the same codes and noise: rows of one shape share the codec, length regulator,
CFM and BigVGAN, whose batched matrix products may sum in another order (measured here: 0; the
bound is IndexTTS-2's, whose batched passes were measured at most 5)."""


def test_batched_rows_decode_the_codes_they_decode_alone_and_seeded_rows_stay_reproducible(
    model25: Path, env25: dict[str, str], server25: CliServer, tmp_path: Path
) -> None:
    # After server25: the server's warm-up has filled the normalizers' cache this probe reads.
    result = subprocess.run(
        [sys.executable, "-c", BATCH_PROBE, str(model25), str(DIFFUSION_STEPS), str(tmp_path)],
        cwd=REPO, env=env25, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # The rows really differ in length: padding and per-row stop are exercised.
    assert len(set(report["first_lengths"])) > 1 and report["steps"][0] > 1, report
    assert report["codes_equal"] == [True] * 5, report
    # Alone, a batched row decodes what the library's own path decodes (both greedy here).
    assert report["library_equal"] == [True] * 5, report
    assert report["most_shared"] > 1, report  # some rows shared the later stages
    assert all(diff <= AUDIO_TOLERANCE for diff in report["max_diff"]), report["max_diff"]
    assert report["oom_split_equal"] == [True] * 5
    # The batch failed; alone, the first row spoke and the row whose prompt broke failed by itself.
    assert report["retried"] == ["Segment", "SynthesisError"]
    assert report["retried_first_equal"]
    assert report["seeded_equal"]
    assert report["empty_segments"] > 0 and report["skipped"] == [True] * 3, report


LONG = TWO_SEGMENTS * 12  # 24 segments at max_tokens 20: still running when the others are done


async def test_at_batch_size_8_rows_of_every_kind_are_served_and_cancel_and_disconnect_end_only_their_own(
    server25: CliServer, batch25: CliServer
) -> None:
    seeded = tts(TWO_SEGMENTS, max_tokens=20, seed=11)
    reference = await pcm_of(server25, **seeded)  # served one at a time
    pcm: dict[str, np.ndarray] = {}
    gone: list[str] = []

    async def speak(name: str, request: dict[str, Any]) -> None:
        async with connect(batch25) as client:
            pcm[name] = decode_wav((await client.request(request))[1])[0]

    async def cancel_mid_task() -> None:
        async with connect(batch25) as client:
            await client.send(tts(LONG, max_tokens=20))
            task_id = (await client.recv_json())["task_id"]
            assert await client.recv_json() == client.reply("start", task_id)
            await client.send({"type": "cancel", "task_id": task_id})
            assert (await client.recv_json())["status"] == "cancelling"
            assert await client.recv_json() == client.error_reply("任务已取消", task_id)

    async def disconnect_mid_task() -> None:
        async with connect(batch25) as client:
            await client.send(tts(LONG, max_tokens=20))
            task_id = (await client.recv_json())["task_id"]
            assert await client.recv_json() == client.reply("start", task_id)
            gone.append(task_id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(speak, "seeded", seeded)
        nursery.start_soon(
            speak,
            "vector",
            tts(TWO_SEGMENTS, max_tokens=20, emo_mode="vector", emo_vector=[0, 0.6, 0, 0, 0, 0, 0, 0]),
        )
        nursery.start_soon(
            speak,
            "other voice, en, faster",
            tts("Hello there, a second voice.", prompt_audio=EMO_PROMPT, lang="en", speed=1.25),
        )
        nursery.start_soon(
            speak,
            "text emotion, slower",
            tts("大家好。", emo_mode="text", emo_text="我太开心了！", speed=0.8),
        )
        nursery.start_soon(speak, "stretched", tts("大家好。", speed=4.0))
        nursery.start_soon(cancel_mid_task)
        nursery.start_soon(disconnect_mid_task)
    assert np.array_equal(
        pcm["seeded"], reference
    )  # a seeded row runs alone: the same audio at any batch size
    for name, audio in pcm.items():
        assert len(audio) > 0.1 * SAMPLE_RATE and np.abs(audio).max() > 0, name
    # The disconnected client's task ended as cancelled, freeing its row.
    await wait_until(
        lambda: re.search(rf"task cancelled session=\S+ task={gone[0]}", batch25.text) is not None
    )


async def test_at_batch_size_8_a_timeout_fails_only_its_row_and_sigterm_lets_the_running_rows_finish(
    model25: Path, env25: dict[str, str], server25: CliServer
) -> None:
    # After server25: its warm-up has filled the normalizers' cache this server reads.
    server = CliServer(
        cli_args(model25, "--batch-size", "8", "--task-timeout", "4", "--port", "0"), env=env25
    )
    try:
        async with connect(server) as slow, connect(server) as quick:
            await slow.send(tts(TWO_SEGMENTS * 40, max_tokens=20))  # 80 segments: far past 4 s
            slow_id = (await slow.recv_json())["task_id"]
            assert await slow.recv_json() == slow.reply("start", slow_id)
            _, wav = await quick.request(tts("大家好。"))  # joins the slow row's batch, done in time
            assert await slow.recv_json() == slow.error_reply(task_timed_out(4), slow_id)
        assert len(decode_wav(wav)[0]) > 0.1 * SAMPLE_RATE
        async with connect(server) as client:
            await client.send(tts(TWO_SEGMENTS * 3, max_tokens=20))
            task_id = (await client.recv_json())["task_id"]
            assert await client.recv_json() == client.reply("start", task_id)
            server.process.send_signal(signal.SIGTERM)
            assert isinstance(await client.recv(), bytes)  # the running row finishes
            assert await client.recv_json() == client.reply("end", task_id)
        assert await trio.to_thread.run_sync(server.process.wait, 60) == 0
        assert "SIGTERM received; draining" in server.text
    finally:
        server.stop(timeout=60)


# --- what it can do, declared; and a cluster of its workers ------------------------------------------


def test_it_declares_ja_only_with_its_segmenter_and_text_emotion_only_with_its_emotion_model() -> None:
    from indextts_server.io.engines.indextts25 import capabilities25

    full = capabilities25(emotion_model=True, japanese=True)
    assert (full.model, full.langs, full.missing_tokenizers, full.detects_lang) == (
        "IndexTTS-2.5",
        ("zh", "en", "ja", "es", "ar"),
        (),
        True,
    )
    assert (full.emo_modes, full.emotion_model, full.speed) == (
        ("none", "audio", "vector", "text"),
        True,
        (0.25, 4.0),
    )
    bare = capabilities25(emotion_model=False, japanese=False)
    assert (bare.missing_tokenizers, bare.emo_modes, bare.emotion_model) == (
        ("ja",),
        ("none", "audio", "vector"),
        False,
    )


HIDE_JAPANESE = (
    "import runpy, sys; sys.modules['fugashi'] = None; "  # as if indextts25-inference[ja] were not installed
    "runpy.run_module('indextts_server', run_name='__main__', alter_sys=True)"
)


@pytest.fixture
def bare25(model25: Path, tmp_path: Path) -> Path:
    """The tiny 2.5 directory without its emotion model (its other files linked)."""
    bare = tmp_path / "bare25"
    bare.mkdir()
    for entry in model25.iterdir():
        if entry.name != QWEN_DIR:
            (bare / entry.name).symlink_to(entry)
    return bare


async def test_a_gateway_serves_its_indextts25_workers_model_and_refuses_what_they_cannot_do(
    fleet: Callable[..., Node],  # noqa: F811 - the fixture imported above
    bare25: Path,
    env25: dict[str, str],
) -> None:
    fleet("worker", *cli_args(bare25), env=env25, launcher=("-c", HIDE_JAPANESE))
    gateway = fleet("gateway", "--http-port", "0")
    assert re.search(r"listening on ws://\S+ \(engine indextts25\)", gateway.text)
    learned = "fleet engine indextts25 (IndexTTS-2.5): lang zh/en/es/ar, emo_mode none/audio/vector"
    assert learned in gateway.text

    def models() -> list[str]:
        return [model["id"] for model in httpx.get(f"{gateway.http}/v1/models", timeout=10).json()["data"]]

    def speak(**fields: Any) -> httpx.Response:
        body = {"model": "indextts-2.5", "input": "大家好。", "response_format": "wav", "stream": False}
        return httpx.post(f"{gateway.http}/v1/audio/speech", json={**body, **fields}, timeout=120)

    assert (await trio.to_thread.run_sync(models))[0] == "indextts-2.5"
    spoken = await trio.to_thread.run_sync(speak)
    assert spoken.status_code == 200, spoken.text
    assert len(decode_wav(spoken.content)[0]) > 0
    refused = await trio.to_thread.run_sync(partial(speak, lang="ja"))
    assert (refused.status_code, refused.json()["error"]["param"]) == (400, "lang")
    async with gateway.connect() as client:
        no_ja = "lang 暂不可用: ja（IndexTTS-2.5 缺少该语言的分词器，请联系服务器管理员安装）"
        assert await client.error(tts("今日は。")) == client.error_reply(no_ja)  # ja picked from the text
        no_emotion = "emo_mode 不支持: text（IndexTTS-2.5 未加载情感模型 qwen0.6bemo4-merge/）"
        assert await client.error(tts(emo_mode="text", emo_text="开心")) == client.error_reply(no_emotion)


def test_livekit_speaks_english_and_chinese_on_indextts25_with_timed_words(server25: CliServer) -> None:
    """Voice agents (docs/voice-agents.md) on the other model family: the client's words, timed in
    order inside the audio."""
    for text, lang in (("Hello there. How are you?", "en"), ("今天天气很好。我们去散步吧。", "zh")):
        audio, words, rate = asyncio.run(livekit_speak(server25.http, text, language=lang, sample_rate=16000))
        assert rate == 16000 and audio
        assert "".join(words).replace(" ", "") == text.replace(" ", "")
        times = [(w.start_time, w.end_time) for w in words]
        assert all(0 <= a <= b <= len(audio) / 2 / 16000 + 0.001 for a, b in times)
        assert all(x[1] <= y[0] + 1e-6 for x, y in itertools.pairwise(times))
