"""One artifact measured in a process of its own, so that peak memory belongs to it alone.

    python -m omnic.bench.worker BUILD_DIR TARGET --out FILE.json [--threads N]
        [--prompt-tokens P] [--decode-tokens D] [--repeat R] [--warmup W] [--seed S]

`omnic bench` starts one of these per artifact with the thread count already in its environment
(`omnic.bench.threads.worker_env`). It writes one JSON object to FILE (stdout is left to the
runtimes' own chatter):

    {"status": "ok" | "not_run" | "error", "reason": ..., "load_s": ...,
     "runs": [{"prefill_s", "ttft_s", "decode_s"}, ...],   # timed runs, warm-up excluded
     "baseline_rss_mb", "rss_after_load_mb", "peak_rss_mb", "settings": {...}, "runtime": ...}

One run: reset the runner (not timed: some runners reload their program there), feed the P
prompt tokens in one call (prefill), take the argmax of the last position (time to first token
ends here), then D greedy steps of one token each (decode). Prompt tokens are seeded random ids
in [0, vocab_size).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

# The distribution whose version identifies each runtime.
RUNTIME_DIST = {"onnx": "onnxruntime", "gguf": "llama-cpp-python", "executorch": "executorch",
                "tvm": "apache-tvm", "coreml": "coremltools", "reference": "torch"}
REFERENCE = "reference"  # the PyTorch reference, rebuilt from the manifest's spec


def rss_mb() -> dict[str, float | None]:
    """Current and peak resident set size of this process, MiB (VmRSS / VmHWM, else getrusage)."""
    out: dict[str, float | None] = {"rss_mb": None, "peak_rss_mb": None}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = int(value.split()[0]) / 1024
    except OSError:
        pass
    if out["peak_rss_mb"] is None:
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            out["peak_rss_mb"] = peak / 2**20 if sys.platform == "darwin" else peak / 1024
        except ImportError:
            pass
    return out


def _version(target_id: str) -> str | None:
    from importlib import metadata

    dist = RUNTIME_DIST.get(target_id)
    try:
        return f"{dist} {metadata.version(dist)}" if dist else None
    except metadata.PackageNotFoundError:
        return None


def _open(build_dir: Path, target_id: str, component: str, threads: int):
    """(runner, settings, vocab_size, context_length) with the threads configured first."""
    from omnic.bench import threads as th
    from omnic.compiler import manifest as mf
    from omnic.spec import ResolvedSpec

    manifest = mf.load(build_dir)
    spec = ResolvedSpec.model_validate(manifest.spec)
    if target_id == REFERENCE:
        _, settings = th.configure(REFERENCE, None, threads)
        from omnic.model import build_model
        from omnic.runtime.torch_runner import TorchRunner

        start = time.perf_counter()
        runner = TorchRunner(build_model(spec, build_dir))
        return runner, settings, time.perf_counter() - start, spec
    from omnic.compiler.artifact_runner import artifact_from_entry, find_entry
    from omnic.targets.base import get_target

    target = get_target(target_id)
    kwargs, settings = th.configure(target_id, target, threads)
    artifact = artifact_from_entry(find_entry(manifest, target_id, component))
    start = time.perf_counter()
    runner = target.load(artifact, build_dir, **kwargs)
    load_s = time.perf_counter() - start
    th.after_load(target_id, settings)
    return runner, settings, load_s, spec


def one_run(runner: Any, prompt: np.ndarray, decode_tokens: int) -> dict[str, float]:
    """Prefill, first token, then `decode_tokens` greedy steps; seconds of each phase."""
    runner.reset()
    start = time.perf_counter()
    logits = runner.forward(prompt)
    prefill_s = time.perf_counter() - start
    token = int(np.argmax(logits[-1]))
    ttft_s = time.perf_counter() - start
    step_start = time.perf_counter()
    for _ in range(decode_tokens):
        logits = runner.forward(np.array([token], dtype=np.int64))
        token = int(np.argmax(logits[-1]))
    return {"prefill_s": prefill_s, "ttft_s": ttft_s, "decode_s": time.perf_counter() - step_start}


def measure(build_dir: Path, target_id: str, component: str = "decoder", threads: int = 1,
            prompt_tokens: int = 64, decode_tokens: int = 32, repeat: int = 5, warmup: int = 1,
            seed: int = 0) -> dict[str, Any]:
    """Load one artifact and time it (see the module docstring); never raises."""
    from omnic.targets.base import NotRunnable

    out: dict[str, Any] = {"target": target_id, "component": component, "threads": threads,
                           "runtime": _version(target_id), "pid": os.getpid()}
    out["baseline_rss_mb"] = rss_mb()["rss_mb"]
    try:
        runner, settings, load_s, spec = _open(build_dir, target_id, component, threads)
    except NotRunnable as err:
        return {**out, "status": "not_run", "reason": str(err) or "not runnable on this host"}
    except Exception as err:  # noqa: BLE001 - reported as the row's error
        return {**out, "status": "error", "reason": f"load: {type(err).__name__}: {err}",
                "traceback": traceback.format_exc()}
    out.update(settings=settings, load_s=load_s, rss_after_load_mb=rss_mb()["rss_mb"])
    context = spec.model.context_length
    if prompt_tokens + decode_tokens > context:
        return {**out, "status": "error", "reason": f"prompt {prompt_tokens} + decode "
                f"{decode_tokens} tokens exceed the context length {context}"}
    prompt = np.random.default_rng(seed).integers(0, spec.model.vocab_size, prompt_tokens,
                                                  dtype=np.int64)
    runs = []
    try:
        for i in range(warmup + repeat):
            r = one_run(runner, prompt, decode_tokens)
            if i >= warmup:
                runs.append(r)
    except Exception as err:  # noqa: BLE001
        return {**out, "status": "error", "reason": f"run: {type(err).__name__}: {err}",
                "traceback": traceback.format_exc(), "runs": runs}
    mem = rss_mb()
    return {**out, "status": "ok", "reason": None, "runs": runs, "rss_mb": mem["rss_mb"],
            "peak_rss_mb": mem["peak_rss_mb"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m omnic.bench.worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("build_dir", type=Path)
    p.add_argument("target")
    p.add_argument("--out", required=True, type=Path, help="JSON result file")
    p.add_argument("--component", default="decoder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    result = measure(a.build_dir, a.target, a.component, a.threads, a.prompt_tokens,
                     a.decode_tokens, a.repeat, a.warmup, a.seed)
    a.out.write_text(json.dumps(result, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
