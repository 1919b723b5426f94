"""What a model can do, declared by its engine: a request outside it is refused before it is queued.

The rule is pure (`core.contract.jobs.unfit`); the end-to-end tests serve a tone engine that
declares what a real model declares as loaded, and check both ports: one error naming the field
and no ``queued`` over the WebSocket, a 400 naming it over HTTP. The real models' own
declarations are tested with them (``test_indextts2.py``, ``test_indextts25.py``).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from indextts_server.core.contract.jobs import Unfit, unfit
from indextts_server.core.engine import Capabilities, SynthesisJob, common_capabilities
from indextts_server.core.fleet import MIXED, FleetEngine, WorkerActivity, fleet_engine
from indextts_server.io.engines.tone import ToneEngine

from .conftest import PROMPT, StartServer, tts

INDEXTTS2 = Capabilities(model="IndexTTS-2", langs=("zh", "en"))
"""As a loaded IndexTTS-2 declares itself (its emotion model is always loaded)."""
BARE25 = Capabilities(
    model="IndexTTS-2.5",
    missing_tokenizers=("ja",),
    detects_lang=True,
    emo_modes=("none", "audio", "vector"),
    emotion_model=False,
)
"""IndexTTS-2.5 without the Japanese segmenter and without ``qwen0.6bemo4-merge/``."""
SLOW_ONLY = Capabilities(model="slow", speed=(0.5, 2.0))
"""An engine that renders a narrower speed range than requests may ask for."""


def job(text: str = "大家好。", **fields: Any) -> SynthesisJob:
    return SynthesisJob(text=text, prompt_audio=PROMPT, **fields)


# --- the rule ----------------------------------------------------------------------------------------


def test_a_lang_the_model_does_not_speak_is_unfit_naming_lang() -> None:
    assert unfit(job(lang="ja"), INDEXTTS2) == Unfit("lang", "lang 不支持: ja（IndexTTS-2 只支持 zh/en）")


def test_a_lang_without_its_tokenizer_is_unfit_naming_lang() -> None:
    message = "lang 暂不可用: ja（IndexTTS-2.5 缺少该语言的分词器，请联系服务器管理员安装）"
    assert unfit(job(lang="ja"), BARE25) == Unfit("lang", message)


def test_a_lang_picked_from_the_text_is_checked_as_a_named_one() -> None:
    assert unfit(job("今日は。"), BARE25) == unfit(job("今日は。", lang="ja"), BARE25) is not None
    assert unfit(job("今日は。", lang="zh"), BARE25) is None  # a named lang wins over the text's


def test_a_model_that_reads_text_as_it_comes_checks_only_a_named_lang() -> None:
    assert unfit(job("今日は。"), INDEXTTS2) is None
    assert unfit(job(lang="en"), INDEXTTS2) is None


def test_emo_mode_text_without_the_emotion_model_is_unfit_naming_emo_mode() -> None:
    message = "emo_mode 不支持: text（IndexTTS-2.5 未加载情感模型 qwen0.6bemo4-merge/）"
    assert unfit(job(emo_mode="text", emo_text="开心"), BARE25) == Unfit("emo_mode", message)
    assert unfit(job(emo_mode="vector", emo_vector=(0.5,) * 8), BARE25) is None


def test_an_emo_mode_the_model_does_not_take_is_unfit_naming_emo_mode() -> None:
    vectorless = Capabilities(model="m", emo_modes=("none", "audio", "text"))
    message = "emo_mode 不支持: vector（m 只支持 none/audio/text）"
    assert unfit(job(emo_mode="vector", emo_vector=(0.5,) * 8), vectorless) == Unfit("emo_mode", message)


def test_a_speed_outside_the_engines_range_is_unfit_naming_speed() -> None:
    message = "speed 必须是 0.5 到 2 之间的数字（slow）"
    assert unfit(job(speed=2.5), SLOW_ONLY) == Unfit("speed", message)
    assert unfit(job(speed=0.25), SLOW_ONLY) == Unfit("speed", message)
    assert unfit(job(speed=2.0), SLOW_ONLY) is None


def test_capabilities_not_known_yet_admit_every_job() -> None:
    assert unfit(job("今日は。", lang="ja", emo_mode="text", emo_text="开心", speed=4.0), None) is None


def test_the_tone_engine_declares_everything_a_request_may_ask_for() -> None:
    everything = job("今日は。", lang="ja", emo_mode="text", emo_text="开心", speed=4.0)
    assert unfit(everything, ToneEngine.capabilities) is None
    assert ToneEngine.capabilities.model == "tone"


def test_several_engines_can_do_what_every_one_of_them_can() -> None:
    common = common_capabilities([Capabilities(model="IndexTTS-2.5", detects_lang=True), BARE25])
    assert common == BARE25
    mixed = common_capabilities([INDEXTTS2, BARE25, SLOW_ONLY])
    assert mixed is not None
    assert (mixed.model, mixed.langs, mixed.emo_modes, mixed.speed) == (
        "IndexTTS-2/IndexTTS-2.5/slow",
        ("zh", "en"),
        ("none", "audio", "vector"),
        (0.5, 2.0),
    )
    assert common_capabilities([]) is None


def test_a_fleet_serves_its_workers_engine_and_what_all_of_them_can_do() -> None:
    full25 = Capabilities(model="IndexTTS-2.5", detects_lang=True)
    workers = [
        WorkerActivity(engine="indextts25", capabilities=full25),
        WorkerActivity(engine="indextts25", capabilities=BARE25, task="t1"),
        WorkerActivity(task="t2"),  # an older worker, which does not say
    ]
    assert fleet_engine(workers) == FleetEngine("indextts25", BARE25)
    mixed = fleet_engine([*workers, WorkerActivity(engine="indextts2", capabilities=INDEXTTS2)])
    assert mixed is not None and mixed.name == MIXED
    assert fleet_engine([WorkerActivity()]) is None


# --- both ports, end to end ------------------------------------------------------------------------


class DeclaringEngine(ToneEngine):
    """The tone engine, declaring what ``capabilities`` says (as a real model does as loaded)."""

    def __init__(self, capabilities: Capabilities):
        super().__init__()
        self.capabilities = capabilities


REFUSALS = [
    pytest.param(INDEXTTS2, {"lang": "ja"}, "lang", "lang 不支持: ja（IndexTTS-2 只支持 zh/en）", id="lang"),
    pytest.param(
        BARE25,
        {"lang": "ja"},
        "lang",
        "lang 暂不可用: ja（IndexTTS-2.5 缺少该语言的分词器，请联系服务器管理员安装）",
        id="tokenizer",
    ),
    pytest.param(
        BARE25,
        {"emo_mode": "text", "emo_text": "开心"},
        "emo_mode",
        "emo_mode 不支持: text（IndexTTS-2.5 未加载情感模型 qwen0.6bemo4-merge/）",
        id="emotion-model",
    ),
    pytest.param(SLOW_ONLY, {"speed": 3.0}, "speed", "speed 必须是 0.5 到 2 之间的数字（slow）", id="speed"),
]


@pytest.mark.parametrize(("capabilities", "fields", "field", "message"), REFUSALS)
async def test_a_request_the_model_cannot_do_is_one_error_and_never_queued(
    start_server: StartServer, capabilities: Capabilities, fields: dict[str, Any], field: str, message: str
) -> None:
    server = await start_server(DeclaringEngine(capabilities))
    async with server.connect() as client:
        assert await client.error(tts(**fields)) == client.error_reply(message)
        assert len(server.service.board.registry) == 0  # no task was made
        task_id, _ = await client.request(tts())  # the next reply is the next request's ``queued``
    assert [task.task_id for task in server.service.board.registry] == [task_id]


def speech_error(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{url}/v1/audio/speech", json=body)
    return response.status_code, response.json()["error"]


@pytest.mark.parametrize(("capabilities", "fields", "field", "message"), REFUSALS)
async def test_a_speech_request_the_model_cannot_do_is_a_400_naming_the_field(
    start_http: StartServer, capabilities: Capabilities, fields: dict[str, Any], field: str, message: str
) -> None:
    api = await start_http(DeclaringEngine(capabilities))
    status, error = await trio.to_thread.run_sync(speech_error, api.http, {"input": "你好。", **fields})
    assert (status, error) == (
        400,
        {"message": message, "type": "invalid_request_error", "param": field, "code": "unsupported_value"},
    )
    assert len(api.service.board.registry) == 0


async def test_over_http_an_emotion_text_given_as_instructions_is_named_instructions(
    start_http: StartServer,
) -> None:
    api = await start_http(DeclaringEngine(BARE25))
    body = {"input": "你好。", "instructions": "开心"}
    status, error = await trio.to_thread.run_sync(speech_error, api.http, body)
    assert (status, error["param"]) == (400, "instructions")
    assert error["message"] == "emo_mode 不支持: text（IndexTTS-2.5 未加载情感模型 qwen0.6bemo4-merge/）"
