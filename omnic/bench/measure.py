"""`bench_build`: every runnable artifact of a build, measured the same way, against the limit
that memory bandwidth puts on decoding.

Decode ceiling of an artifact = bandwidth / bytes read per generated token, where
- weights read = the artifact's weight bytes (its files minus tokenizer, config and code files)
  x the share of the weights a decode step reads, from the build's memory plan
  (`decode_bytes_per_token_empty / weight_bytes`: 1 for tied embeddings, less when an untied
  embedding table contributes one gathered row);
- KV read = K and V of every layer for the positions attended to, averaged over the decode steps
  (position p reads p+1 vectors; fp32 elements, or 1 byte + an fp16 scale per vector for int8).
  A runtime with a static cache that attends over all of it reads more: that is its own cost.
When the weights fit in the last-level cache the DRAM ceiling does not bind, and a fraction
above 1 is possible; the row says so.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from omnic.bench import threads as th
from omnic.bench.bandwidth import Bandwidth, measure_bandwidth, usable_cpus
from omnic.bench.worker import REFERENCE

BENCH_FORMAT = 1
# Files in an artifact that are not weights: tokenizers, configs, compiled code.
NON_WEIGHT_SUFFIXES = (".json", ".txt", ".model", ".so", ".dylib", ".dll", ".tiktoken", ".yaml",
                       ".py", ".md")
KV_FP32_BYTES = 4
KV_INT8_SCALE_BYTES = 2  # fp16 scale per head vector, as in omnic.compiler.plan
WORKER_TIMEOUT_S = 3600


class BenchError(ValueError):
    """Bad input to `omnic bench` (no build, unknown target, impossible token counts)."""


@dataclass(frozen=True)
class BenchSettings:
    """How every artifact is measured (recorded in the output)."""

    threads: int = field(default_factory=usable_cpus)
    prompt_tokens: int = 64
    decode_tokens: int = 32
    repeat: int = 5
    warmup: int = 1
    seed: int = 0
    targets: tuple[str, ...] | None = None  # None: every target of the build
    bandwidth_bytes: int | None = None  # None: 4 x the last-level cache (see bandwidth.py)
    bandwidth_repeat: int = 5


def weight_files(path: Path) -> list[Path]:
    """The files of an artifact that hold weights (a file artifact is its own weight file)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file()
                  and not p.name.lower().endswith(NON_WEIGHT_SUFFIXES)
                  and not p.name.lower().startswith("tokenizer"))


def kv_bytes_per_token(spec: dict, prompt_tokens: int, decode_tokens: int) -> float:
    """Mean KV-cache bytes one decode step reads (positions prompt_tokens .. +decode_tokens-1)."""
    m = spec["model"]
    kv_heads = m.get("n_kv_heads") or m["n_heads"]
    head_dim = m.get("head_dim") or m["d_model"] // m["n_heads"]
    if spec.get("quantization", {}).get("kv_cache") == "int8":
        per_vector = head_dim + KV_INT8_SCALE_BYTES
    else:
        per_vector = head_dim * KV_FP32_BYTES
    mean_positions = prompt_tokens + (decode_tokens + 1) / 2  # position p attends to p+1
    # a resolved spec's table: its short_conv layers read a fixed-size state, not a KV cache
    table = m.get("layers") or []
    layers = m["n_layers"] - sum(row.get("attention") == "short_conv" for row in table)
    return 2 * layers * kv_heads * per_vector * mean_positions


def read_share(memory_plan: dict) -> float:
    """Share of the weight bytes one decode step reads, from the memory plan."""
    weights = memory_plan.get("weight_bytes") or 0
    read = memory_plan.get("decode_bytes_per_token_empty") or 0
    return min(1.0, read / weights) if weights and read else 1.0


def summary(values: Sequence[float]) -> dict[str, float] | None:
    """median, min, max and spread = (max - min) / median."""
    if not values:
        return None
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / med if med else 0.0, "n": len(values)}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def host_info(bw: Bandwidth | None) -> dict[str, Any]:
    import platform

    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpus": usable_cpus(), "llc_bytes": bw.llc_bytes if bw else None}


def run_worker(build_dir: Path, target: str, component: str, s: BenchSettings) -> dict[str, Any]:
    """One artifact in a fresh `python -m omnic.bench.worker` process (its own peak RSS)."""
    with tempfile.TemporaryDirectory(prefix="omnic-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "omnic.bench.worker", str(build_dir), target,
               "--out", str(out), "--component", component, "--threads", str(s.threads),
               "--prompt-tokens", str(s.prompt_tokens), "--decode-tokens", str(s.decode_tokens),
               "--repeat", str(s.repeat), "--warmup", str(s.warmup), "--seed", str(s.seed)]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=th.worker_env(s.threads), capture_output=True,
                                  text=True, timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"status": "error", "reason": f"timed out after {WORKER_TIMEOUT_S} s"}
        if not out.is_file():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            return {"status": "error", "reason": f"worker exited with status {proc.returncode}"
                    + (": " + " | ".join(tail) if tail else "")}
        result = json.loads(out.read_text(encoding="utf-8"))
        result["worker_s"] = time.perf_counter() - start
        return result


def row_of(entry: Any, result: dict[str, Any], manifest: Any, build_dir: Path,
           bw: Bandwidth | None, s: BenchSettings) -> dict[str, Any]:
    """One output row: the worker's timings turned into rates, the ceiling and the fraction."""
    spec, plan = manifest.spec, manifest.memory_plan
    row: dict[str, Any] = {
        "target": result.get("target"), "component": result.get("component"),
        "status": result.get("status"), "reason": result.get("reason"),
        "runtime": result.get("runtime"), "threads": s.threads,
        "settings": result.get("settings"),
    }
    if result.get("traceback"):
        row["traceback"] = result["traceback"]
    if entry is not None:
        files = weight_files(build_dir / entry.path)
        weights = sum(f.stat().st_size for f in files)
        row.update(path=entry.path, precision=entry.precision, artifact_bytes=entry.bytes,
                   weight_bytes=weights,
                   weight_files=[f.relative_to(build_dir).as_posix() for f in files])
    else:  # the reference: fp32 weights in memory
        weights = 4 * plan.get("parameters", 0)
        row.update(path=None, precision="fp32", artifact_bytes=None, weight_bytes=weights,
                   weight_files=[])
    kv = kv_bytes_per_token(spec, s.prompt_tokens, s.decode_tokens)
    per_token = weights * read_share(plan) + kv
    row.update(kv_bytes_per_token=kv, bytes_per_token=per_token,
               ceiling_tokens_per_s=(bw.gbps * 1e9 / per_token) if bw and per_token else None,
               fits_llc=bool(bw and bw.llc_bytes and weights <= bw.llc_bytes))
    for key in ("load_s", "baseline_rss_mb", "rss_after_load_mb", "peak_rss_mb", "worker_s", "pid"):
        row[key] = result.get(key)
    runs = result.get("runs") or []
    if row["status"] != "ok" or not runs:
        row.update(ttft_ms=None, prefill_tokens_per_s=None, decode_tokens_per_s=None,
                   fraction_of_ceiling=None)
        return row
    row["ttft_ms"] = summary([1e3 * r["ttft_s"] for r in runs])
    row["prefill_tokens_per_s"] = summary([s.prompt_tokens / r["prefill_s"] for r in runs])
    row["decode_tokens_per_s"] = summary([s.decode_tokens / r["decode_s"] for r in runs])
    ceiling = row["ceiling_tokens_per_s"]
    row["fraction_of_ceiling"] = (row["decode_tokens_per_s"]["median"] / ceiling
                                  if ceiling else None)
    return row


def bench_build(build_dir: str | Path, settings: BenchSettings | None = None,
                log: Callable[[str], None] | None = None, verify: bool = True) -> dict[str, Any]:
    """Measure every decoder artifact of a build (each in its own process) and the bandwidth.

    Args:
        build_dir: an omnic build (a directory with manifest.json).
        settings: how to measure (threads, token counts, repetitions, targets).
        log: called with one line per step (progress), or None.
        verify: refuse the build when an artifact to measure is not the one the manifest
            records (its sha256); checked once here, before any worker starts.

    Returns:
        The report (JSON-able): settings, host, bandwidth, load average before and after, rows.

    Raises:
        BenchError: no manifest, an unknown target, prompt + decode beyond the context, or
            (verify) an artifact modified since the compile.
    """
    from omnic.compiler import manifest as mf
    from omnic.compiler.artifact_runner import ArtifactModified, check_artifacts

    s = settings or BenchSettings()
    say = log or (lambda _line: None)
    build_dir = Path(build_dir).resolve()
    try:
        manifest = mf.load(build_dir)
    except FileNotFoundError:
        raise BenchError(f"{build_dir}: no {mf.MANIFEST_FILE}; is it an omnic build?") from None
    context = manifest.spec["model"]["context_length"]
    if s.prompt_tokens < 1 or s.decode_tokens < 1 or s.repeat < 1:
        raise BenchError("--prompt-tokens, --decode-tokens and --repeat must be at least 1")
    if s.prompt_tokens + s.decode_tokens > context:
        raise BenchError(f"--prompt-tokens {s.prompt_tokens} + --decode-tokens "
                         f"{s.decode_tokens} exceed the build's context length {context}")
    decoders = [a for a in manifest.artifacts if a.component == "decoder"]
    have = [a.target for a in decoders]
    wanted = list(s.targets) if s.targets else have
    unknown = [t for t in wanted if t not in have and t != REFERENCE]
    if unknown:
        raise BenchError(f"the build has no decoder artifact for {', '.join(unknown)} "
                         f"(it has: {', '.join(have) or 'none'}; 'reference' runs PyTorch)")
    skipped = [f"{a.target}/{a.component}" for a in manifest.artifacts if a.component != "decoder"]
    if verify:
        # the numbers of an artifact changed after its compile would be credited to the build
        try:
            check_artifacts(build_dir, [a for a in decoders if a.target in wanted])
        except ArtifactModified as err:
            raise BenchError(str(err)) from None
    before = load_average()
    say(f"load average {before}; measuring bandwidth ({s.threads} thread(s))")
    bw = measure_bandwidth(s.bandwidth_bytes, threads=s.threads, repeat=s.bandwidth_repeat)
    say(f"bandwidth {bw.gbps:.1f} GB/s (copy, {bw.buffer_bytes / 2**20:.0f} MiB buffer)")
    rows = []
    for target in wanted:
        entry = next((a for a in decoders if a.target == target), None)
        say(f"{target}: measuring in a fresh process")
        result = run_worker(build_dir, target, "decoder", s)
        result.setdefault("target", target)
        result.setdefault("component", "decoder")
        rows.append(row_of(entry, result, manifest, build_dir, bw, s))
        r = rows[-1]
        say(f"{target}: {r['status']}" + (f" — {r['reason']}" if r["reason"] else "")
            + (f" — decode {r['decode_tokens_per_s']['median']:.1f} tok/s"
               if r.get("decode_tokens_per_s") else ""))
    return {
        "omnic_bench": BENCH_FORMAT, "build": str(build_dir), "name": manifest.name,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()},
        "host": host_info(bw), "bandwidth": bw.to_dict(),
        "load_average": {"before": before, "after": load_average()},
        "ceiling_convention": ("bandwidth / (artifact weight bytes x decode read share of the "
                               "memory plan + mean KV bytes read per decode step)"),
        "not_benchmarked": skipped, "rows": rows,
    }
