"""``indextts-client``: speak text, ask for a task's status, and manage the voice library."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import msgspec
import trio

from ..core.contract.protocol import Cue
from ..core.cues import subtitles
from ..core.engine import SAMPLE_RATES, SPEED_MAX, SPEED_MIN
from .output import AudioOutput
from .progress import Progress
from .request import (
    FORMATS,
    SayOptions,
    UsageError,
    build_request,
    parse_vector,
    subtitle_kind,
    wire_format,
)
from .session import ClientError, Interrupted, say, task_status
from .voices import VoiceLibrary, http_base

DEFAULT_URL: Final = "ws://127.0.0.1:8770"
ENVIRONMENT: Final = """environment:
  INDEXTTS_URL       WebSocket URL (default ws://127.0.0.1:8770)
  INDEXTTS_HTTP_URL  HTTP API base (default: the WebSocket's host, port 8771)
  INDEXTTS_TOKEN     the server's --auth-token (INDEXTTS_SERVER_AUTH_TOKEN is read too)

exit status: 0 done, 1 the server or the connection refused (its message is printed), 2 bad
usage, 130 interrupted."""


def _connection_options(*, defaults: bool) -> argparse.ArgumentParser:
    """``--url``, ``--http-url`` and ``--token``, accepted before or after the command.

    The top-level parser holds the defaults; a command's copy sets a value only when it is
    given there, so ``indextts-client --url U say ...`` and ``indextts-client say ... --url U``
    mean the same.
    """
    connection = argparse.ArgumentParser(add_help=False)
    where = connection.add_argument_group("server")

    def default(value: str | None) -> str | None:
        return value if defaults else argparse.SUPPRESS

    where.add_argument(
        "--url",
        default=default(os.environ.get("INDEXTTS_URL", DEFAULT_URL)),
        help=f"the WebSocket URL (ws:// or wss://; default $INDEXTTS_URL or {DEFAULT_URL})",
    )
    where.add_argument(
        "--http-url",
        default=default(os.environ.get("INDEXTTS_HTTP_URL")),
        help="the HTTP API base, for voices (default $INDEXTTS_HTTP_URL, else --url's host, port 8771)",
    )
    where.add_argument(
        "--token",
        default=default(os.environ.get("INDEXTTS_TOKEN") or os.environ.get("INDEXTTS_SERVER_AUTH_TOKEN")),
        help="the server's --auth-token (default $INDEXTTS_TOKEN)",
    )
    return connection


def parser() -> argparse.ArgumentParser:
    connection = _connection_options(defaults=False)

    p = argparse.ArgumentParser(
        prog="indextts-client",
        description="Talk to indextts-server: speak text, check a task, manage the voice library.",
        epilog=ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_connection_options(defaults=True)],
    )
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = commands.add_parser(
        "say",
        parents=[connection],
        help="speak TEXT into a file (or stdout)",
        description="Speak TEXT over the WebSocket contract and write the audio.",
    )
    s.add_argument("text", nargs="?", metavar="TEXT", help="the text; '-' or none reads stdin")
    s.add_argument("-f", "--text-file", metavar="PATH", help="read the text from PATH ('-': stdin)")
    voice = s.add_mutually_exclusive_group()
    voice.add_argument("--voice", metavar="NAME", help="a voice from the server's library (default: default)")
    voice.add_argument("--prompt", metavar="PATH", help="a speaker audio file on the server (prompt_audio)")
    s.add_argument(
        "-o", "--output", metavar="PATH", help="where to write the audio ('-': stdout; default out.FORMAT)"
    )
    s.add_argument("--format", choices=FORMATS, default="wav", help="audio format (default %(default)s)")
    s.add_argument(
        "--stream", action="store_true", help="write each segment as soon as it arrives (not with flac)"
    )
    s.add_argument(
        "--sample-rate",
        type=int,
        choices=SAMPLE_RATES,
        metavar="HZ",
        help="resample the audio (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100 or 48000)",
    )
    s.add_argument(
        "--subtitles",
        metavar="PATH",
        help="also write each segment's text and time as subtitles (PATH ends in .srt or .vtt)",
    )
    s.add_argument("-q", "--quiet", action="store_true", help="no progress, only errors")
    emotion = s.add_argument_group("emotion (at most one of the first four)")
    emotion.add_argument("--emo-voice", metavar="NAME", help="a library voice as the emotion reference")
    emotion.add_argument(
        "--emo-audio", metavar="PATH", help="an audio file on the server as the emotion reference"
    )
    emotion.add_argument(
        "--emo-vector",
        metavar="V",
        type=_vector,
        help="8 numbers 0-1 (happy,angry,sad,afraid,disgusted,melancholic,surprised,calm) or happy=0.8,...",
    )
    emotion.add_argument("--emo-text", metavar="TEXT", help="describe the emotion in words")
    emotion.add_argument(
        "--emo-alpha", type=float, metavar="X", help="emotion weight 0-1 (reference or text)"
    )
    tuning = s.add_argument_group("synthesis")
    tuning.add_argument("--interval-silence", type=int, metavar="MS", help="pause between segments")
    tuning.add_argument("--max-tokens", type=int, metavar="N", help="tokens per segment")
    tuning.add_argument("--seed", type=int, help="fix sampling: same request, same audio")
    tuning.add_argument("--use-random", action="store_true", help="random emotion sampling")
    tuning.add_argument("--quick-first", type=int, metavar="N", help="keep the first segment N tokens short")
    tuning.add_argument(
        "--lang", metavar="CODE", help="the text's language: zh, en, ja, es or ar (default: from the text)"
    )
    tuning.add_argument(
        "--speed",
        type=float,
        metavar="X",
        help=f"speaking rate, {SPEED_MIN:g} to {SPEED_MAX:g} (1: the model's own; larger is faster)",
    )

    st = commands.add_parser(
        "status",
        parents=[connection],
        help="show a task's state",
        description="Print a task's status as JSON.",
    )
    st.add_argument("task_id", metavar="TASK_ID")

    v = commands.add_parser(
        "voices", help="list, add or remove library voices", description="The server's voice library."
    )
    actions = v.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[connection], help="list the voices")
    listing.add_argument("--json", action="store_true", help="print the server's JSON as it is")
    add = actions.add_parser("add", parents=[connection], help="upload a voice")
    add.add_argument("name", metavar="NAME")
    add.add_argument("audio", metavar="FILE", type=Path, help="wav, flac, mp3 or ogg; 1-30 s")
    add.add_argument("--ref-text", help="what the clip says (optional)")
    add.add_argument("--replace", action="store_true", help="replace a voice of the same name")
    remove = actions.add_parser("rm", parents=[connection], help="remove a voice")
    remove.add_argument("name", metavar="NAME")
    return p


def _vector(value: str) -> tuple[float, ...]:
    try:
        return parse_vector(value)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    try:
        match args.command:
            case "say":
                _say(args)
            case "status":
                reply = trio.run(task_status, args.url, args.token, args.task_id)
                print(json.dumps(reply, ensure_ascii=False, indent=2))
            case "voices":
                _voices(args)
    except UsageError as error:
        p.error(str(error))
    except Interrupted as stopped:
        print(f"error: {stopped}", file=sys.stderr)
        raise SystemExit(130) from None
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except BrokenPipeError:
        # The reader went away (``| head``): say nothing more, and keep Python quiet at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


def _read_text(args: argparse.Namespace) -> str:
    if args.text_file is not None and args.text is not None:
        raise UsageError("give TEXT or --text-file, not both")
    source = args.text_file if args.text_file is not None else args.text
    if source is None and sys.stdin.isatty():
        raise UsageError("no text to speak (give TEXT, --text-file, or text on stdin)")
    if source is None or source == "-":
        return sys.stdin.read()
    if args.text_file is None:
        return str(source)
    try:
        return Path(source).read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"--text-file: cannot read {source}: {error.strerror}") from None


def say_options(args: argparse.Namespace) -> SayOptions:
    """What ``say``'s command line asks for."""
    return SayOptions(
        text=_read_text(args),
        voice=args.voice,
        prompt=args.prompt,
        emo_voice=args.emo_voice,
        emo_audio=args.emo_audio,
        emo_vector=args.emo_vector,
        emo_text=args.emo_text,
        emo_alpha=args.emo_alpha,
        interval_silence=args.interval_silence,
        max_tokens=args.max_tokens,
        seed=args.seed,
        use_random=args.use_random,
        quick_first=args.quick_first,
        lang=args.lang,
        speed=args.speed,
        format=args.format,
        stream=args.stream,
        sample_rate=args.sample_rate,
        subtitles=args.subtitles,
    )


def _say(args: argparse.Namespace) -> None:
    options = say_options(args)
    request = build_request(options)
    wire, _ = wire_format(options)
    path = args.output or f"out.{options.format}"
    output = AudioOutput(path, streaming=options.stream, wav=options.format == "wav" and wire == "pcm")
    progress = Progress(sys.stderr, terminal=sys.stderr.isatty(), quiet=args.quiet)
    cues = trio.run(say, args.url, args.token, request, output, progress)
    if options.subtitles is not None:
        _write_subtitles(options.subtitles, cues)


def _write_subtitles(path: str, cues: list[dict[str, Any]]) -> None:
    document = subtitles(msgspec.convert(cues, list[Cue]), subtitle_kind(path))
    try:
        Path(path).write_text(document, encoding="utf-8")
    except OSError as error:
        raise ClientError(f"--subtitles: cannot write {path}: {error.strerror}") from None


def _voices(args: argparse.Namespace) -> None:
    library = VoiceLibrary(args.http_url or http_base(args.url), args.token)
    match args.action:
        case "list":
            voices = library.voices()
            if args.json:
                print(json.dumps({"voices": voices}, ensure_ascii=False, indent=2))
            else:
                _print_voices(voices, terminal=sys.stdout.isatty())
        case "add":
            added = library.add(args.name, args.audio, ref_text=args.ref_text, replace=args.replace)
            print(f"added {added.get('name', args.name)}", file=sys.stderr)
        case "rm":
            library.remove(args.name)
            print(f"removed {args.name}", file=sys.stderr)


def _print_voices(voices: list[dict[str, Any]], *, terminal: bool) -> None:
    rows = [
        (
            str(voice.get("name", voice.get("id", ""))),
            f"{voice['duration']:.1f}s" if isinstance(voice.get("duration"), int | float) else "",
            str(voice.get("created_at", "")),
        )
        for voice in voices
    ]
    if not terminal:
        for row in rows:
            print("\t".join(row))
        return
    if not rows:
        print("(no voices)")
        return
    width = max(len(row[0]) for row in rows)
    for name, duration, created in rows:
        print(f"{name:<{width}}  {duration:>7}  {created}")
