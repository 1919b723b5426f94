"""The prepared GPU benchmark: full-size checkpoint, RTF served against direct, tasks/s at N = 1…16.

    python -m indextts_server.bench.gpu --out DIR            # on a machine with one CUDA GPU
    python -m indextts_server.bench.gpu --out DIR --smoke    # the same steps, tiny and on CPU

One run, in order, each step a child process with a time limit:

1. builds the full-size random-weight IndexTTS-2 checkpoint (the real widths and depths;
   ``devtools.tiny_checkpoint --full-size``) under ``--workdir``, or reuses it;
2. RTF at ``--batch-size 1`` served against the library called directly
   (``bench.probes.direct``: the same requests, one at a time, to a server and to a plain script);
3. streaming inside a segment (``bench.probes.chunked``): first audio and RTF of one
   ``--chunk-codes``-code segment chunked against the same pipeline in one window and against
   today's unchunked path, interleaved, with the chunked mode's correctness checks;
4. tasks/s with ``--clients`` connections at each ``--batch-size`` in ``--sizes``, one server per
   size, the same load on each (``python -m indextts_server.bench --batch-size 1,2,…``), every
   request a 2–3 segment text from ``bench/corpus-segments.txt`` and every segment capped at
   ``--max-mel-tokens`` codes (random weights decode exactly the cap).

It writes ``gpu-bench.json`` (every figure, the card, the versions, each step's seconds) and
``gpu-bench.md`` (the tables for bench/README.md) to ``--out`` after every step, so a run cut
short still leaves what it measured; each step's output is kept in ``--out`` as ``*.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "bench" / "corpus-segments.txt"


class Plan:
    """What one run does: the full GPU plan, or ``--smoke``'s tiny CPU one."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.smoke: bool = args.smoke
        self.out: Path = args.out.resolve()
        self.workdir: Path = (args.workdir or Path("/tmp/indextts-gpu-bench")).resolve()
        self.device: str = args.device or ("cpu" if self.smoke else "cuda")
        small = self.smoke
        self.sizes: list[int] = args.sizes or ([1, 2] if small else [1, 2, 4, 8, 16])
        self.clients: int = args.clients or (2 if small else 16)
        self.requests: int = args.requests or (2 if small else 32)
        self.rounds: int = args.rounds or (1 if small else 4)
        self.max_mel_tokens: int = args.max_mel_tokens or (8 if small else 40)
        self.chunk_codes: int = args.chunk_codes or (90 if small else 250)
        self.step_timeout: float = args.step_timeout
        self.server_args: list[str] = shlex.split(args.server_args)
        self.results: dict[str, Any] = {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m indextts_server.bench.gpu", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="where gpu-bench.json, gpu-bench.md and the logs go"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where the checkpoint is built (default /tmp/indextts-gpu-bench)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="the tiny checkpoint on CPU, tiny loads: checks the steps"
    )
    parser.add_argument("--device", help="cuda (default), cuda:N or cpu (default with --smoke)")
    parser.add_argument("--sizes", type=_sizes, help="batch sizes (default 1,2,4,8,16)")
    parser.add_argument("--clients", type=int, help="connections of the scaling load (default 16)")
    parser.add_argument("--requests", type=int, help="requests per batch size (default 32)")
    parser.add_argument("--rounds", type=int, help="rounds of served against direct (default 4)")
    parser.add_argument("--max-mel-tokens", type=int, help="codes per segment (default 40, ~0.8 s of audio)")
    parser.add_argument(
        "--chunk-codes", type=int, help="codes of the chunked-streaming step's segment (default 250, ~5 s)"
    )
    parser.add_argument("--server-args", default="", help="more server arguments, e.g. --fp16 (scaling only)")
    parser.add_argument("--step-timeout", type=float, default=420.0, help="seconds each step may take")
    plan = Plan(parser.parse_args(argv))
    plan.out.mkdir(parents=True, exist_ok=True)
    plan.results["settings"] = {
        key: getattr(plan, key)
        for key in (
            "smoke",
            "device",
            "sizes",
            "clients",
            "requests",
            "rounds",
            "max_mel_tokens",
            "chunk_codes",
            "server_args",
        )
    }
    plan.results["machine"] = _machine(plan.device)
    if plan.device.startswith("cuda") and not plan.results["machine"].get("cuda"):
        _write(plan)
        print("no CUDA device: run on a machine with one GPU, or pass --smoke (CPU, tiny)", file=sys.stderr)
        return 2
    began = time.monotonic()
    ok = _checkpoint(plan) and _direct(plan) and _chunked(plan) and _scaling(plan)
    plan.results["total_s"] = round(time.monotonic() - began, 1)
    _write(plan)
    print((plan.out / "gpu-bench.md").read_text(encoding="utf-8"))
    return 0 if ok else 1


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def _machine(device: str) -> dict[str, Any]:
    import torch

    machine: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        index = (torch.device(device).index or 0) if device.startswith("cuda") else 0
        props = torch.cuda.get_device_properties(index)
        machine["gpu"] = props.name
        machine["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        machine["cuda_version"] = torch.version.cuda
    return machine


def _run(plan: Plan, name: str, command: list[str], env: dict[str, str] | None = None) -> bool:
    """One step in a child process, its output in ``OUT/name.log``; records its seconds and status."""
    log = plan.out / f"{name}.log"
    print(f"[{name}] {shlex.join(command)}", file=sys.stderr, flush=True)
    began = time.monotonic()
    with log.open("w", encoding="utf-8") as sink:
        try:
            done = subprocess.run(
                command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=plan.step_timeout
            )
            status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
        except subprocess.TimeoutExpired:
            status = f"timed out after {plan.step_timeout:.0f} s"
    seconds = round(time.monotonic() - began, 1)
    plan.results.setdefault("steps", {})[name] = {"status": status, "seconds": seconds}
    print(f"[{name}] {status} in {seconds} s", file=sys.stderr, flush=True)
    if status != "ok":
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        print(tail, file=sys.stderr)
    _write(plan)
    return status == "ok"


def _checkpoint(plan: Plan) -> bool:
    from indextts_server.devtools.tiny_checkpoint import TinyCheckpoint, offline_env

    root = plan.workdir / ("tiny" if plan.smoke else "full")
    module = "indextts_server.devtools.tiny_checkpoint"
    ok = _run(
        plan,
        "checkpoint",
        [sys.executable, "-m", module, str(root), *([] if plan.smoke else ["--full-size"])],
    )
    ckpt = TinyCheckpoint(root / "model", root / "model" / "config.yaml", root / "hub")
    os.environ.update(offline_env(ckpt))  # every later child resolves the auxiliary models offline
    plan.results["checkpoint"] = {"root": str(root), "full_size": not plan.smoke}
    return ok


def _model_args(plan: Plan) -> list[str]:
    root = Path(plan.results["checkpoint"]["root"])
    return ["--model-dir", str(root / "model"), "--cfg-path", str(root / "model" / "config.yaml")]


def _direct(plan: Plan) -> bool:
    out = plan.out / "direct.json"
    command = [
        sys.executable, "-m", "indextts_server.bench.probes.direct", *_model_args(plan),
        "--device", plan.device, "--max-mel-tokens", str(plan.max_mel_tokens),
        "--rounds", str(plan.rounds), "--json", str(out),
    ]  # fmt: skip
    if not _run(plan, "direct", command):
        return False
    report = json.loads(out.read_text(encoding="utf-8"))
    plan.results["direct"] = {
        "served_median_s": report["served_median_s"],
        "direct_median_s": report["direct_median_s"],
        "served_rtf": _ratio(report["served_median_s"], report["audio_s"]),  # engine seconds / audio
        "direct_rtf": _ratio(report["direct_median_s"], report["direct_audio_s"]),
        "served_over_direct": report["ratio"],
        "paired_ratio": report["paired_ratio"],
        "audio_s": report["audio_s"],
        "rounds": report["rounds"],
    }
    _write(plan)
    return True


def _chunked(plan: Plan) -> bool:
    """First audio and RTF, chunked against whole (`bench.probes.chunked`), and its checks."""
    command = [
        sys.executable, "-m", "indextts_server.bench.probes.chunked", *_model_args(plan),
        "--device", plan.device, "--codes", str(plan.chunk_codes), "--rounds", str(plan.rounds),
    ]  # fmt: skip
    if not _run(plan, "chunked", command):
        return False
    lines = (plan.out / "chunked.log").read_text(encoding="utf-8").splitlines()
    report = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    audio = float(report["audio_s"])
    plan.results["chunked"] = {
        **{key: report[key] for key in ("codes_match", "prefix_latents_match", "vocoder_context")},
        **{key: report[key] for key in ("seam_jump", "inner_jump", "mel_l1_chunked", "mel_l1_seeds")},
        "audio_s": audio,
        **{
            f"{mode}_{what}": report.get(f"{what}_{mode}")
            for mode in ("chunked", "window", "off")
            for what in ("first", "total")
        },
        **{f"{mode}_rtf": _ratio(report[f"total_{mode}"], audio) for mode in ("chunked", "window", "off")},
    }
    _write(plan)
    return True


def _scaling(plan: Plan) -> bool:
    out = plan.out / "scaling.json"
    server = [
        "--engine", "indextts2", *_model_args(plan), "--device", plan.device,
        "--max-mel-tokens", str(plan.max_mel_tokens), "--log-level", "WARNING", *plan.server_args,
    ]  # fmt: skip
    command = [
        sys.executable, "-m", "indextts_server.bench",
        "-c", str(plan.clients), "-n", str(plan.requests), "--warmup", "1", "--no-floor",
        "--batch-size", ",".join(map(str, plan.sizes)), "--corpus", str(CORPUS),
        "--field", "max_tokens=30", "--field", "stream=true", "--server-args", shlex.join(server),
        "--duration-limit", str(int(plan.step_timeout)), "--json", str(out),
    ]  # fmt: skip
    if not _run(plan, "scaling", command):
        return False
    rows = json.loads(out.read_text(encoding="utf-8"))["scaling"]
    plan.results["scaling"] = [
        {
            "batch_size": row["batch_size"],
            "completed": row["summary"]["completed"],
            "errors": row["summary"]["errors"],
            "lost": row["summary"]["lost"],
            "tasks_per_s": _round(row["summary"]["throughput_rps"], 3),
            "vs_first": _round(row["ratios"]["throughput"], 2),
            "latency_p50_s": _round(row["summary"]["latency_s"]["p50"], 2),
            "latency_p95_s": _round(row["summary"]["latency_s"]["p95"], 2),
            "rtf": _round(row["summary"]["rtf"], 4),
        }
        for row in rows
    ]
    _write(plan)
    return all(row["completed"] == plan.requests for row in plan.results["scaling"])


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _ratio(seconds: float, audio: float) -> float | None:
    return round(seconds / audio, 4) if audio else None


def _write(plan: Plan) -> None:
    results = plan.results
    (plan.out / "gpu-bench.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    machine = results.get("machine", {})
    card = machine.get("gpu") or "no GPU (CPU)"
    lines = [
        f"# GPU benchmark ({'smoke, tiny checkpoint' if plan.smoke else 'full-size checkpoint'})",
        "",
        f"Card: {card}; torch {machine.get('torch')}, CUDA {machine.get('cuda_version')}; "
        f"device `{plan.device}`; {plan.max_mel_tokens} codes per segment.",
        "",
    ]
    direct = results.get("direct")
    if direct:
        lines += [
            "| served RTF | direct RTF | served / direct | paired | rounds |",
            "|---|---|---|---|---|",
            f"| {direct['served_rtf']} | {direct['direct_rtf']} | {direct['served_over_direct']}x "
            f"| {direct['paired_ratio']}x | {direct['rounds']} |",
            "",
        ]
    chunked = results.get("chunked")
    if chunked:
        lines += [
            f"Streaming inside a segment, one segment of {plan.chunk_codes} codes "
            f"({chunked['audio_s']} s of audio):",
            "",
            "| mode | first audio | total | RTF |",
            "|---|---|---|---|",
            *(
                f"| {mode} | {chunked[f'{mode}_first']} s | {chunked[f'{mode}_total']} s "
                f"| {chunked[f'{mode}_rtf']} |"
                for mode in ("chunked", "window", "off")
            ),
            "",
        ]
    scaling = results.get("scaling")
    if scaling:
        lines += [
            f"| clients | `--batch-size` | completed | tasks/s | vs N = {scaling[0]['batch_size']} "
            "| latency p50 | latency p95 |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in scaling:
            lines.append(
                f"| {plan.clients} | {row['batch_size']} | {row['completed']}/{plan.requests} | "
                f"{row['tasks_per_s']} | {row['vs_first']}x | {row['latency_p50_s']} s | "
                f"{row['latency_p95_s']} s |"
            )
        lines.append("")
    steps = results.get("steps", {})
    lines.append(
        "Steps: " + ", ".join(f"{name} {s['status']} ({s['seconds']} s)" for name, s in steps.items())
    )
    (plan.out / "gpu-bench.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
