"""Start-up settings as typed structs: what the server and the engines are told, with their defaults."""

from __future__ import annotations

import msgspec

from .voices import VoiceLimits


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the server is told at start-up; the CLI documents each one."""

    host: str = "0.0.0.0"
    port: int = 8770
    max_queue: int = 100
    task_ttl: float = 300.0
    max_text_chars: int = 2000
    max_message_bytes: int = 1 << 20
    audio_roots: tuple[str, ...] = (".",)
    drain_timeout: float = 30.0
    max_pending_per_session: int = 16
    task_timeout: float = 600.0
    idle_timeout: float = 600.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    auth_token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    voices_dir: str = "voices"
    default_voice: str | None = "asset/zero_shot_prompt.wav"
    voice_limits: VoiceLimits = VoiceLimits()
    max_session_buffer: int = 32 << 20
    max_total_buffer: int = 256 << 20
