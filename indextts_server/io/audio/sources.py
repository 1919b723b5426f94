"""Where a request's audio comes from: server paths and library voices, resolved to files for the engine."""

from __future__ import annotations

import time
from collections.abc import Mapping

import trio

from ...core import ssml
from ...core.contract.jobs import VOICE_FIELDS
from ...core.plan import Plan
from .paths import AudioPaths
from .voices import VoiceLibrary


class AudioSources:
    """Resolves a request's audio fields (`core.contract.jobs.audio_fields`): each path checked to be audio
    inside the allowed roots, each voice looked up in the library.

    Under load the same few files come back request after request, so what was resolved lately is
    answered from memory; the rest costs one worker-thread hop.
    """

    def __init__(self, paths: AudioPaths, voices: VoiceLibrary):
        self.paths = paths
        self.voices = voices

    async def resolve(self, fields: Mapping[str, str]) -> dict[str, str]:
        """Each field's file; `AudioPathError` or `VoiceError` for the first that has none."""
        now = time.monotonic()
        resolved = self.recall(fields, now)
        if resolved is None:
            resolved = await trio.to_thread.run_sync(self.look_up, fields, now)
        return resolved

    async def plan(self, text: str, text_format: str | None, lang: str | None) -> Plan | None:
        """The SSML plan of a request's text (None for plain text), each voice it names resolved
        like a request's ``voice`` (`VoiceError` for the first that is not in the library).

        The markup was checked when the request was decoded; this parses it again (bounded).
        """
        if text_format != "ssml":
            return None
        plan = ssml.parse(text, lang=lang)
        files = {name: (await self.resolve({"voice": name}))["voice"] for name in ssml.voices(plan)}
        return ssml.bind(plan, files)

    def recall(self, fields: Mapping[str, str], now: float) -> dict[str, str] | None:
        """Every field's file if each was resolved lately, else ``None``. No I/O."""
        resolved: dict[str, str] = {}
        for field, value in fields.items():
            found = self.voices.recall(value) if field in VOICE_FIELDS else self.paths.recall(value, now)
            if found is None:
                return None
            resolved[field] = found
        return resolved

    def look_up(self, fields: Mapping[str, str], now: float) -> dict[str, str]:
        """Every field's file, checked on disk in order. Blocking: call it from a worker thread."""
        resolved: dict[str, str] = {}
        for field, value in fields.items():
            if field in VOICE_FIELDS:
                resolved[field] = self.voices.resolve(field, value)
            else:
                resolved[field] = self.paths.check(field, value, now)
        return resolved
