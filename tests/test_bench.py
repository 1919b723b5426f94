"""The load generator: a short run against a tone server and the floor gives a complete report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indextts_server.bench.results.record import PcmFormat, audio_seconds
from indextts_server.io.audio.encoding import wav_bytes

REPO = Path(__file__).resolve().parent.parent


def test_a_short_run_reports_every_figure_with_no_errors_and_nothing_lost(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "indextts_server.bench",
        "-c", "2", "-n", "6", "--idle", "2", "--warmup", "1",
        "--server-args", "--engine tone --log-level WARNING",
        "--duration-limit", "30", "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())

    for target in ("server", "floor"):
        summary = report[target]
        assert summary["completed"] == 6, summary
        assert (summary["errors"], summary["lost"], summary["not_sent"]) == (0, 0, 0)
        assert (summary["idle_opened"], summary["idle_dropped"]) == (2, 0)
        assert summary["throughput_rps"] > 0
        for figure in ("latency_s", "first_audio_s"):
            assert set(summary[figure]) == {"p50", "p95", "p99", "mean", "max"}
            assert summary[figure]["p50"] is not None
        assert summary["audio_seconds_per_request"] > 0
        assert summary["rtf"] is not None
        assert summary["peak_rss_kib"] > 0
    assert report["server"]["audio_seconds_per_request"] == report["floor"]["audio_seconds_per_request"]
    assert set(report["ratios"]) == {
        "p50_latency",
        "p95_latency",
        "p99_latency",
        "p50_first_audio",
        "throughput",
    }
    assert report["ratios"]["p50_latency"] is not None
    assert report["ratios"]["throughput"] is not None


def test_audio_seconds_reads_wav_headers_and_headerless_continuations() -> None:
    one_second = wav_bytes(np.zeros(22050, np.int16))
    seconds, fmt = audio_seconds(one_second, PcmFormat())
    assert seconds == 1.0
    open_ended = one_second[:40] + b"\xff\xff\xff\xff" + one_second[44:]
    assert audio_seconds(open_ended, PcmFormat())[0] == 1.0
    assert audio_seconds(bytes(11025), fmt)[0] == 0.25


def test_the_http_mode_runs_the_same_load_over_http_on_the_same_server(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "indextts_server.bench", "--http", "--no-floor",
        "-c", "2", "-n", "6", "--warmup", "1", "--field", "max_tokens=60",
        "--server-args", "--engine tone --log-level WARNING",
        "--duration-limit", "30", "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "the same load over HTTP" in done.stdout
    report = json.loads(out.read_text())
    ws, http = report["server"], report["http"]
    assert http["url"].startswith("http://127.0.0.1:")
    assert (http["completed"], http["errors"], http["lost"]) == (6, 0, 0)
    assert http["audio_seconds_per_request"] == ws["audio_seconds_per_request"]  # the same work
    assert report["http_ratios"]["p50_latency"] > 0


def test_the_wyoming_mode_runs_the_same_texts_whole_and_streamed_on_the_same_server(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "indextts_server.bench", "--wyoming", "--no-floor",
        "-c", "2", "-n", "6", "--warmup", "1", "--field", "stream=true",
        "--server-args", "--engine tone --log-level WARNING",
        "--duration-limit", "30", "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "the same load over Wyoming, whole" in done.stdout
    assert "the same load over Wyoming, streamed" in done.stdout
    report = json.loads(out.read_text())
    for name in ("wyoming", "wyoming_streamed"):
        summary = report[name]
        assert summary["url"].startswith("tcp://127.0.0.1:")
        assert (summary["completed"], summary["errors"], summary["lost"]) == (6, 0, 0), name
        assert report[f"{name}_ratios"]["p50_first_audio"] > 0
    # Whole, the same work as the WebSocket's; streamed, the same text in sentences (as long or longer).
    assert report["wyoming"]["audio_seconds_per_request"] == pytest.approx(
        report["server"]["audio_seconds_per_request"]
    )
    assert report["wyoming_streamed"]["audio_seconds_per_request"] > 0


def test_the_agents_mode_times_each_level_against_http_and_beside_a_long_contract_task(
    tmp_path: Path,
) -> None:
    out = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "indextts_server.bench", "--agents", "1,2", "--no-floor",
        "-n", "4", "--warmup", "1", "--field", "max_tokens=60",
        "--server-args", "--engine tone --tone-rtf 0.02 --log-level WARNING",
        "--duration-limit", "30", "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert "voice agents: sentence sent -> first audio" in done.stdout
    report = json.loads(out.read_text())
    assert [level["agents"] for level in report["agents"]] == [1, 2]
    for level in report["agents"]:
        assert level["http"]["url"].startswith("http://127.0.0.1:")
        assert level["alone"]["url"].endswith("/tts/websocket")
        for condition in ("http", "alone", "beside"):
            summary = level[condition]
            assert (summary["completed"], summary["errors"], summary["lost"]) == (4, 0, 0), condition
            assert summary["first_audio_s"]["p95"] is not None
        # The same sentences: as much audio over both wires (HTTP's pcm is OpenAI's 24 kHz, the
        # agents ask for the engines' 22050 Hz), and the long task was running meanwhile.
        assert level["alone"]["bytes_per_request"] / 22050 == pytest.approx(
            level["http"]["bytes_per_request"] / 24000, rel=0.01
        )
        assert level["long_segments"] >= 1 and level["long_errors"] == []
        assert level["alone_vs_http"]["p50_first_audio"] > 0
        assert level["p95_first_audio_beside_vs_alone"] > 0


def test_a_text_is_streamed_word_by_word_or_two_characters_at_a_time() -> None:
    from indextts_server.bench.drive.wyoming import pieces

    assert pieces("Hello there. How") == ["Hello ", "there. ", "How"]
    assert pieces("大家好，我") == ["大家", "好，", "我"]


def test_speech_bodies_mean_what_the_websocket_frames_mean() -> None:
    from indextts_server.bench.drive.http import speech_bodies

    frame = json.dumps({"type": "tts_stream", "text": "你好", "prompt_audio": "asset/zero_shot_prompt.wav",
                        "emo_mode": "none", "max_tokens": 60, "format": "mp3", "stream": True})  # fmt: skip
    assert json.loads(speech_bodies([frame])[0]) == {
        "voice": "default", "response_format": "mp3", "input": "你好", "emo_mode": "none",
        "max_tokens": 60, "stream": True,
    }  # fmt: skip


def test_the_cluster_benchmark_runs_scaling_and_latency_on_its_own_redis(tmp_path: Path) -> None:
    out = tmp_path / "cluster.json"
    command = [
        sys.executable, "-m", "indextts_server.bench.probes.cluster",
        "--workers", "1", "2", "--requests-per-worker", "3", "--latency-requests", "4",
        "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert [row["workers"] for row in report["scaling"]] == [1, 2]
    for row in report["scaling"]:
        assert (row["completed"], row["errors"], row["lost"]) == (3 * row["workers"], 0, 0)
    assert report["scaling"][0]["speedup"] == 1.0
    assert [row["target"] for row in report["latency"]] == ["embedded", "broker"]
    assert all(row["completed"] == 4 for row in report["latency"])
    assert report["added_p50_ms"] is not None


def test_batch_sizes_run_the_same_load_on_a_server_each_and_report_their_ratios(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "indextts_server.bench",
        "-c", "2", "-n", "4", "--warmup", "1", "--no-floor", "--batch-size", "1,2",
        "--server-args", "--engine tone --log-level WARNING", "--field", "max_tokens=20",
        "--corpus", str(REPO / "bench" / "corpus-segments.txt"), "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "the same load at each --batch-size" in done.stdout
    report = json.loads(out.read_text())
    scaling = report["scaling"]
    assert [row["batch_size"] for row in scaling] == [1, 2]
    for row in scaling:
        assert (row["summary"]["completed"], row["summary"]["errors"], row["summary"]["lost"]) == (4, 0, 0)
        assert row["ratios"]["throughput"] > 0
    assert scaling[0]["ratios"]["throughput"] == 1.0
    assert report["server"]["completed"] == 4
