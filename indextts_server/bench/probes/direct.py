"""Served against direct: the same requests through the server, and through the library as a plain script.

    python -m indextts_server.bench.probes.direct --model-dir DIR --cfg-path FILE [--rounds 6]

Set ``HF_HUB_CACHE``/``HF_HUB_OFFLINE`` first when the model's auxiliary files come from a local
cache (the tiny test checkpoint prints the exports). One run starts two processes side by side:

- the server (``python -m indextts_server --engine indextts2``), asked over its WebSocket;
- a plain script: a process whose main thread loads ``indextts.infer_v2.IndexTTS2`` and calls
  ``infer`` itself, as a user's script would, one request per line on its stdin.

Each round sends the same request (text, prompt, seed, ``max_mel_tokens``) to both, in turn, the
order alternating between rounds so neither always goes first; only one of them works at any
time. The served figure is the engine seconds the server reports in ``end``'s ``timing``
(``rtf`` × ``audio_seconds``); the direct figure is the seconds ``infer`` took. The report gives
the medians and their ratio, served / direct (what the server's way of calling the model costs),
and the median of each round's own ratio (``paired_ratio``, steadier when other work shares the
machine and its load drifts during the run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import trio
from trio_websocket import open_websocket_url

REPO = Path(__file__).resolve().parents[3]
PROMPT = REPO / "asset" / "zero_shot_prompt.wav"
TEXT = "大家好，今天天气很好，我们一起去公园散步吧。"
READY_TIMEOUT = 600.0


def plain_script(model_dir: str, cfg_path: str, device: str, max_mel_tokens: int) -> None:
    """The direct side: the library loaded and called in this process's main thread, like a script.

    Reads ``{"text", "seed"}`` lines, answers ``{"seconds", "samples"}`` lines.
    """
    import numpy as np
    import torch
    from indextts.infer_v2 import IndexTTS2  # type: ignore[import-untyped]

    model = IndexTTS2(model_dir=model_dir, cfg_path=cfg_path, device=device)

    def say(text: str, seed: int) -> tuple[float, int]:
        torch.manual_seed(seed)
        np.random.seed(seed)
        began = time.perf_counter()
        result = model.infer(str(PROMPT), text, None, max_mel_tokens=max_mel_tokens, verbose=False)
        seconds = time.perf_counter() - began
        return seconds, len(result[1]) if isinstance(result, tuple) else 0

    say("你好，今天天气很好。", 0)  # warm-up, as the server does at start
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        seconds, samples = say(request["text"], request["seed"])
        print(json.dumps({"seconds": seconds, "samples": samples}), flush=True)


class Process:
    """A child process, its stderr kept (last lines) by a thread so the pipe never fills."""

    def __init__(self, command: list[str], *, stdin: int | None = None, stdout: int | None = None):
        self.command = command
        self.popen = subprocess.Popen(
            command, cwd=REPO, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.listening = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, args=(self.popen.stderr,), daemon=True).start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines = [*self.lines[-40:], line]
            if found := re.search(r"listening on (ws://\S+)", line):
                self.url = found.group(1)
                self.listening.set()
        self.listening.set()

    def fail(self, what: str) -> SystemExit:
        return SystemExit(f"{what}: {' '.join(self.command)}\n" + "".join(self.lines[-20:]))

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


async def served(url: str, text: str, seed: int) -> tuple[float, float]:
    """One request over the WebSocket: engine seconds and audio seconds from ``end``'s timing."""
    request = {"type": "tts_stream", "text": text, "prompt_audio": str(PROMPT), "seed": seed, "details": True}
    async with open_websocket_url(url, max_message_size=1 << 26) as ws:
        await ws.get_message()  # welcome
        await ws.send_message(json.dumps(request))
        while True:
            message = await ws.get_message()
            if isinstance(message, bytes):
                continue
            reply: dict[str, Any] = json.loads(message)
            if reply.get("type") == "end":
                timing = reply["timing"]
                return timing["rtf"] * timing["audio_seconds"], timing["audio_seconds"]
            if reply.get("status") == "error":
                raise SystemExit(f"the server failed the request: {reply['message']}")


def ask_direct(script: Process, text: str, seed: int) -> dict[str, Any]:
    assert script.popen.stdin is not None and script.popen.stdout is not None
    script.popen.stdin.write(json.dumps({"text": text, "seed": seed}) + "\n")
    script.popen.stdin.flush()
    line = script.popen.stdout.readline()
    if not line:
        raise script.fail("the plain script exited")
    answer: dict[str, Any] = json.loads(line)
    return answer


def median_ratio(served_s: Sequence[float], direct_s: Sequence[float]) -> float:
    return statistics.median(served_s) / statistics.median(direct_s)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m indextts_server.bench.probes.direct", description=__doc__
    )
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--cfg-path", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-mel-tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--server-args", default="", help="more arguments for the server")
    parser.add_argument("--json", type=Path, help="write the report here too")
    parser.add_argument("--plain-script", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_script:
        plain_script(args.model_dir, args.cfg_path, args.device, args.max_mel_tokens)
        return
    common = ["--model-dir", args.model_dir, "--cfg-path", args.cfg_path, "--device", args.device]
    common += ["--max-mel-tokens", str(args.max_mel_tokens)]
    server = Process(
        [sys.executable, "-m", "indextts_server", "--engine", "indextts2", "--host", "127.0.0.1",
         "--port", "0", "--http-port", "off", *common, *args.server_args.split()]
    )  # fmt: skip
    script = Process(
        [sys.executable, "-m", "indextts_server.bench.probes.direct", "--plain-script", *common],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        if not server.listening.wait(READY_TIMEOUT) or not server.url:
            raise server.fail("the server never listened")
        assert script.popen.stdout is not None
        if not script.popen.stdout.readline():
            raise script.fail("the plain script never got ready")
        report = trio.run(_rounds, server.url, script, args)
    finally:
        server.stop()
        script.stop()
    report["env"] = {key: os.environ.get(key) for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


async def _rounds(url: str, script: Process, args: argparse.Namespace) -> dict[str, Any]:
    served_s: list[float] = []
    direct_s: list[float] = []
    audio_s: list[float] = []
    direct_audio_s: list[float] = []
    await served(url, args.text, 0)  # the first request pays for its prompt's conditioning: not counted
    await trio.to_thread.run_sync(ask_direct, script, args.text, 0)
    for index in range(args.rounds):
        seed = index + 1
        legs = ["served", "direct"] if index % 2 == 0 else ["direct", "served"]
        for leg in legs:
            if leg == "served":
                seconds, audio = await served(url, args.text, seed)
                served_s.append(seconds)
                audio_s.append(audio)
            else:
                answer = await trio.to_thread.run_sync(ask_direct, script, args.text, seed)
                direct_s.append(answer["seconds"])
                direct_audio_s.append(answer["samples"] / 22050)
        print(f"round {index + 1}: served {served_s[-1]:.3f} s, direct {direct_s[-1]:.3f} s", file=sys.stderr)
    return {
        "rounds": args.rounds,
        "max_mel_tokens": args.max_mel_tokens,
        "served_s": [round(x, 4) for x in served_s],
        "direct_s": [round(x, 4) for x in direct_s],
        "served_median_s": round(statistics.median(served_s), 4),
        "direct_median_s": round(statistics.median(direct_s), 4),
        "ratio": round(median_ratio(served_s, direct_s), 3),
        # each round's own ratio, then their median: robust to load that drifts over the run
        "paired_ratio": round(statistics.median(s / d for s, d in zip(served_s, direct_s, strict=True)), 3),
        "audio_s": round(statistics.median(audio_s), 3),
        "direct_audio_s": round(statistics.median(direct_audio_s), 3),
    }


if __name__ == "__main__":
    main()
