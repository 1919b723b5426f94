"""``indextts-client`` end to end: the installed command's code run as a process against a tone server."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pytest
import soundfile
from websockets.sync.client import connect

from indextts_server.client.cli import parser, say_options
from indextts_server.client.request import build_request
from indextts_server.client.voices import http_base
from indextts_server.core.segment import split_segments

from .conftest import EMO_PROMPT, PROMPT, REPO, CliServer, decode_wav, tts
from .test_timestamps import assert_cues_fit_the_audio, srt_spans, vtt_spans

TEXT = "大家好，我现在正在体验 AI 科技！今天天气很好，我们一起散步。"
LONG = "第一段文字在这里呀呀呀呀。第二段文字在这里呀呀呀呀。第三段文字在这里呀呀呀呀。" * 4
TOKEN = "s3cret-token"
CLIENT = (sys.executable, "-m", "indextts_server.client")


def client(
    *args: str, stdin: str | None = None, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``indextts-client`` to completion, stdout and stderr captured (so: piped, not a terminal)."""
    return subprocess.run(
        [*CLIENT, *args],
        input=None if stdin is None else stdin.encode(),
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        cwd=cwd,
        env=env or _env(),
        timeout=60,
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INDEXTTS_")}
    return {**env, **extra}


def direct_wav(url: str, request: dict[str, object]) -> bytes:
    """The server's own non-streamed WAV for ``request``, fetched with a plain WebSocket client."""
    with connect(url, max_size=None) as ws:
        ws.recv()
        ws.send(json.dumps(request, ensure_ascii=False))
        audio = b""
        while True:
            message = ws.recv()
            if isinstance(message, bytes):
                audio = message
            elif json.loads(message).get("type") == "end":
                return audio


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    voices = str(tmp_path_factory.mktemp("voices"))
    running = CliServer(["--engine", "tone", "--port", "0", "--voices-dir", voices])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    voices = str(tmp_path_factory.mktemp("guarded-voices"))
    running = CliServer(["--engine", "tone", "--port", "0", "--voices-dir", voices, "--auth-token", TOKEN])
    yield running
    running.stop()


def say(server: CliServer, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return client("say", "--url", server.url, *args, **kwargs)  # type: ignore[arg-type]


def test_say_writes_the_same_wav_the_server_makes_whole(server: CliServer, tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    done = say(server, TEXT, "--prompt", PROMPT, "--seed", "7", "--max-tokens", "20", "-o", str(out))
    assert done.returncode == 0, done.stderr.decode()
    expected = direct_wav(server.url, tts(TEXT, seed=7, max_tokens=20))
    assert out.read_bytes() == expected
    pcm, rate, info = decode_wav(out.read_bytes())
    assert (rate, info.channels, info.subtype) == (22050, 1, "PCM_16") and len(pcm) > 22050
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("suffix", ["srt", "vtt"])
def test_subtitles_are_written_beside_the_audio_and_match_it(
    server: CliServer, tmp_path: Path, suffix: str
) -> None:
    out, subtitles = tmp_path / "out.wav", tmp_path / f"out.{suffix}"
    done = say(server, LONG, "--max-tokens", "20", "--interval-silence", "300", "-o", str(out),
               "--subtitles", str(subtitles))  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    read = (
        srt_spans(subtitles.read_text("utf-8"))
        if suffix == "srt"
        else vtt_spans(subtitles.read_text("utf-8"))
    )
    assert [text for _, _, text in read] == split_segments(LONG, 20)
    pcm, rate, _ = decode_wav(out.read_bytes())
    assert_cues_fit_the_audio([(start, end) for start, end, _ in read], pcm, rate)


def test_subtitles_need_an_srt_or_vtt_path_and_sample_rate_resamples(
    server: CliServer, tmp_path: Path
) -> None:
    refused = say(server, TEXT, "--subtitles", str(tmp_path / "out.txt"))
    assert refused.returncode == 2 and b"--subtitles" in refused.stderr
    out = tmp_path / "out.wav"
    done = say(server, TEXT, "--sample-rate", "16000", "-o", str(out))
    assert done.returncode == 0, done.stderr.decode()
    assert decode_wav(out.read_bytes())[1] == 16000


def test_piped_progress_is_one_plain_line_per_event(server: CliServer, tmp_path: Path) -> None:
    done = say(server, TEXT, "--prompt", PROMPT, "--max-tokens", "20", "-o", str(tmp_path / "a.wav"))
    lines = done.stderr.decode().splitlines()
    assert re.fullmatch(r"queued task=[0-9a-f-]{36} position=1", lines[0]), lines
    assert lines[1].startswith("start task=")
    segments = [line for line in lines if line.startswith("segment ")]
    assert len(segments) >= 2 and re.search(r"index=2 seconds=\d+\.\d{3}$", segments[1])
    assert re.match(r"end task=\S+ output=\S+a\.wav queue wait \d", lines[-1]), lines[-1]
    assert "rtf" in lines[-1] and "\r" not in done.stderr.decode()


def test_a_terminal_gets_one_rewritten_progress_line(server: CliServer, tmp_path: Path) -> None:
    main, terminal = pty.openpty()
    try:
        process = subprocess.run(
            [
                *CLIENT,
                "say",
                TEXT,
                "--url",
                server.url,
                "--prompt",
                PROMPT,
                "-o",
                str(tmp_path / "t.wav"),
                "--max-tokens",
                "20",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env=_env(),
            cwd=REPO,
            timeout=60,
        )
        os.close(terminal)
        terminal = -1
        shown = b""
        while chunk := _read_pty(main):
            shown += chunk
    finally:
        os.close(main)
        if terminal >= 0:
            os.close(terminal)
    assert process.returncode == 0
    text = shown.decode()
    assert "\r\x1b[Kqueued (position 1) task " in text
    assert re.search(r"\r\x1b\[Kgenerating… 2 segments done, \d+\.\d s of audio", text)
    assert re.search(r"\r\x1b\[Kdone: \S+t\.wav \(queue wait \d\.\d{3}s, .* rtf \d+\.\d{3}\)\r?\n$", text)
    assert text.count("\n") == 1


def _read_pty(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the other side is closed
        return b""


def test_stream_to_stdout_is_a_playable_open_ended_wav(server: CliServer) -> None:
    done = say(server, TEXT, "--prompt", PROMPT, "--seed", "3", "--max-tokens", "20", "--stream", "-o", "-")
    assert done.returncode == 0, done.stderr.decode()
    streamed = done.stdout
    assert streamed[:4] == b"RIFF" and streamed[40:44] == b"\xff\xff\xff\xff"
    whole, _, _ = decode_wav(direct_wav(server.url, tts(TEXT, seed=3, max_tokens=20)))
    assert np.array_equal(np.frombuffer(streamed[44:], "<i2"), whole)
    pcm, rate = soundfile.read(io.BytesIO(streamed), dtype="int16")
    assert rate == 22050 and len(pcm) == len(whole)


def test_stream_to_a_file_ends_with_a_complete_header(server: CliServer, tmp_path: Path) -> None:
    out = tmp_path / "s.wav"
    done = say(server, TEXT, "--prompt", PROMPT, "--max-tokens", "20", "--stream", "-o", str(out))
    assert done.returncode == 0, done.stderr.decode()
    info = soundfile.info(str(out))
    assert info.frames == (out.stat().st_size - 44) // 2 and info.duration > 1


@pytest.mark.parametrize(("audio_format", "stream"), [("pcm", True), ("mp3", True), ("flac", False)])
def test_other_formats(server: CliServer, tmp_path: Path, audio_format: str, stream: bool) -> None:
    out = tmp_path / f"x.{audio_format}"
    args = ["--format", audio_format, "-o", str(out)] + (["--stream"] if stream else [])
    done = say(server, "你好，世界。再见。", "--prompt", PROMPT, "--max-tokens", "20", *args)
    assert done.returncode == 0, done.stderr.decode()
    if audio_format == "pcm":
        assert len(out.read_bytes()) % 2 == 0 and len(out.read_bytes()) > 2 * 22050 * 0.5
    else:
        assert soundfile.info(str(out)).duration > 0.5


def test_flac_cannot_stream(server: CliServer) -> None:
    done = say(server, "你好。", "--prompt", PROMPT, "--format", "flac", "--stream")
    assert done.returncode == 2
    assert "--stream cannot write flac" in done.stderr.decode()


def test_text_comes_from_stdin_or_a_file(server: CliServer, tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("文件里的文字。", encoding="utf-8")
    from_file = say(server, "--text-file", str(tmp_path / "t.txt"), "--prompt", PROMPT, "-o", "-", "-q")
    from_stdin = say(server, "--prompt", PROMPT, "-o", "-", "-q", stdin="文件里的文字。")
    dash = say(server, "-", "--prompt", PROMPT, "-o", "-", "-q", stdin="文件里的文字。")
    assert from_file.returncode == from_stdin.returncode == dash.returncode == 0
    assert from_file.stdout == from_stdin.stdout == dash.stdout
    assert from_file.stderr == b"" and len(from_file.stdout) > 44


def test_emotion_options_reach_the_server(server: CliServer) -> None:
    plain = say(server, "你好。", "--prompt", PROMPT, "--seed", "1", "-o", "-", "-q").stdout
    for emotion in (
        ["--emo-audio", EMO_PROMPT, "--emo-alpha", "0.6"],
        ["--emo-vector", "happy=0.8,surprised=0.2"],
        ["--emo-vector", "0,0,0.9,0,0,0,0,0"],
        ["--emo-text", "我太开心了", "--emo-alpha", "0.9"],
    ):
        done = say(server, "你好。", "--prompt", PROMPT, "--seed", "1", "-o", "-", "-q", *emotion)
        assert done.returncode == 0, (emotion, done.stderr.decode())
        assert done.stdout != plain, emotion


@pytest.mark.parametrize(
    ("emotion", "fields"),
    [
        (["--emo-voice", "bob"], {"emo_mode": "audio", "emo_voice": "bob"}),
        (
            ["--emo-audio", EMO_PROMPT, "--emo-alpha", "0.6"],
            {"emo_mode": "audio", "emo_audio": EMO_PROMPT, "emo_alpha": 0.6},
        ),
        # Named emotions land in the contract's slots: happy, angry, sad, afraid, disgusted,
        # melancholic, surprised, calm.
        (
            ["--emo-vector", "happy=0.8,surprised=0.2"],
            {"emo_mode": "vector", "emo_vector": [0.8, 0, 0, 0, 0, 0, 0.2, 0]},
        ),
        (
            ["--emo-vector", "calm=0.5,angry=0.1"],
            {"emo_mode": "vector", "emo_vector": [0, 0.1, 0, 0, 0, 0, 0, 0.5]},
        ),
        (
            ["--emo-vector", "0,0,0.9,0,0,0,0,0"],
            {"emo_mode": "vector", "emo_vector": [0, 0, 0.9, 0, 0, 0, 0, 0]},
        ),
        (
            ["--emo-text", "我太开心了", "--emo-alpha", "0.9"],
            {"emo_mode": "text", "emo_text": "我太开心了", "emo_alpha": 0.9},
        ),
        ([], {"emo_mode": "none"}),
    ],
)
def test_each_emotion_option_fills_its_own_request_fields(
    emotion: list[str], fields: dict[str, object]
) -> None:
    args = parser().parse_args(["say", "你好。", "--prompt", PROMPT, *emotion])
    request = build_request(say_options(args))
    sent = {name: value for name, value in request.items() if name.startswith("emo_")}
    assert sent == fields
    assert request["prompt_audio"] == PROMPT and "voice" not in request


def test_lang_and_speed_reach_the_server(server: CliServer, tmp_path: Path) -> None:
    out = tmp_path / "fast.wav"
    done = say(
        server,
        "Hello there.",
        "--prompt",
        PROMPT,
        "--seed",
        "2",
        "--lang",
        "en",
        "--speed",
        "2",
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr.decode()
    assert out.read_bytes() == direct_wav(server.url, tts("Hello there.", seed=2, lang="en", speed=2.0))
    plain = say(
        server, "Hello there.", "--prompt", PROMPT, "--seed", "2", "--lang", "en", "-o", "-", "-q"
    ).stdout
    assert len(decode_wav(plain)[0]) > 1.5 * len(decode_wav(out.read_bytes())[0])
    bad = say(server, "Hello there.", "--prompt", PROMPT, "--speed", "9", "-o", str(tmp_path / "never.wav"))
    assert bad.returncode == 1 and "error: speed " in bad.stderr.decode()


def test_a_refused_request_exits_1_with_the_servers_message(server: CliServer, tmp_path: Path) -> None:
    out = tmp_path / "never.wav"
    done = say(server, "你好。", "--prompt", "asset/missing.wav", "-o", str(out))
    assert done.returncode == 1
    assert done.stderr.decode().splitlines()[-1] == "error: prompt_audio 文件不存在: asset/missing.wav"
    bad = say(server, "你好。", "--prompt", PROMPT, "--emo-vector", "2,0,0,0,0,0,0,0", "-o", str(out))
    assert bad.returncode == 1
    assert "error: emo_vector 必须是由 8 个 0.0 到 1.0 之间的数字组成的数组" in bad.stderr.decode()
    assert not out.exists() and not list(tmp_path.iterdir())


def test_usage_errors_exit_2(server: CliServer) -> None:
    both = say(server, "你好。", "--prompt", PROMPT, "--emo-text", "开心", "--emo-audio", EMO_PROMPT)
    assert both.returncode == 2 and "choose one emotion control" in both.stderr.decode()
    both_voices = say(server, "你好。", "--voice", "default", "--prompt", PROMPT)
    assert both_voices.returncode == 2 and "not allowed with argument" in both_voices.stderr.decode()
    empty = say(server, "--prompt", PROMPT, stdin="  \n")
    assert empty.returncode == 2 and "no text to speak" in empty.stderr.decode()


def test_status_prints_the_servers_reply(server: CliServer) -> None:
    done = say(server, "你好。", "--prompt", PROMPT, "-o", "-")
    task_id = re.search(r"queued task=(\S+)", done.stderr.decode())
    assert task_id
    status = client("status", task_id.group(1), "--url", server.url)
    assert status.returncode == 0, status.stderr.decode()
    reply = json.loads(status.stdout)
    assert (reply["type"], reply["task_id"], reply["status"]) == (
        "task_status",
        task_id.group(1),
        "completed",
    )
    unknown = client("status", "no-such-task", "--url", server.url)
    assert unknown.returncode == 1
    assert unknown.stderr.decode().strip() == "error: 任务不存在或已过期: no-such-task"


def test_the_token_comes_from_the_option_or_the_environment(guarded: CliServer) -> None:
    refused = say(guarded, "你好。", "--prompt", PROMPT, "-o", "-")
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == (
        f"error: {guarded.url} refused the connection (HTTP 401): missing or wrong token"
    )
    wrong = say(guarded, "你好。", "--prompt", PROMPT, "-o", "-", "--token", "nope")
    assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr.decode()
    given = say(guarded, "你好。", "--prompt", PROMPT, "-o", "-", "--token", TOKEN)
    assert given.returncode == 0 and given.stdout[:4] == b"RIFF"
    from_env = client(
        "say",
        "你好。",
        "--prompt",
        PROMPT,
        "-o",
        "-",
        env=_env(INDEXTTS_URL=guarded.url, INDEXTTS_TOKEN=TOKEN),
    )
    assert from_env.returncode == 0 and from_env.stdout == given.stdout


def test_connection_options_may_come_before_the_command(guarded: CliServer) -> None:
    before = client("--url", guarded.url, "--token", TOKEN, "say", "你好。", "--prompt", PROMPT, "-o", "-")
    assert before.returncode == 0, before.stderr.decode()
    after = say(guarded, "你好。", "--prompt", PROMPT, "-o", "-", "--token", TOKEN)
    assert before.stdout == after.stdout and before.stdout[:4] == b"RIFF"
    # Given in both places, the command's own copy wins.
    both = client(
        "--token",
        "nope",
        "say",
        "你好。",
        "--prompt",
        PROMPT,
        "-o",
        "-",
        "--url",
        guarded.url,
        "--token",
        TOKEN,
    )
    assert both.returncode == 0, both.stderr.decode()


def test_an_unreachable_server_exits_1(tmp_path: Path) -> None:
    done = client("say", "你好。", "--prompt", PROMPT, "--url", "ws://127.0.0.1:9", "-o", str(tmp_path / "x"))
    assert done.returncode == 1
    assert done.stderr.decode().startswith("error: cannot connect to ws://127.0.0.1:9: ")


def test_ctrl_c_cancels_the_task_on_the_server(tmp_path: Path) -> None:
    slow = CliServer(["--engine", "tone", "--port", "0", "--tone-rtf", "1"])
    try:
        out = tmp_path / "cut.wav"
        process = subprocess.Popen(
            [
                *CLIENT,
                "say",
                LONG,
                "--url",
                slow.url,
                "--prompt",
                PROMPT,
                "--max-tokens",
                "20",
                "--stream",
                "-o",
                str(out),
            ],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=_env(),
        )
        assert process.stderr is not None
        seen = _lines_until(process.stderr, "segment ")
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read().decode()
        assert process.wait(timeout=30) == 130
        assert rest.splitlines()[-1] == "error: 任务已取消", ("".join(seen), rest)
        assert "cancelling" in rest and not out.exists()
        task_id = re.search(r"queued task=(\S+)", "".join(seen))
        assert task_id
        status = client("status", task_id.group(1), "--url", slow.url)
        assert json.loads(status.stdout)["status"] == "cancelled"
    finally:
        slow.stop()


def _lines_until(stream: IO[bytes], prefix: str) -> list[str]:
    seen: list[str] = []
    for raw in stream:
        seen.append(raw.decode())
        if seen[-1].startswith(prefix):
            return seen
    raise AssertionError(f"no line starting {prefix!r}: {seen}")


def voices(server: CliServer, *args: str, token: str | None = None) -> subprocess.CompletedProcess[bytes]:
    extra = ["--token", token] if token else []
    return client("voices", args[0], "--url", server.url, "--http-url", server.http, *extra, *args[1:])


def test_voices_add_list_use_replace_and_remove(server: CliServer) -> None:
    added = voices(server, "add", "声音_1", str(REPO / PROMPT))
    assert (added.returncode, added.stderr.decode()) == (0, "added 声音_1\n")
    listed = voices(server, "list")
    rows = [line.split("\t") for line in listed.stdout.decode().splitlines()]
    assert [row[0] for row in rows] == ["default", "声音_1"] and rows[1][1].endswith("s")
    bundled = say(server, "用声音库里的声音。", "-o", "-", "-q")
    explicit = say(server, "用声音库里的声音。", "--voice", "default", "-o", "-", "-q")
    assert bundled.returncode == 0 and bundled.stdout == explicit.stdout
    spoken = say(server, "用声音库里的声音。", "--voice", "声音_1", "-o", "-", "-q")
    assert spoken.stdout != bundled.stdout
    assert spoken.returncode == 0 and spoken.stdout[:4] == b"RIFF"
    moved = say(server, "用声音库里的声音。", "--voice", "声音_1", "--emo-voice", "default", "-o", "-", "-q")
    assert moved.returncode == 0 and moved.stdout != spoken.stdout
    again = voices(server, "add", "声音_1", str(REPO / EMO_PROMPT))
    assert again.returncode == 1
    assert again.stderr.decode().strip() == "error: 声音已存在: 声音_1（要替换它，请同时提交 replace=true）"
    replaced = voices(server, "add", "声音_1", str(REPO / EMO_PROMPT), "--replace")
    assert replaced.returncode == 0
    as_json = json.loads(voices(server, "list", "--json").stdout)
    assert {v["name"]: v["duration"] for v in as_json["voices"]}["声音_1"] == round(
        soundfile.info(str(REPO / EMO_PROMPT)).duration, 3
    )
    removed = voices(server, "rm", "声音_1")
    assert (removed.returncode, removed.stderr.decode()) == (0, "removed 声音_1\n")
    gone = voices(server, "rm", "声音_1")
    assert gone.returncode == 1 and gone.stderr.decode().startswith("error: ")
    unknown = say(server, "你好。", "--voice", "声音_1", "-o", "-")
    assert (
        unknown.returncode == 1 and unknown.stderr.decode().splitlines()[-1] == "error: voice 不存在: 声音_1"
    )


def test_a_refused_upload_exits_1_with_the_servers_message(server: CliServer, tmp_path: Path) -> None:
    fake = tmp_path / "fake.wav"
    fake.write_bytes(b"RIFF but not really audio")
    refused = voices(server, "add", "fake", str(fake))
    assert refused.returncode == 1
    assert (
        refused.stderr.decode().strip()
        == "error: audio_sample 无法解码为音频（支持 wav/flac/mp3/ogg/webm/m4a）"
    )
    evil = voices(server, "add", "../x", str(REPO / PROMPT))
    assert evil.returncode == 1 and "name 只能包含" in evil.stderr.decode()
    missing = voices(server, "add", "x", str(tmp_path / "nope.wav"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr.decode()


def test_voices_need_the_token_of_a_protected_server(guarded: CliServer) -> None:
    refused = voices(guarded, "list")
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == "error: 缺少或错误的令牌：请发送 Authorization: Bearer <token>"
    allowed = voices(guarded, "list", token=TOKEN)
    assert allowed.returncode == 0 and allowed.stdout.decode().startswith("default\t")


def test_the_http_api_is_found_beside_the_websocket_url() -> None:
    assert http_base("ws://10.0.0.5:8770") == "http://10.0.0.5:8771"
    assert http_base("wss://tts.example.com/ws") == "https://tts.example.com:8771"
    assert http_base("ws://[::1]:8770/") == "http://[::1]:8771"
