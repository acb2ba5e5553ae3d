"""`omnic bench` on a tiny gguf build (+ a Core ML entry): one row per artifact, every field,
numbers checked against quantities computed here independently."""

from __future__ import annotations

import time

import numpy as np
import pytest
from bench_params import DECODE, PROMPT, REPEAT, THREADS

REQUIRED = ("load_s", "ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_mb",
            "ceiling_tokens_per_s", "fraction_of_ceiling", "bytes_per_token", "weight_bytes",
            "threads", "settings", "precision", "runtime")


def _row(report, target):
    rows = [r for r in report["rows"] if r["target"] == target]
    assert len(rows) == 1, [r["target"] for r in report["rows"]]
    return rows[0]


def test_one_row_per_artifact_and_exit_status(bench_run, tiny_build):
    assert bench_run.code == 0, bench_run.stderr  # not_run is reported, not failed
    assert [r["target"] for r in bench_run.report["rows"]] == [
        a.target for a in tiny_build.manifest.artifacts]
    assert "gguf" in bench_run.stdout and "needs macOS" in bench_run.stdout  # the table


def test_gguf_row_has_every_field(bench_run):
    row = _row(bench_run.report, "gguf")
    assert row["status"] == "ok", row.get("reason")
    missing = [k for k in REQUIRED if row.get(k) is None]
    assert not missing
    for key in ("ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s"):
        stat = row[key]
        assert stat["n"] == REPEAT and stat["min"] <= stat["median"] <= stat["max"]
        assert stat["min"] > 0
    assert row["peak_rss_mb"] >= row["rss_after_load_mb"] > row["baseline_rss_mb"] > 0
    s = bench_run.report["settings"]
    assert (s["threads"], s["prompt_tokens"], s["decode_tokens"]) == (THREADS, PROMPT, DECODE)


def test_threads_reach_the_runtime(bench_run):
    settings = _row(bench_run.report, "gguf")["settings"]
    assert settings["llama.cpp n_threads"] == settings["llama.cpp n_threads_batch"] == THREADS
    assert settings["env"]["OMP_NUM_THREADS"] == str(THREADS)
    assert bench_run.report["bandwidth"]["threads"] == THREADS


def test_ceiling_from_bandwidth_and_bytes(bench_run, tiny_build):
    """bytes per token = the .gguf file (F32 weights of the tiny model, tied embeddings: all of
    it is read) + K and V of 2 layers x 2 kv heads x 16 dims x 4 bytes at the mean position."""
    row = _row(bench_run.report, "gguf")
    weights = sum(p.stat().st_size for p in (tiny_build.dir / "gguf").glob("*.gguf"))
    assert row["weight_bytes"] == weights
    # the fp32 weights are most of the file (the rest: metadata and the 320-token vocabulary)
    params = tiny_build.manifest.memory_plan["parameters"]
    assert 4 * params <= weights < 4 * params * 1.3
    mean_pos = PROMPT + (DECODE + 1) / 2
    kv = 2 * 2 * 2 * 16 * 4 * mean_pos
    assert row["kv_bytes_per_token"] == pytest.approx(kv)
    assert row["bytes_per_token"] == pytest.approx(weights + kv)
    gbps = bench_run.report["bandwidth"]["gbps"]
    assert row["ceiling_tokens_per_s"] == pytest.approx(gbps * 1e9 / (weights + kv))
    assert row["fraction_of_ceiling"] == pytest.approx(
        row["decode_tokens_per_s"]["median"] / row["ceiling_tokens_per_s"])


def test_decode_rate_matches_a_direct_timing(bench_run, tiny_build, monkeypatch):
    """The same artifact timed here, in-process: the bench's tokens/s is tokens per second."""
    from omnic.compiler.artifact_runner import open_build_runner

    monkeypatch.setenv("OMNIC_THREADS", str(THREADS))
    runner = open_build_runner(tiny_build.dir, "gguf")
    rates = []
    for _ in range(3):
        runner.reset()
        runner.forward(np.arange(PROMPT, dtype=np.int64))
        start = time.perf_counter()
        for t in range(DECODE):
            runner.forward(np.array([t], dtype=np.int64))
        rates.append(DECODE / (time.perf_counter() - start))
    mine = float(np.median(rates))
    theirs = _row(bench_run.report, "gguf")["decode_tokens_per_s"]["median"]
    # a shared machine is noisy; a unit error (ms vs s, tokens vs steps x layers) is not 10x-close
    assert mine / 10 < theirs < mine * 10, (theirs, mine)


def test_coreml_is_reported_not_run(bench_run):
    row = _row(bench_run.report, "coreml")
    assert row["status"] == "not_run"
    assert "needs macOS" in row["reason"]
    assert row["decode_tokens_per_s"] is None and row["fraction_of_ceiling"] is None


def test_each_artifact_in_its_own_process(bench_run):
    import os

    pids = [r["pid"] for r in bench_run.report["rows"]]
    assert len(set(pids)) == len(pids) and os.getpid() not in pids


def test_bad_input_exits_2(tiny_build, capsys):
    from omnic.cli.main import main

    assert main(["bench", str(tiny_build.dir), "--prompt-tokens", "60",
                 "--decode-tokens", "10"]) == 2  # 70 > context 64
    assert main(["bench", str(tiny_build.dir), "--targets", "onnx"]) == 2  # not in the build
    assert "context length 64" in capsys.readouterr().err
