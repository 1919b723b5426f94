"""The real IndexTTS-2.5 engine, end to end: a tiny random-weight model directory behind the real server.

The directory is built once per test run from ``indextts25``'s own classes; the server is started
from the CLI on it (the family is detected from its files) and driven over WebSocket and HTTP.
Random weights rarely emit the stop token, so generation is capped with ``--max-mel-tokens``.

The text normalizers compile their grammars on first use (about 2-5 minutes together on a slow
machine); ``XDG_CACHE_HOME`` points them at a cache under ``~/.cache`` keyed by the package
versions, so later runs load them in seconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

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
from indextts_server.devtools.tiny_checkpoint25 import build_tiny_checkpoint25

from .conftest import CLIENT_MAX_MESSAGE, EMO_PROMPT, PROMPT, REPO, Client, CliServer, decode_wav, tts
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
    server25: CliServer, tmp_path: Path, emo_mode: str
) -> None:
    script = contract_script("Python", server25.port, tmp_path / "contract_client.py")
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


def test_the_contracts_javascript_client_runs_unchanged(server25: CliServer, tmp_path: Path) -> None:
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = int(node.lstrip("v").split(".")[0])
    script = contract_script("JavaScript", server25.port, tmp_path / "contract_client.js")
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
