"""prompt_audio / emo_audio are server paths that must resolve to decodable audio inside a root."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from .conftest import PROMPT, REPO, Client, Running, tts


@pytest.fixture
async def rooted(start_server: Any, tmp_path: Path) -> tuple[Running, Path, Path]:
    """A server whose only audio root is ``tmp_path/root``; ``tmp_path/outside`` is not allowed."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    shutil.copy(REPO / PROMPT, root / "voice.wav")
    shutil.copy(REPO / PROMPT, outside / "voice.wav")
    server: Running = await start_server(audio_roots=(str(root),))
    return server, root, outside


async def test_absolute_path_inside_the_root_is_accepted(rooted: Any) -> None:
    server, root, _ = rooted
    async with server.connect() as client:
        await client.request(tts(prompt_audio=str(root / "voice.wav")))


async def test_relative_path_resolves_against_the_working_directory(
    rooted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, root, _ = rooted
    monkeypatch.chdir(root)
    async with server.connect() as client:
        await client.request(tts(prompt_audio="voice.wav"))


async def test_default_root_is_the_working_directory(client: Client) -> None:
    await client.request(tts(prompt_audio=PROMPT))
    reply = await client.error(tts(prompt_audio="/etc/hostname"))
    assert reply == client.error_reply("prompt_audio 不在允许的音频目录内: /etc/hostname")


@pytest.mark.parametrize("field", ["prompt_audio", "emo_audio"])
async def test_path_outside_the_roots_is_refused(rooted: Any, field: str) -> None:
    server, root, outside = rooted
    path = str(outside / "voice.wav")
    async with server.connect() as client:
        reply = await client.error(_request(field, path, root))
        assert reply == client.error_reply(f"{field} 不在允许的音频目录内: {path}")


@pytest.mark.parametrize("field", ["prompt_audio", "emo_audio"])
async def test_dot_dot_escape_is_refused(rooted: Any, field: str) -> None:
    server, root, _ = rooted
    path = f"{root}/../outside/voice.wav"
    async with server.connect() as client:
        reply = await client.error(_request(field, path, root))
        assert reply == client.error_reply(f"{field} 不在允许的音频目录内: {path}")


async def test_symlink_leading_outside_the_root_is_refused(rooted: Any) -> None:
    server, root, outside = rooted
    os.symlink(outside / "voice.wav", root / "link.wav")
    path = str(root / "link.wav")
    async with server.connect() as client:
        reply = await client.error(tts(prompt_audio=path))
        assert reply == client.error_reply(f"prompt_audio 不在允许的音频目录内: {path}")


async def test_symlink_inside_the_root_is_followed(rooted: Any) -> None:
    server, root, _ = rooted
    os.symlink(root / "voice.wav", root / "alias.wav")
    async with server.connect() as client:
        await client.request(tts(prompt_audio=str(root / "alias.wav")))


@pytest.mark.parametrize("field", ["prompt_audio", "emo_audio"])
async def test_missing_file_is_refused(rooted: Any, field: str) -> None:
    server, root, _ = rooted
    path = str(root / "nope.wav")
    async with server.connect() as client:
        reply = await client.error(_request(field, path, root))
        assert reply == client.error_reply(f"{field} 文件不存在: {path}")


async def test_directory_is_refused(rooted: Any) -> None:
    server, root, _ = rooted
    (root / "dir.wav").mkdir()
    path = str(root / "dir.wav")
    async with server.connect() as client:
        reply = await client.error(tts(prompt_audio=path))
        assert reply == client.error_reply(f"prompt_audio 不是文件: {path}")


@pytest.mark.parametrize("field", ["prompt_audio", "emo_audio"])
async def test_undecodable_file_is_refused(rooted: Any, field: str) -> None:
    server, root, _ = rooted
    (root / "fake.wav").write_bytes(b"this is not audio at all" * 10)
    path = str(root / "fake.wav")
    async with server.connect() as client:
        reply = await client.error(_request(field, path, root))
        assert reply == client.error_reply(f"{field} 无法解码为音频: {path}")
        # Nothing was queued, and the connection still works.
        await client.request(tts(prompt_audio=str(root / "voice.wav")))


def _request(field: str, path: str, root: Path) -> dict[str, Any]:
    if field == "prompt_audio":
        return tts(prompt_audio=path)
    return tts(prompt_audio=str(root / "voice.wav"), emo_mode="audio", emo_audio=path)


def test_sources_answer_from_memory_only_what_was_looked_up_lately(tmp_path: Path) -> None:
    from indextts_server.core.config import VoiceLimits
    from indextts_server.io.audio.paths import AudioPaths, resolve_roots
    from indextts_server.io.audio.sources import AudioSources
    from indextts_server.io.audio.voices import VoiceLibrary

    shutil.copy(REPO / PROMPT, tmp_path / "voice.wav")
    library = VoiceLibrary(tmp_path / "voices", VoiceLimits(), default_voice=str(REPO / PROMPT))
    sources = AudioSources(AudioPaths(resolve_roots([tmp_path]), ttl=5.0), library)
    fields = {"voice": "default", "emo_audio": str(tmp_path / "voice.wav")}
    assert sources.recall(fields, now=0.0) is None  # nothing looked up yet: no answer without I/O
    found = sources.look_up(fields, now=0.0)
    assert found == {
        "voice": os.path.realpath(REPO / PROMPT),
        "emo_audio": os.path.realpath(tmp_path / "voice.wav"),
    }
    assert sources.recall(fields, now=1.0) == found
    assert sources.recall(fields, now=6.0) is None  # a checked path is trusted for ``ttl`` seconds
