"""Settings and the command line: each default written once (in the structs), each flag documented."""

from __future__ import annotations

import logging

import pytest

from indextts_server.core.config import EngineOptions, OpsOptions, ServerConfig, Settings, VoiceLimits
from indextts_server.io.engines.loading import CPU_HINT, resolve_device, warm_up_hint
from indextts_server.io.operations.cli import DESCRIPTION
from indextts_server.io.operations.flags import options, parse, parser


def settings(*argv: str) -> Settings:
    return parse(list(argv), "indextts-server", DESCRIPTION)


def test_no_flags_means_every_structs_defaults() -> None:
    assert settings() == Settings(server=ServerConfig(), engine=EngineOptions(), ops=OpsOptions())


def test_the_contracts_flags_keep_the_contracts_defaults() -> None:
    default = settings()
    assert (default.engine.model_dir, default.engine.cfg_path, default.engine.devices) == (
        "models/IndexTTS-2",
        "models/IndexTTS-2/config.yaml",
        ("cuda",),
    )
    assert (default.server.host, default.server.port) == ("0.0.0.0", 8770)


def test_each_flag_sets_its_field() -> None:
    given = settings(
        "--port", "0", "--max-queue", "7", "--task-timeout", "1.5", "--engine", "tone",
        "--device", "cuda:0, cuda:1", "--fp16", "--voice-max-bytes", "1000", "--log-level", "DEBUG",
        "--audio-root", "a", "--audio-root", "b", "--allow-origin", "https://x.example",
    )  # fmt: skip
    assert given.server.port == 0 and given.server.max_queue == 7 and given.server.task_timeout == 1.5
    assert given.server.audio_roots == ("a", "b")
    assert given.server.allowed_origins == ("https://x.example",)
    assert given.server.voice_limits == VoiceLimits(max_bytes=1000)
    assert given.engine == EngineOptions(kind="tone", devices=("cuda:0", "cuda:1"), fp16=True)
    assert given.ops.log_level == "DEBUG"


def test_off_and_empty_mean_none_for_optional_settings() -> None:
    given = settings("--http-port", "off", "--default-voice", "", "--metrics-port", "0")
    assert (given.ops.http_port, given.server.default_voice, given.ops.metrics_port) == (None, None, 0)


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--max-queue", "0"], "argument --max-queue: Expected `int` >= 1"),
        (["--port", "65536"], "argument --port: Expected `int` <= 65535"),
        (["--task-ttl", "-1"], "argument --task-ttl: Expected `float` >= 0"),
        (["--workers", "two"], "argument --workers: Expected `int`"),
        (["--engine", "espeak"], "argument --engine: invalid choice: 'espeak'"),
        (["--device", ","], "argument --device: needs at least one value"),
    ],
)
def test_a_bad_value_is_refused_naming_the_flag_and_the_bound(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        settings(*argv)
    assert exit_.value.code == 2
    assert complaint in capsys.readouterr().err


def test_the_auth_token_comes_from_the_environment_and_never_shows_in_help(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INDEXTTS_SERVER_AUTH_TOKEN", "s3cret-token")
    assert settings().server.auth_token == "s3cret-token"
    assert settings("--auth-token", "other").server.auth_token == "other"
    assert "s3cret-token" not in parser("indextts-server", DESCRIPTION).format_help()
    monkeypatch.setenv("INDEXTTS_SERVER_AUTH_TOKEN", "")
    assert settings().server.auth_token is None


def test_each_option_also_comes_from_its_environment_variable_and_the_command_line_wins() -> None:
    environ = {
        "INDEXTTS_SERVER_DEVICE": "cuda:1, cuda:2",
        "INDEXTTS_SERVER_MODEL_DIR": "/models/IndexTTS-2",
        "INDEXTTS_SERVER_DOWNLOAD": "yes",
        "INDEXTTS_SERVER_ENGINE": "tone",
        "INDEXTTS_SERVER_HTTP_PORT": "off",
        "INDEXTTS_SERVER_AUDIO_ROOT": "/voices, /app/asset",
        "INDEXTTS_SERVER_MAX_QUEUE": "",  # empty: unset, the default stays
    }
    given = parse([], "indextts-server", DESCRIPTION, environ)
    assert given.engine == EngineOptions(
        kind="tone", model_dir="/models/IndexTTS-2", devices=("cuda:1", "cuda:2"), download=True
    )
    assert (given.ops.http_port, given.server.audio_roots) == (None, ("/voices", "/app/asset"))
    assert given.server.max_queue == ServerConfig().max_queue
    flags = ["--device", "cpu", "--audio-root", "a", "--audio-root", "b", "--http-port", "9"]
    given = parse(flags, "indextts-server", DESCRIPTION, environ)
    assert (given.engine.devices, given.server.audio_roots, given.ops.http_port) == (("cpu",), ("a", "b"), 9)
    assert given.engine.model_dir == "/models/IndexTTS-2"  # not on the command line: still the environment's
    names = {option.env for option in options()}
    assert {"INDEXTTS_SERVER_AUTH_TOKEN", "INDEXTTS_SERVER_BROKER", "INDEXTTS_SERVER_CFG_PATH"} <= names


@pytest.mark.parametrize(
    ("variable", "complaint"),
    [
        (
            "INDEXTTS_SERVER_MAX_QUEUE=0",
            "environment variable INDEXTTS_SERVER_MAX_QUEUE='0': Expected `int` >= 1",
        ),
        (
            "INDEXTTS_SERVER_FP16=maybe",
            "INDEXTTS_SERVER_FP16='maybe': expected 1/0, true/false, yes/no or on/off",
        ),
        ("INDEXTTS_SERVER_ROLE=boss", "INDEXTTS_SERVER_ROLE='boss': invalid choice: 'boss'"),
        ("INDEXTTS_SERVER_DEVICE=,", "INDEXTTS_SERVER_DEVICE=',': needs at least one value"),
    ],
)
def test_a_bad_environment_value_is_refused_naming_the_variable(
    variable: str, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name, value = variable.split("=", 1)
    with pytest.raises(SystemExit) as exit_:
        parse([], "indextts-server", DESCRIPTION, {name: value})
    assert exit_.value.code == 2
    assert complaint in capsys.readouterr().err


def test_help_names_the_environment_and_shows_no_value_from_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INDEXTTS_SERVER_BROKER", "redis://:hunter2@10.0.0.5:6379/0")
    text = parser("indextts-server", DESCRIPTION).format_help()
    assert "INDEXTTS_SERVER_MODEL_DIR=/models/IndexTTS-2" in text and "hunter2" not in text


def test_help_shows_each_default_once_and_names_the_contract() -> None:
    text = parser("indextts-server", DESCRIPTION).format_help()
    assert "the contract's flags" in text and "seed" not in text
    assert "(default: 1500)" in text  # --max-mel-tokens, from EngineOptions
    assert "(default: None)" not in text


def test_device_auto_is_cuda_when_present_else_cpu_and_cuda_stays_cuda() -> None:
    assert resolve_device("auto", cuda_present=True) == "cuda"
    assert resolve_device("auto", cuda_present=False) == "cpu"
    assert resolve_device("cuda", cuda_present=False) == "cuda"  # fails to load, with the CPU hint
    assert resolve_device("cuda:1", cuda_present=True) == "cuda:1"


def test_a_warm_up_failure_hints_at_the_cpu_only_on_a_gpu() -> None:
    assert warm_up_hint("cuda:0", "models/IndexTTS-2") == CPU_HINT
    on_cpu = warm_up_hint("cpu", "models/IndexTTS-2.5")
    assert "CUDA" not in on_cpu
    assert on_cpu.startswith("models/IndexTTS-2.5 中的模型文件可能不完整")
    assert "hf download IndexTeam/IndexTTS-2.5" in on_cpu


def test_our_logging_leaves_the_download_progress_bars_on() -> None:
    from huggingface_hub.utils.tqdm import are_progress_bars_disabled, is_tqdm_disabled

    from indextts_server.io.operations.logs import setup_logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        setup_logging("WARNING")
        assert not are_progress_bars_disabled()
        # None: huggingface_hub draws its bars when stderr is a terminal.
        assert is_tqdm_disabled(logging.getLogger("huggingface_hub").getEffectiveLevel()) is None
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
