"""The request fields lang and speed: the language rule, the speed split, and both over the WebSocket."""

from __future__ import annotations

import numpy as np
import pytest

from indextts_server.core.engine import detect_lang, split_speed

from .conftest import Client, decode_wav, tts


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("大家好，我现在正在体验 AI 科技！", "zh"),  # mixed Chinese and English stays zh
        ("我们用 Python 写代码, the end.", "zh"),
        ("今日はいい天気ですね。", "ja"),
        ("東京に行きます", "ja"),  # kana decides even with kanji
        ("مرحبا بكم في الخادم", "ar"),
        ("¿Cómo estás? Mañana vamos.", "es"),
        ("Hola, gracias por la ayuda de todos", "es"),
        ("Hello, this is the server speaking.", "en"),
        ("12345", "en"),
    ],
)
def test_the_language_is_picked_from_the_text(text: str, lang: str) -> None:
    assert detect_lang(text) == lang


def test_speed_splits_into_the_models_part_and_a_stretch() -> None:
    assert split_speed(1.25, (0.5, 2.0)) == (1.25, 1.0)
    assert split_speed(4.0, (0.5, 2.0)) == (2.0, 2.0)
    assert split_speed(0.25, (0.5, 2.0)) == (0.5, 0.5)
    assert split_speed(1.25, None) == (1.0, 1.25)


@pytest.mark.parametrize("lang", ["fr", "", 3, "zh-CN"])
async def test_an_unknown_lang_is_refused_naming_the_field(client: Client, lang: object) -> None:
    error = await client.error(tts(lang=lang))
    assert error == client.error_reply("lang 必须是 zh/en/ja/es/ar 之一（不区分大小写）")


@pytest.mark.parametrize("speed", [0.2, 4.5, "fast"])
async def test_a_speed_out_of_range_is_refused_naming_the_field(client: Client, speed: object) -> None:
    error = await client.error(tts(speed=speed))
    assert error == client.error_reply("speed 必须是 0.25 到 4.0 之间的数字")


async def test_speed_and_lang_over_the_websocket(client: Client) -> None:
    # The tone engine has no duration control: speed is a time-stretch; lang in any case is accepted.
    lengths = {}
    for speed in (0.8, 1.0, 1.25):
        _, wav = await client.request(tts("今天天气很好。", speed=speed, lang="ZH"))
        lengths[speed] = len(decode_wav(wav)[0])
    assert lengths[1.25] < lengths[1.0] < lengths[0.8]
    assert lengths[1.25] == pytest.approx(lengths[1.0] / 1.25, rel=0.05)
    _, plain = await client.request(tts("今天天气很好。"))
    assert len(decode_wav(plain)[0]) == lengths[1.0] and np.abs(decode_wav(plain)[0]).max() > 0
