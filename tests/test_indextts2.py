"""The real IndexTTS2 engine, end to end: a tiny random-weight checkpoint behind the real server.

The checkpoint is built once per test run from the package's own model classes; the server is
started from the CLI (`--engine indextts2 --device cpu`) and driven over WebSocket. Random weights
never emit the stop token, so generation is capped with `--max-mel-tokens`.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
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
# Outside the light mode the real engine is part of what is tested: without torch or indextts
# these imports fail the run instead of skipping it.
import indextts  # type: ignore[import-untyped]  # noqa: F401 - untyped package, imported to fail early
import torch  # noqa: F401
from pipecat.frames.frames import ErrorFrame, TTSAudioRawFrame, TTSTextFrame
from trio_websocket import open_websocket_url
from wyoming.audio import AudioStart
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from indextts_server.core.engine import SAMPLE_RATE
from indextts_server.devtools.tiny_checkpoint import (
    TinyCheckpoint,
    build_tiny_checkpoint,
    offline_env,
)

from .conftest import (
    CLIENT_MAX_MESSAGE,
    EMO_PROMPT,
    REPO,
    Client,
    CliServer,
    assert_three_pipelined_in_order,
    decode_wav,
    tts,
)
from .test_agent_clients import livekit_speak, pipecat_run, pipecat_tts, turn
from .test_contract_clients import assert_contract_javascript_client_runs, assert_contract_python_client_runs
from .test_timestamps import assert_cues_fit_the_audio, srt_spans
from .test_wyoming import audio, error_text, exchange, types

MAX_MEL_TOKENS = 24
pytestmark = pytest.mark.timeout(900)  # a slow machine loads and runs the model slowly
START_TIMEOUT = 300  # the very first load compiles the text normaliser's grammars (~35 s)
SEGMENTS = "今天天气很好。我们一起去公园散步吧。春眠不觉晓，处处闻啼鸟。"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    began = time.monotonic()
    checkpoint = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-indextts2"))
    print(f"\ntiny checkpoint built in {time.monotonic() - began:.1f} s", file=sys.stderr)
    return checkpoint


def cli_args(tiny: TinyCheckpoint, *extra: str) -> list[str]:
    return [
        "-m", "indextts_server", "--engine", "indextts2", "--model-dir", str(tiny.model_dir),
        "--cfg-path", str(tiny.cfg_path), "--host", "127.0.0.1", "--port", "0", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def engine_server(tiny: TinyCheckpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    began = time.monotonic()
    voices = tmp_path_factory.mktemp("voices")
    server = CliServer(
        cli_args(
            tiny,
            "--device",
            "cpu",
            "--max-mel-tokens",
            str(MAX_MEL_TOKENS),
            "--voices-dir",
            str(voices),
            "--wyoming-port",
            "0",
        )[2:],
        env={**os.environ, **offline_env(tiny)},
    )
    print(f"real server ready in {time.monotonic() - began:.1f} s", file=sys.stderr)
    try:
        yield server
    finally:
        server.stop(timeout=60)


@pytest.fixture(scope="session")
def batch_server(tiny: TinyCheckpoint) -> Iterator[CliServer]:
    """The same model served with ``--batch-size 8``."""
    args = cli_args(tiny, "--device", "cpu", "--max-mel-tokens", str(MAX_MEL_TOKENS), "--batch-size", "8")
    server = CliServer(args[2:], env={**os.environ, **offline_env(tiny)})
    try:
        yield server
    finally:
        server.stop(timeout=60)


@pytest.fixture(params=["1", "8"], ids=["batch-size-1", "batch-size-8"])
def any_server(request: pytest.FixtureRequest) -> CliServer:
    """The tiny IndexTTS-2 server at the contract's batch size 1, then at 8."""
    return cast(
        CliServer, request.getfixturevalue("engine_server" if request.param == "1" else "batch_server")
    )


@asynccontextmanager
async def connect(server: CliServer) -> AsyncIterator[Client]:
    async with open_websocket_url(server.url, max_message_size=CLIENT_MAX_MESSAGE) as ws:
        yield Client(ws, json.loads(await ws.get_message()))


def test_start_up_logs_load_and_warm_up_times_before_listening(engine_server: CliServer) -> None:
    text = engine_server.text
    load = text.index("model loaded on cpu in")
    warm = text.index("warm-up on cpu took")
    assert load < warm < text.index("listening on ws://")


def test_a_model_on_the_cpu_sets_and_logs_torch_threads_before_loading(engine_server: CliServer) -> None:
    text = engine_server.text
    assert "torch CPU threads: " in text
    assert text.index("torch CPU threads") < text.index("model loaded on cpu in")


@pytest.mark.parametrize(
    "fields",
    [
        {"emo_mode": "audio", "emo_audio": EMO_PROMPT, "emo_alpha": 0.8},
        {"emo_mode": "vector", "emo_vector": [0.8, 0, 0, 0, 0, 0, 0.2, 0]},
        {"emo_mode": "text", "emo_text": "我太开心了！", "emo_alpha": 0.9},
    ],
    ids=["audio", "vector", "text"],
)
async def test_every_emotion_mode_reaches_the_model(engine_server: CliServer, fields: dict[str, Any]) -> None:
    # With one seed, the only difference from mode none is the emotion input: if it never
    # reached the model, the audio would be the same.
    async with connect(engine_server) as client:
        _, none = await client.request(tts("大家好，我是测试语音。", emo_mode="none", seed=3))
        _, wav = await client.request(tts("大家好，我是测试语音。", seed=3, **fields))
    pcm, rate, info = decode_wav(wav)
    assert (rate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    assert len(pcm) > 0.1 * SAMPLE_RATE and np.abs(pcm).max() > 0
    assert wav != none


def test_emo_vector_is_damped_per_emotion_then_capped_at_0_8_in_sum() -> None:
    from indextts_server.io.engines.indextts2 import EMO_BIAS, normalize_emo_vector

    # Below the cap only the per-emotion bias applies (happy 0.9375, calm 0.5625).
    assert normalize_emo_vector([0.4, 0, 0, 0, 0, 0, 0, 0.4]) == pytest.approx(
        [0.375, 0, 0, 0, 0, 0, 0, 0.225]
    )
    # Above it, everything is scaled so the weights sum to 0.8, in proportion.
    capped = normalize_emo_vector([1.0] * 8)
    assert sum(capped) == pytest.approx(0.8)
    assert capped == pytest.approx([0.8 * b / sum(EMO_BIAS) for b in EMO_BIAS])
    assert normalize_emo_vector([0.0] * 8) == [0.0] * 8
    with pytest.raises(ValueError):
        normalize_emo_vector([0.5] * 7)


async def test_long_text_becomes_several_segments_with_the_interval_silence(
    engine_server: CliServer,
) -> None:
    async with connect(engine_server) as client:
        await client.send(tts(SEGMENTS, max_tokens=20, interval_silence=300, stream=True, seed=1))
        await client.recv_json()
        await client.recv_json()
        chunks = []
        while True:
            message = await client.recv()
            if isinstance(message, bytes):
                chunks.append(decode_wav(message)[0])
            else:
                assert message["type"] == "end", message
                break
        _, whole = await client.request(tts(SEGMENTS, max_tokens=20, interval_silence=300, seed=1))
    assert len(chunks) >= 3
    silence = 300 * SAMPLE_RATE // 1000
    for chunk in chunks[:-1]:
        assert not chunk[-silence:].any() and chunk[:-silence].any()
    assert np.array_equal(np.concatenate(chunks), decode_wav(whole)[0])


async def test_cues_match_the_real_models_segments_within_10_ms(engine_server: CliServer) -> None:
    request = tts(SEGMENTS, max_tokens=20, interval_silence=300, stream=True, seed=1, timestamps=True)
    async with connect(engine_server) as client:
        await client.send(request)
        task_id = (await client.recv_json())["task_id"]
        await client.recv_json()  # start
        cues, chunks = [], []
        while (message := await client.recv_json())["type"] == "cue":
            cues.append(message)
            chunks.append(decode_wav(await client.recv_audio())[0])
        assert message["type"] == "end" and len(message["cues"]) == len(cues) >= 3
    pcm = np.concatenate(chunks)
    # The pauses are the model's own silence: exact zeros, between one cue's end and the next's start.
    spans = [(cue["start"], cue["start"] + cue["duration"]) for cue in cues]
    assert_cues_fit_the_audio(spans, pcm, SAMPLE_RATE, level=0)
    at = 0
    for cue, chunk in zip(cues, chunks, strict=True):
        assert abs(cue["start"] - at / SAMPLE_RATE) <= 0.010
        at += len(chunk)
    # The same cues as SRT over HTTP (those with text: the engine says what each segment read).
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(f"{engine_server.http}/v1/tasks/{task_id}/subtitles.srt")
    assert response.status_code == 200
    written = [
        edge for cue in cues if cue["text"].strip() for edge in (cue["start"], cue["start"] + cue["duration"])
    ]
    read = [edge for start, end, _ in srt_spans(response.text) for edge in (start, end)]
    assert len(written) == 2 * len(cues)  # every real segment says what it read
    assert read == pytest.approx(written, abs=0.001)


async def test_ssml_spans_are_the_engines_plain_output_with_exact_breaks(engine_server: CliServer) -> None:
    markup = '<speak><s>今天天气很好。</s><break time="450ms"/><s>我们一起去公园散步吧。</s></speak>'
    async with connect(engine_server) as client:
        _, marked = await client.request(tts(markup, text_format="ssml", seed=4))
        _, first = await client.request(tts("今天天气很好。", seed=4))
        _, second = await client.request(tts("我们一起去公园散步吧。", seed=4))
        _, around = await client.request(tts("<speak>今天天气很好。</speak>", text_format="ssml", seed=4))
    silence = np.zeros(450 * SAMPLE_RATE // 1000, dtype=np.int16)
    expected = np.concatenate([decode_wav(first)[0], silence, decode_wav(second)[0]])
    assert np.array_equal(decode_wav(marked)[0], expected)
    assert around == first  # SSML around plain text changes nothing


async def test_at_batch_size_8_ssml_spans_share_the_batched_steps_with_exact_breaks(
    batch_server: CliServer,
) -> None:
    markup = '<speak><s>今天天气很好。</s><break time="600ms"/><s>我们一起去公园散步吧。</s></speak>'
    wavs: list[bytes] = []

    async def speak(request: dict[str, Any]) -> None:
        async with connect(batch_server) as client:
            wavs.append((await client.request(request))[1])

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(speak, tts(markup, text_format="ssml"))
            nursery.start_soon(speak, tts(SEGMENTS, max_tokens=20))
    for wav in wavs:
        pcm, rate, _ = decode_wav(wav)
        assert rate == SAMPLE_RATE and np.abs(pcm).max() > 0
    breaks = 0
    for wav in wavs:
        zero = np.concatenate([[0], (decode_wav(wav)[0] == 0).astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(zero))
        runs = zip(edges[::2], edges[1::2], strict=True)
        breaks += any(end - start >= 600 * SAMPLE_RATE // 1000 for start, end in runs)
    assert breaks == 3  # each SSML task holds its break, whatever ran beside it


async def test_ssml_pinyin_is_the_tone_numbered_pinyin_the_model_reads(engine_server: CliServer) -> None:
    markup = '<speak>我们<phoneme alphabet="pinyin" ph="xing2">行</phoneme>走吧。</speak>'
    async with connect(engine_server) as client:
        _, marked = await client.request(tts(markup, text_format="ssml", seed=3))
        _, pinyin = await client.request(tts("我们XING2走吧。", seed=3))
        await client.send(tts(markup, text_format="ssml", seed=3, timestamps=True))
        while not isinstance(end := await client.recv(), dict) or end["type"] != "end":
            pass
    assert marked == pinyin
    shown = " ".join(cue["text"] for cue in end["cues"])
    assert "行" in shown and "XING2" not in shown.upper()  # the cue shows the word, not the pinyin


async def test_seed_makes_identical_requests_identical(engine_server: CliServer) -> None:
    async with connect(engine_server) as client:
        _, a = await client.request(tts("同样的请求。", seed=42))
        _, b = await client.request(tts("同样的请求。", seed=42))
        _, c = await client.request(tts("同样的请求。"))
        _, d = await client.request(tts("同样的请求。"))
    assert a == b
    assert c != d  # the model samples: without a seed, two runs differ


async def test_an_unusable_prompt_fails_only_its_own_task(engine_server: CliServer, tmp_path: Path) -> None:
    # Decodable audio (so it is accepted) that the model cannot condition on: 3 samples.
    tiny_prompt = REPO / "tests" / ".tiny_prompt.wav"
    soundfile.write(tiny_prompt, np.zeros(3, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16")
    try:
        async with connect(engine_server) as client:
            await client.send(tts("这个会失败。", prompt_audio=str(tiny_prompt)))
            task_id = (await client.recv_json())["task_id"]
            await client.recv_json()
            error = await client.recv_json()
            assert error["status"] == "error" and error["task_id"] == task_id
            assert error["message"].startswith("音频生成失败: ")
            await client.send({"type": "task_status", "task_id": task_id})
            assert (await client.recv_json())["status"] == "failed"
            await client.request(tts("下一个照常。"))
    finally:
        tiny_prompt.unlink()


async def test_a_client_leaving_mid_task_does_not_block_the_next(
    engine_server: CliServer,
) -> None:
    async with connect(engine_server) as leaver:
        await leaver.send(tts(SEGMENTS * 3, max_tokens=20))
        task_id = (await leaver.recv_json())["task_id"]
        assert (await leaver.recv_json())["type"] == "start"
    async with connect(engine_server) as client:
        await client.request(tts("我不用等很久。"))
        await client.send({"type": "task_status", "task_id": task_id})
        assert (await client.recv_json())["status"] == "cancelled"


def _load_failure(tiny: TinyCheckpoint, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, *cli_args(tiny, *args)], cwd=REPO, env={**os.environ, **offline_env(tiny)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    return result.stderr


def test_missing_model_directory_exits_with_a_hint(tiny: TinyCheckpoint, tmp_path: Path) -> None:
    stderr = _load_failure(tiny, "--device", "cpu", "--model-dir", str(tmp_path / "nope"))
    assert f"模型加载失败: 模型目录不存在: {tmp_path / 'nope'}" in stderr
    assert "hf download IndexTeam/IndexTTS-2" in stderr


def test_missing_config_exits_with_a_hint(tiny: TinyCheckpoint, tmp_path: Path) -> None:
    stderr = _load_failure(tiny, "--device", "cpu", "--cfg-path", str(tmp_path / "none.yaml"))
    assert f"模型加载失败: 配置文件不存在: {tmp_path / 'none.yaml'}" in stderr


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="this machine has CUDA: --device cuda would load"
)
def test_cuda_without_cuda_exits_with_the_cpu_hint(tiny: TinyCheckpoint) -> None:
    stderr = _load_failure(tiny, "--device", "cuda")
    assert "模型加载失败: " in stderr and "--device cpu" in stderr


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="this machine has CUDA: --device auto would pick it"
)
def test_device_auto_without_cuda_serves_on_the_cpu_and_says_once_that_it_is_slow(
    tiny: TinyCheckpoint,
) -> None:
    server = CliServer(
        cli_args(tiny, "--device", "auto", "--max-mel-tokens", str(MAX_MEL_TOKENS))[2:],
        env={**os.environ, **offline_env(tiny)},
    )
    try:
        text = server.text
    finally:
        server.stop(timeout=60)
    assert text.count("no CUDA device here, running IndexTTS2 on the CPU, which is slow") == 1
    assert text.index("model loaded on cpu in") < text.index("listening on ws://")


def test_download_offline_fails_with_the_same_clear_error(tiny: TinyCheckpoint, tmp_path: Path) -> None:
    model_dir = tmp_path / "IndexTTS-2"
    stderr = _load_failure(
        tiny,
        "--device",
        "cpu",
        "--download",
        "--model-dir",
        str(model_dir),
        "--cfg-path",
        str(model_dir / "config.yaml"),
    )
    assert "模型加载失败: 下载 IndexTeam/IndexTTS-2 失败" in stderr


def run_probe(tiny: TinyCheckpoint, script: str, *args: str) -> Any:
    """Run ``script`` with the checkpoint's model_dir, cfg_path and ``args``; its last line as JSON."""
    result = subprocess.run(
        [sys.executable, "-c", script, str(tiny.model_dir), str(tiny.cfg_path), *args],
        cwd=REPO,
        env={**os.environ, **offline_env(tiny)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


CACHE_PROBE = r"""
import json, shutil, sys
import numpy as np
from indextts_server.core.engine import SynthesisJob
from indextts_server.core.config import EngineOptions
from indextts_server.io.engines.indextts2 import IndexTTS2Engine

model_dir, cfg_path, work = sys.argv[1:4]
a, b = f"{work}/a.wav", f"{work}/b.wav"
shutil.copy("asset/zero_shot_prompt.wav", a)
shutil.copy("asset/emo_prompt.wav", b)
engine = IndexTTS2Engine(
    EngineOptions(model_dir=model_dir, cfg_path=cfg_path, max_mel_tokens=12, speaker_cache=4), "cpu"
)

def say(prompt):
    job = SynthesisJob(text="你好。", prompt_audio=prompt, seed=5)
    return np.concatenate([segment.pcm for segment in engine.synthesize(job)])

first_a, first_b, again_a, again_b = say(a), say(b), say(a), say(b)
hits_after_alternating = engine.cache_hits
shutil.copy("asset/emo_prompt.wav", a)  # same path, new content
edited_a = say(a)
print(json.dumps({
    "hits_after_alternating": hits_after_alternating,
    "a_repeats": bool(np.array_equal(first_a, again_a)),
    "b_repeats": bool(np.array_equal(first_b, again_b)),
    "edited_differs": not np.array_equal(edited_a, first_a),
    "edited_matches_b": bool(np.array_equal(edited_a, first_b)),
}))
"""


def test_speaker_cache_restores_alternating_voices_and_never_serves_an_edited_file_stale(
    tiny: TinyCheckpoint, tmp_path: Path
) -> None:
    report = run_probe(tiny, CACHE_PROBE, str(tmp_path))
    # A, B, A, B: the second A and B restore both conditionings (speaker and emotion) = 4 hits.
    assert report == {
        "hits_after_alternating": 4,
        "a_repeats": True,
        "b_repeats": True,
        "edited_differs": True,
        "edited_matches_b": True,
    }


TWO_ENGINES_PROBE = r"""
import json, sys, threading
import numpy as np
from indextts_server.core.engine import SynthesisJob
from indextts_server.core.config import EngineOptions
from indextts_server.io.engines.indextts2 import IndexTTS2Engine

model_dir, cfg_path = sys.argv[1:3]
options = EngineOptions(model_dir=model_dir, cfg_path=cfg_path, max_mel_tokens=16)
first, second = (IndexTTS2Engine(options, "cpu") for _ in range(2))
text = "今天天气很好。我们一起去公园散步吧。春眠不觉晓。"
seeded = SynthesisJob(text=text, prompt_audio="asset/zero_shot_prompt.wav", max_tokens=20, seed=7)
other = SynthesisJob(text=text, prompt_audio="asset/emo_prompt.wav", max_tokens=20, seed=8)
unseeded = SynthesisJob(text=text, prompt_audio="asset/emo_prompt.wav", max_tokens=20)

def say(engine, job):
    return np.concatenate([segment.pcm for segment in engine.synthesize(job)])

def together(a, b):
    out, start = {}, threading.Barrier(2)
    def run(key, engine, job):
        start.wait()
        out[key] = say(engine, job)
    threads = [threading.Thread(target=run, args=a), threading.Thread(target=run, args=b)]
    for t in threads: t.start()
    for t in threads: t.join()
    return out

alone = {"seeded": say(first, seeded), "other": say(second, other)}
rounds = [together(("seeded", first, seeded), ("other", second, other)) for _ in range(2)]
rounds += [together(("seeded", first, seeded), ("unseeded", second, unseeded)) for _ in range(2)]
print(json.dumps({
    "seeded": [bool(np.array_equal(r["seeded"], alone["seeded"])) for r in rounds],
    "other": [bool(np.array_equal(r["other"], alone["other"])) for r in rounds if "other" in r],
}))
"""


def test_seeded_requests_are_reproducible_on_two_engines_stepping_at_once(tiny: TinyCheckpoint) -> None:
    # Two engines in two threads, as --device cuda:0,cuda:1 runs them: the RNG state a seeded
    # request uses must be its own, whatever the other engine does meanwhile.
    report = run_probe(tiny, TWO_ENGINES_PROBE)
    assert report == {"seeded": [True] * 4, "other": [True] * 2}


def _upload(server: CliServer, name: str, source: Path, *, replace: bool = False) -> None:
    data = {"name": name, **({"replace": "true"} if replace else {})}
    with httpx.Client(timeout=60) as http:
        reply = http.post(
            f"{server.http}/v1/audio/voices",
            data=data,
            files={"audio_sample": (source.name, source.read_bytes())},
        )
    assert reply.status_code == 201, reply.text


async def test_an_uploaded_voice_speaks_over_http_and_websocket_and_a_replacement_is_never_stale(
    engine_server: CliServer,
) -> None:
    speaker, other = REPO / "asset" / "zero_shot_prompt.wav", REPO / "asset" / EMO_PROMPT.split("/")[-1]
    await trio.to_thread.run_sync(partial(_upload, engine_server, "上传的声音", speaker))
    client = openai.OpenAI(base_url=f"{engine_server.http}/v1", api_key="unused", max_retries=0, timeout=300)

    def speak(voice: str, response_format: Any = "wav", **extra: Any) -> bytes:
        response = client.audio.speech.create(
            model="indextts2",
            voice=voice,
            input="大家好。",
            response_format=response_format,
            extra_body=extra,
        )
        return bytes(response.content)

    wav = await trio.to_thread.run_sync(partial(speak, "上传的声音", seed=3))
    pcm, rate, _ = decode_wav(wav)
    assert rate == SAMPLE_RATE and len(pcm) > 0.1 * SAMPLE_RATE and np.abs(pcm).max() > 0
    mp3 = await trio.to_thread.run_sync(partial(speak, "上传的声音", "mp3", seed=3))
    assert soundfile.info(io.BytesIO(mp3)).duration > 0.1

    async with connect(engine_server) as ws:
        by_name = tts("大家好。", voice="上传的声音", seed=3)
        del by_name["prompt_audio"]
        _, over_ws = await ws.request(by_name)
        _, by_path = await ws.request(tts("大家好。", seed=3))
    # The library keeps the samples as uploaded: the same conditioning as the original file.
    assert np.array_equal(decode_wav(over_ws)[0], pcm)
    assert np.array_equal(decode_wav(by_path)[0], pcm)

    await trio.to_thread.run_sync(partial(_upload, engine_server, "上传的声音", other, replace=True))
    replaced = decode_wav(await trio.to_thread.run_sync(partial(speak, "上传的声音", seed=3)))[0]
    async with connect(engine_server) as ws:
        _, other_by_path = await ws.request(tts("大家好。", prompt_audio=EMO_PROMPT, seed=3))
    assert not np.array_equal(replaced, pcm)  # not the cached conditioning of the old file
    assert np.array_equal(replaced, decode_wav(other_by_path)[0])


BATCH_PROBE = r"""
import json, os, shutil, sys
import numpy as np, torch
from indextts_server.core.config import EngineOptions
from indextts_server.core.engine import SynthesisJob
from indextts_server.io.engines import batching
from indextts_server.io.engines.indextts2 import IndexTTS2Engine
from tests.batched_rows import DecodeSpy, retried_alone, run_rows, seeded_in_a_batch

model_dir, cfg_path, tmp = sys.argv[1:4]
engine = IndexTTS2Engine(EngineOptions(model_dir=model_dir, cfg_path=cfg_path, max_mel_tokens=8), "cpu")
spy = DecodeSpy(batching)
voice = os.path.join(tmp, "voice.wav")
shutil.copy("asset/emo_prompt.wav", voice)
jobs = [  # different speakers, emotion inputs and languages; one of two segments
    SynthesisJob(text="今天天气很好。我们去公园吧。", prompt_audio="asset/zero_shot_prompt.wav", max_tokens=12),
    SynthesisJob(text="春眠不觉晓。", prompt_audio=voice, emo_mode="vector", emo_vector=(0, .5, 0, 0, 0, 0, .3, 0)),
    SynthesisJob(text="Hello there.", prompt_audio="asset/zero_shot_prompt.wav", emo_mode="audio",
                 emo_audio="asset/emo_prompt.wav", emo_alpha=0.6),
]

def run(batch):
    return run_rows(engine, batch, spy)

engine.deterministic = True
alone = [run([job]) for job in jobs]
together, codes, _ = run(jobs)
report = {
    "memo": [engine._memo.hits, engine._memo.misses],
    "codes_equal": [codes[i] == alone[i][1][0] for i in range(3)],
    "max_diff": [int(np.abs(together[i].astype(int) - alone[i][0][0].astype(int)).max()) for i in range(3)],
}

# Out of memory in the batched decode: split until it fits, never failed.
spy.raising_when_batched(torch.OutOfMemoryError("CUDA out of memory (simulated)"))
split, _, split_errors = run(jobs)
report["oom_split_equal"] = [bool(np.array_equal(split[i], alone[i][0][0])) for i in range(3)]
spy.instead(None)

# A batched stage that fails: each row alone, before failing any; a broken prompt fails only its row.
report.update(retried_alone(engine, spy, jobs[:2], alone[0][0][0]))

# A seeded row in a batch of sampled rows: advanced alone, as at batch size 1.
engine.deterministic = False
seeded = SynthesisJob(text="今天天气很好。我们去公园吧。", prompt_audio="asset/zero_shot_prompt.wav", max_tokens=12, seed=7)
report["seeded_equal"] = seeded_in_a_batch(engine, spy, seeded, [jobs[2], jobs[0]])
print(json.dumps(report))
"""

AUDIO_TOLERANCE = 64
"""int16 steps (2^-9 of full scale, -54 dBFS) by which a row's samples may differ from the row
run alone with the same codes and noise: rows of one shape share the latent pass, s2mel and
BigVGAN, whose batched matrix products sum in another order (measured: at most 5)."""


def test_batched_rows_decode_the_codes_they_decode_alone_and_seeded_rows_stay_reproducible(
    tiny: TinyCheckpoint, tmp_path: Path
) -> None:
    report = run_probe(tiny, BATCH_PROBE, str(tmp_path))
    # Alone, the rows computed their GPT conditioning (speaker latent, merged emotion vector)
    # except the third row's latent (the first row's speaker); together, all six came from the memo.
    assert report["memo"] == [1 + 6, 5]
    assert report["codes_equal"] == [True] * 3
    assert all(diff <= AUDIO_TOLERANCE for diff in report["max_diff"]), report["max_diff"]
    assert report["oom_split_equal"] == [True] * 3
    # The batch failed; alone, the first row spoke and the row whose prompt broke failed by itself.
    assert report["retried"] == ["Segment", "SynthesisError"]
    assert report["retried_first_equal"]
    assert report["seeded_equal"]


async def test_at_batch_size_8_concurrent_clients_are_served_a_cancel_stops_its_own_task_and_a_seed_repeats(
    engine_server: CliServer, batch_server: CliServer
) -> None:
    seeded = tts(SEGMENTS, max_tokens=20, seed=11)
    async with connect(engine_server) as client:
        _, reference = await client.request(seeded)  # served one at a time
    wavs: dict[str, bytes] = {}

    async def speak(name: str, request: dict[str, Any]) -> None:
        async with connect(batch_server) as client:
            wavs[name] = (await client.request(request))[1]

    async def cancel_mid_task() -> None:
        async with connect(batch_server) as client:
            await client.send(tts(SEGMENTS * 2, max_tokens=20))
            task_id = (await client.recv_json())["task_id"]
            assert await client.recv_json() == client.reply("start", task_id)
            await client.send({"type": "cancel", "task_id": task_id})
            assert (await client.recv_json())["status"] == "cancelling"
            assert await client.recv_json() == client.error_reply("任务已取消", task_id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(speak, "seeded", seeded)
        nursery.start_soon(
            speak,
            "vector",
            tts(SEGMENTS, max_tokens=20, emo_mode="vector", emo_vector=[0, 0.6, 0, 0, 0, 0, 0, 0]),
        )
        nursery.start_soon(speak, "other voice", tts("Hello there, a second voice.", prompt_audio=EMO_PROMPT))
        nursery.start_soon(cancel_mid_task)
    assert wavs["seeded"] == reference  # a seeded row runs alone: the same audio at any batch size
    for name in ("vector", "other voice"):
        pcm, rate, _ = decode_wav(wavs[name])
        assert rate == SAMPLE_RATE and np.abs(pcm).max() > 0, name


def test_the_served_against_direct_probe_times_the_same_requests_both_ways(
    tiny: TinyCheckpoint, tmp_path: Path
) -> None:
    out = tmp_path / "direct.json"
    command = [
        sys.executable, "-m", "indextts_server.bench.probes.direct",
        "--model-dir", str(tiny.model_dir), "--cfg-path", str(tiny.cfg_path),
        "--max-mel-tokens", "12", "--rounds", "2", "--json", str(out),
    ]  # fmt: skip
    env = {**os.environ, **offline_env(tiny)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert len(report["served_s"]) == len(report["direct_s"]) == 2
    assert all(seconds > 0 for seconds in report["served_s"] + report["direct_s"])
    assert report["audio_s"] == report["direct_audio_s"] > 0  # the same work on both sides
    # The probe divides the unrounded medians; the report keeps them to 4 digits.
    assert report["ratio"] == pytest.approx(report["served_median_s"] / report["direct_median_s"], abs=2e-3)


LANG_JA_REFUSED = "lang 不支持: ja（IndexTTS-2 只支持 zh/en）"


async def test_lang_beyond_zh_and_en_is_refused_before_the_queue_and_speed_is_a_stretch(
    engine_server: CliServer,
) -> None:
    async with connect(engine_server) as client:
        # One error naming lang, and no queued: the first reply to the request is the error.
        assert await client.error(tts("今日は。", lang="ja")) == client.error_reply(LANG_JA_REFUSED)
        _, normal = await client.request(tts("大家好。", lang="EN", seed=2))
        _, faster = await client.request(tts("大家好。", lang="zh", seed=2, speed=1.25))
    assert len(decode_wav(faster)[0]) == pytest.approx(len(decode_wav(normal)[0]) / 1.25, rel=0.05)


async def test_lang_beyond_zh_and_en_is_a_400_naming_lang_over_http(engine_server: CliServer) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{engine_server.http}/v1/audio/speech", json={"input": "今日は。", "lang": "ja"}
        )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": LANG_JA_REFUSED,
        "type": "invalid_request_error",
        "param": "lang",
        "code": "unsupported_value",
    }


# --- voice agents on the real model (docs/voice-agents.md) -----------------------------------------


def _in_order_inside(words: list[Any], seconds: float) -> bool:
    times = [(w.start_time, w.end_time) for w in words]
    return all(0 <= a <= b <= seconds + 0.001 for a, b in times) and all(
        x[1] <= y[0] + 1e-6 for x, y in itertools.pairwise(times)
    )


def test_livekit_speaks_english_and_chinese_on_the_real_model_with_timed_words(
    engine_server: CliServer,
) -> None:
    for text, lang, expected in (
        ("Hello there. How are you?", "en", "Hello there. How are you?"),
        ("今天天气很好。我们去散步吧。", "zh", "今天天气很好。我们去散步吧。"),
    ):
        audio, words, rate = asyncio.run(
            livekit_speak(engine_server.http, text, language=lang, sample_rate=16000)
        )
        assert rate == 16000 and audio
        spoken = "".join(words) if lang == "zh" else " ".join(w.strip() for w in words)
        assert spoken.replace(" ", "") == expected.replace(" ", "")  # the client's words, not the model's
        assert _in_order_inside(words, len(audio) / 2 / 16000)


def test_pipecat_speaks_on_the_real_model_in_8khz_mulaw(engine_server: CliServer) -> None:
    tts = pipecat_tts(
        f"ws://127.0.0.1:{engine_server.http_port}/tts/websocket",
        sample_rate=8000,
        encoding="pcm_mulaw",
        stop_frame_timeout_s=60,
    )
    down, up = pipecat_run(tts, turn("Hello there. ", "How are you?", wait=20))
    audio = b"".join(f.audio for f in down if isinstance(f, TTSAudioRawFrame))
    assert audio
    assert not [f for f in [*down, *up] if isinstance(f, ErrorFrame)]
    assert [f.text.strip() for f in down if isinstance(f, TTSTextFrame)] == [
        "Hello",
        "there.",
        "How",
        "are",
        "you?",
    ]


# --- Home Assistant's Wyoming protocol on the real model (docs/home-assistant.md) ---------------------


async def test_wyoming_describes_the_models_languages(engine_server: CliServer) -> None:
    [event] = await exchange(engine_server.wyoming_port, [Describe().event()], until=("info",))
    [program] = Info.from_event(event).tts
    # Every voice of the library (other tests on this shared server may have added some) speaks
    # the loaded model's languages.
    assert "default" in [voice.name for voice in program.voices]
    assert all(voice.languages == ["zh", "en"] for voice in program.voices)


async def test_wyoming_synthesizes_a_whole_text_on_the_real_model(engine_server: CliServer) -> None:
    events = await exchange(engine_server.wyoming_port, [Synthesize(text=SEGMENTS).event()])
    assert types(events) == ["audio-start", "audio-chunk", "audio-stop"]
    assert AudioStart.from_event(events[0]).rate == SAMPLE_RATE
    assert len(audio(events)) > 0


async def test_wyoming_streams_each_sentence_on_the_real_model(engine_server: CliServer) -> None:
    sent = [
        SynthesizeStart(voice=SynthesizeVoice(name="default")).event(),
        SynthesizeChunk(text="今天天气很好。我们").event(),
        SynthesizeChunk(text="去散步吧。").event(),
        SynthesizeStop().event(),
    ]
    events = await exchange(engine_server.wyoming_port, sent, until=("synthesize-stopped", "error"))
    assert types(events) == ["audio-start", "audio-chunk", "audio-stop"] * 2 + ["synthesize-stopped"]


async def test_wyoming_refuses_a_language_the_real_model_cannot_read(engine_server: CliServer) -> None:
    event = Event("synthesize", {"text": "今日は。", "voice": {"language": "ja"}})
    assert error_text(await exchange(engine_server.wyoming_port, [event])) == LANG_JA_REFUSED


def test_the_contracts_python_client_runs_unchanged(any_server: CliServer, tmp_path: Path) -> None:
    # Random weights: a row sampled in a batch may meet its stop token within the first codes, so
    # the audio can be shorter than the 10 kB the tone engine's always is.
    assert_contract_python_client_runs(any_server.port, tmp_path, audio_bytes=r"\d+")


def test_the_contracts_javascript_client_runs_unchanged(any_server: CliServer, tmp_path: Path) -> None:
    assert_contract_javascript_client_runs(any_server.port, tmp_path)


async def test_pipelined_requests_on_one_connection_get_each_tasks_replies_together_and_in_order(
    any_server: CliServer,
) -> None:
    await assert_three_pipelined_in_order(any_server.url)


CHUNKED_PROBE = r"""
import sys
from indextts_server.bench.probes.chunked import main
main(["--model-dir", sys.argv[1], "--cfg-path", sys.argv[2], "--codes", "90", "--rounds", "0"])
"""


def test_chunked_streaming_decodes_as_generate_vocodes_as_whole_and_joins_without_seams(
    tiny: TinyCheckpoint,
) -> None:
    from indextts_server.io.engines.chunked import VOCODER_CONTEXT

    report = run_probe(tiny, CHUNKED_PROBE)
    assert report["codes_match"] is True  # one code per step == generate with one sampled beam
    assert report["prefix_latents_match"] is True  # the causal GPT: a prefix's latents are the whole's
    assert report["vocoder_context"] <= VOCODER_CONTEXT
    assert report["vocoder_max_diff"] <= 1e-4  # chunked vocoding == whole vocoding on the same mel
    assert len(report["pieces"]) >= 2 and report["pieces"][0] == pytest.approx(0.8, abs=0.012)
    assert abs(report["length_diff"]) <= 256  # within one hop of one window over the same codes
    assert report["seam_jump"] <= report["inner_jump"]  # no clicks at the seams
    assert report["mel_l1_chunked"] < report["mel_l1_seeds"]
