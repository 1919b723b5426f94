"""Start-up settings as typed structs, each default written once: the command line is derived from them.

A field annotated with a `Flag` is a command-line option (``--field-name`` unless the flag names
another); its type (with its `msgspec.Meta` bounds) checks the value, its default is the option's
default, and the flag's ``help`` is the option's help. Adding an option is adding a field. Each
option can also be set in the environment (``INDEXTTS_SERVER_`` + its name; see the flags module).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, NamedTuple

import msgspec

CONTRACT: Final = "the contract's flags"
SERVER: Final = "server"
ENGINE: Final = "model engine (IndexTTS-2 or IndexTTS-2.5)"
HTTP: Final = "HTTP API and voice library"
WYOMING: Final = "Home Assistant (the Wyoming protocol)"
CLUSTER: Final = "cluster mode (needs the [cluster] extra)"
OPERATIONS: Final = "operations"
GROUPS: Final = (CONTRACT, SERVER, ENGINE, HTTP, WYOMING, CLUSTER, OPERATIONS)
"""The option groups of ``--help``, in order."""


class Flag(NamedTuple):
    """How a settings field appears on the command line."""

    help: str
    group: str = SERVER
    name: str | None = None
    """The option, when it is not ``--`` + the field's name with ``-`` for ``_``."""
    metavar: str | None = None
    split: str | None = None
    """A tuple field given as one value, split at this separator (``--device cuda:0,cuda:1``);
    without it, a tuple field's option is repeated (``--audio-root A --audio-root B``)."""


PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class VoiceLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What an upload to the voice library may be."""

    max_bytes: Annotated[PositiveInt, Flag("largest upload", HTTP, name="--voice-max-bytes")] = (
        10 * 1024 * 1024
    )
    min_seconds: Annotated[
        NonNegative, Flag("shortest sample, decoded", HTTP, name="--voice-min-seconds")
    ] = 1.0
    max_seconds: Annotated[NonNegative, Flag("longest sample, decoded", HTTP, name="--voice-max-seconds")] = (
        30.0
    )
    max_count: Annotated[PositiveInt, Flag("voices kept at most", HTTP, name="--voice-max-count")] = 1000
    max_name_chars: Annotated[
        PositiveInt, Flag("longest voice name", HTTP, name="--voice-name-max-chars")
    ] = 64
    max_ref_text_chars: int = 2000


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the server is told at start-up."""

    host: Annotated[str, Flag("服务器绑定地址", CONTRACT)] = "0.0.0.0"
    port: Annotated[Port, Flag("服务器端口号 (0: any free port)", CONTRACT)] = 8770
    max_queue: Annotated[PositiveInt, Flag("tasks that may wait")] = 100
    task_ttl: Annotated[NonNegative, Flag("seconds a finished task stays queryable")] = 300.0
    max_text_chars: Annotated[PositiveInt, Flag("longest accepted text")] = 2000
    max_message_bytes: Annotated[
        PositiveInt, Flag("largest accepted client frame; bigger ones close the connection with 1009")
    ] = 1 << 20
    audio_roots: Annotated[
        tuple[str, ...],
        Flag(
            "directory that prompt_audio/emo_audio must lie in (repeatable; default: the working directory)",
            name="--audio-root",
            metavar="DIR",
        ),
    ] = (".",)
    drain_timeout: Annotated[
        NonNegative, Flag("on SIGTERM/SIGINT, seconds the running task may take to finish", OPERATIONS)
    ] = 30.0
    max_pending_per_session: Annotated[
        NonNegativeInt, Flag("tasks one connection may have waiting or running (0: no limit)", OPERATIONS)
    ] = 16
    batch_size: Annotated[
        PositiveInt,
        Flag(
            "running tasks one engine advances together, a segment each per step (1: one task at a "
            "time, the contract's behaviour; embedded board only)",
        ),
    ] = 1
    task_timeout: Annotated[
        NonNegative, Flag("seconds a task may run before it fails (0: no limit)", OPERATIONS)
    ] = 600.0
    idle_timeout: Annotated[
        NonNegative, Flag("close connections silent this long with nothing in flight (0: never)", OPERATIONS)
    ] = 600.0
    ping_interval: Annotated[
        NonNegative, Flag("seconds between heartbeat pings (0: no pings)", OPERATIONS)
    ] = 20.0
    ping_timeout: Annotated[NonNegative, Flag("seconds to wait for a pong", OPERATIONS)] = 20.0
    max_session_buffer: Annotated[
        PositiveInt,
        Flag(
            "bytes of replies and audio one connection may leave unread before it is closed (1008)",
            OPERATIONS,
            metavar="BYTES",
        ),
    ] = 32 << 20
    max_total_buffer: Annotated[
        PositiveInt,
        Flag(
            "bytes left unread by all connections together; past it the one holding most is closed",
            OPERATIONS,
            metavar="BYTES",
        ),
    ] = 256 << 20
    auth_token: Annotated[
        str | None,
        Flag(
            "require this token (Authorization: Bearer, or ?token=); "
            "default: $INDEXTTS_SERVER_AUTH_TOKEN, else no auth",
            OPERATIONS,
        ),
    ] = None
    allowed_origins: Annotated[
        tuple[str, ...],
        Flag(
            "also let browser pages from this origin use the WebSocket and the HTTP API (repeatable; "
            "*: any); always let in: no Origin (non-browser clients), the server's own page, loopback pages",
            OPERATIONS,
            name="--allow-origin",
            metavar="ORIGIN",
        ),
    ] = ()
    public_voice_list: Annotated[
        bool,
        Flag(
            "let GET /v1/audio/voices and the model lists (/v1/audio/models, /v1/models) be read "
            "without the token of --auth-token, as Open WebUI asks for them without one",
            HTTP,
        ),
    ] = False
    voices_dir: Annotated[str, Flag("where uploaded voices are kept", HTTP)] = "voices"
    default_voice: Annotated[
        str | None,
        Flag("the bundled voice 'default' (also what OpenAI's stock voice names mean); empty: none", HTTP),
    ] = "asset/zero_shot_prompt.wav"
    voice_limits: VoiceLimits = VoiceLimits()


class EngineOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Which engine serves, and how the real model is found, loaded and run."""

    kind: Annotated[
        Literal["indextts2", "tone"],
        Flag(
            "indextts2: the real model, IndexTTS-2 or IndexTTS-2.5 as --model-dir holds; "
            "tone: weight-free tones for protocol work and load tests",
            name="--engine",
        ),
    ] = "indextts2"
    model_dir: Annotated[str, Flag("IndexTTS 模型目录路径", CONTRACT)] = "models/IndexTTS-2"
    cfg_path: Annotated[str, Flag("IndexTTS 配置文件路径", CONTRACT)] = "models/IndexTTS-2/config.yaml"
    devices: Annotated[
        tuple[str, ...],
        Flag(
            "运行设备（cuda 或 cpu）: cuda, cuda:N, cpu, or auto (CUDA when present, else the slow CPU); "
            "a comma list loads one model per device",
            CONTRACT,
            name="--device",
            metavar="DEVICE[,DEVICE...]",
            split=",",
        ),
    ] = ("cuda",)
    download: Annotated[
        bool,
        Flag(
            "download the model into --model-dir if it is missing (with progress): IndexTeam/IndexTTS-2.5 "
            "when the directory's name ends in 2.5 or 25, else IndexTeam/IndexTTS-2",
            ENGINE,
        ),
    ] = False
    fp16: Annotated[
        bool, Flag("half-precision inference on CUDA (IndexTTS-2: fp16; 2.5: its GPT in bf16)", ENGINE)
    ] = False
    attn_backend: Annotated[
        Literal["sdpa", "flash"],
        Flag("IndexTTS-2.5's GPT attention: flash (CUDA, needs flash-attn) or sdpa", ENGINE),
    ] = "sdpa"
    diffusion_steps: Annotated[
        PositiveInt | None,
        Flag(
            "IndexTTS-2.5's diffusion steps per segment (default: the model's, 25; fewer is faster)", ENGINE
        ),
    ] = None
    cuda_kernel: Annotated[bool, Flag("IndexTTS-2: BigVGAN's fused CUDA kernel", ENGINE)] = False
    deepspeed: Annotated[bool, Flag("IndexTTS-2: DeepSpeed inference for the GPT", ENGINE)] = False
    accel: Annotated[bool, Flag("IndexTTS-2: the model's accelerated GPT engine", ENGINE)] = False
    torch_compile: Annotated[bool, Flag("IndexTTS-2: torch.compile the s2mel model", ENGINE)] = False
    max_mel_tokens: Annotated[
        PositiveInt, Flag("cap on generated mel tokens per segment (the model's own default)", ENGINE)
    ] = 1500
    speaker_cache: Annotated[
        PositiveInt, Flag("prompt conditionings kept per model (speakers and emotion references)", ENGINE)
    ] = 8
    chunked_streaming: Annotated[
        bool,
        Flag(
            "experimental: streamed requests that do not say (chunked) get each segment in pieces"
            " as the model makes them (docs/engines.md)",
            ENGINE,
        ),
    ] = False
    tone_rtf: Annotated[NonNegative, Flag("tone engine: wall seconds spent per second of audio produced")] = (
        0.0
    )
    tone_gate: Annotated[
        str | None,
        Flag(
            "tone engine: hold every job after its first segment until this file exists"
            " (keeps a task running for a test)"
        ),
    ] = None
    workers: Annotated[
        PositiveInt,
        Flag("tone engine: inference tasks sharing the FIFO (indextts2: one per --device entry)"),
    ] = 1


class OpsOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What the process around the server does: logging and its HTTP ports."""

    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], Flag("log verbosity")] = "INFO"
    http_port: Annotated[
        Port | None,
        Flag(
            "HTTP port: the OpenAI-compatible API, voice agents' /tts/websocket, the voice library, "
            "/healthz, /readyz, /metrics "
            "and the demo page (0: any free port; off: none)",
            HTTP,
        ),
    ] = 8771
    http_host: Annotated[str | None, Flag("address for --http-port (default: --host)", HTTP)] = None
    wyoming_port: Annotated[
        Port | None,
        Flag(
            "Wyoming port for Home Assistant's TTS, whole and streamed (Home Assistant's usual: 10200; "
            "0: any free port; default: off)",
            WYOMING,
        ),
    ] = None
    wyoming_host: Annotated[str | None, Flag("address for --wyoming-port (default: --host)", WYOMING)] = None
    wyoming_zeroconf: Annotated[
        bool,
        Flag(
            "with --wyoming-port: advertise it as _wyoming._tcp by zeroconf, so Home Assistant "
            "discovers it (needs the [zeroconf] extra)",
            WYOMING,
        ),
    ] = False
    metrics_port: Annotated[
        Port | None,
        Flag(
            "also serve /metrics, /healthz and /readyz alone on this port, e.g. a private one "
            "(default: off; the HTTP port serves them too)",
            OPERATIONS,
        ),
    ] = None
    metrics_host: Annotated[str | None, Flag("address for --metrics-port (default: --host)", OPERATIONS)] = (
        None
    )


class ClusterOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Whether and how this process shares one queue with others through a broker."""

    broker: Annotated[
        str | None,
        Flag(
            "share one queue, task status and cancel across processes and machines through this "
            "Redis (>= 7) or Valkey; default: none, one process with its own queue",
            CLUSTER,
            metavar="redis://HOST:PORT/DB",
        ),
    ] = None
    role: Annotated[
        Literal["all", "gateway", "worker"],
        Flag(
            "with --broker: gateway holds client connections and loads no model; worker runs the "
            "engine and listens on no client port; all is both",
            CLUSTER,
        ),
    ] = "all"
    lease: Annotated[
        Annotated[float, msgspec.Meta(gt=0)],
        Flag(
            "with --broker: seconds after which a silent worker or gateway counts as lost "
            "(its task re-run elsewhere or failed, its tasks cancelled)",
            CLUSTER,
        ),
    ] = 5.0
    max_deliveries: Annotated[
        PositiveInt,
        Flag(
            "with --broker: times a task is handed to a worker before a lost worker fails it for good",
            CLUSTER,
        ),
    ] = 3


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the command line sets, one struct per layer."""

    server: ServerConfig = ServerConfig()
    engine: EngineOptions = EngineOptions()
    cluster: ClusterOptions = ClusterOptions()
    ops: OpsOptions = OpsOptions()
