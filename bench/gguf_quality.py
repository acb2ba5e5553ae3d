"""GGUF file types on a 0.1B-class random decoder: file size against the memory plan, and
quality against the fp32 PyTorch decoder (KL divergence, top-1 agreement) on llama.cpp.

    PYTHONPATH=. .venv/bin/python bench/gguf_quality.py [--threads 2] [--types F16,Q8_0,...]

The model: 12 layers, d_model 768, 12 heads (4 kv), SwiGLU 2048, vocab 32768, tied embeddings,
about 100 M parameters, seeded random weights (uniform, std 0.02). The shape is GPT-2-small /
SmolLM class with every width a multiple of 256, so llama.cpp's K-quants apply without fallback
(SmolLM-135M's d_model 576 is not: llama.cpp falls back to Q5_0/Q8_0 with warnings there).

Metrics follow llama-perplexity: mean over positions of KL(p_fp32 || p_gguf) in nats, and the
fraction of positions whose argmax agrees ("same top p"). The prompts are random token ids, the
logits of every position are compared (teacher forcing, one llama.cpp call per prompt).
Random weights give flatter distributions than a trained model, so absolute KLDs are smaller
than llama-perplexity's published ones; the ordering between types is what this measures.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_1", "Q5_0", "Q4_K_M", "Q4_1", "Q4_0"]
# The omnic scheme whose memory plan a file type stores (None: no omnic scheme is that type).
PLAN_SCHEME = {
    "F32": {"scheme": "fp32"}, "F16": {"scheme": "fp16"}, "BF16": {"scheme": "bf16"},
    "Q8_0": {"scheme": "int8", "group_size": 32},
    "Q4_0": {"scheme": "int4", "group_size": 32},
    "Q4_1": {"scheme": "int4", "group_size": 32, "symmetric": False},
}
MODEL = {
    "vocab_size": 32768, "d_model": 768, "n_layers": 12, "n_heads": 12, "n_kv_heads": 4,
    "ffn": {"kind": "swiglu", "hidden": 2048}, "context_length": 256, "tie_embeddings": True,
    "rope": {"theta": 10000.0},
}
DEVICE = {"name": "bench-host", "memory_budget_mb": 16384, "bandwidth_gbps": 20.0, "os": "linux"}


def make_spec(file_type: str, quant: dict | None = None):
    from omnic.spec import ResolvedSpec

    return ResolvedSpec.model_validate({
        "omnic": 1, "name": "bench-110m", "device": DEVICE, "model": MODEL,
        "quantization": {"weights": quant or {"scheme": "fp32"}},
        "targets": {"gguf": {"file_type": file_type}}})


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--types", default=",".join(TYPES))
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("/tmp/omnic-bench-gguf"))
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()

    import os

    os.environ["OMNIC_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from omnic.model import build_model
    from omnic.compiler.plan import plan_memory
    from omnic.passes.program import Program
    from omnic.runtime.torch_runner import TorchRunner
    from omnic.quant.select import tensor_schemes
    from omnic.spec.inventory import parameter_count
    from omnic.targets.base import get_target

    base = make_spec("F32")
    t0 = time.perf_counter()
    decoder = build_model(base, ROOT)
    print(f"model: {parameter_count(base.model) / 1e6:.1f} M parameters, built in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, MODEL["vocab_size"], size=(args.prompts, args.tokens))
    runner = TorchRunner(decoder)
    fp32 = []
    for p in prompts:
        runner.reset()
        fp32.append(runner.forward(p))
    del runner
    fp32_lp = [log_softmax(x) for x in fp32]

    target = get_target("gguf")
    rows = []
    for ft in args.types.split(","):
        spec = make_spec(ft)
        t0 = time.perf_counter()
        tracemalloc.start()
        program = Program(spec, ROOT, decoder, quant_plan=tensor_schemes(spec))
        (art,) = target.lower(program, args.out / "gguf")
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        lower_s = time.perf_counter() - t0
        art.reference_weights = None  # not needed here; free the dequantized copy
        path = args.out / art.path
        gguf = target.load(art, args.out)
        klds, top1s = [], []
        t1 = time.perf_counter()
        for p, lp in zip(prompts, fp32_lp):
            gguf.reset()
            lq = log_softmax(gguf.forward(p))
            klds.append(float((np.exp(lp) * (lp - lq)).sum(-1).mean()))
            top1s.append(float((lp.argmax(-1) == lq.argmax(-1)).mean()))
        eval_s = time.perf_counter() - t1
        gguf.close()
        planned = None
        if ft in PLAN_SCHEME:
            planned = plan_memory(make_spec(ft, PLAN_SCHEME[ft])).weight_bytes
        size = path.stat().st_size
        row = {
            "type": ft, "bytes": size, "MiB": round(size / 2**20, 1),
            "plan_weight_MiB": round(planned / 2**20, 1) if planned else None,
            "vs_plan": round(size / planned, 3) if planned else None,
            "bits_per_weight": round(8 * sum(art.quantization["bytes_by_type"].values())
                                     / parameter_count(base.model), 2),
            "kld": float(np.mean(klds)), "top1": float(np.mean(top1s)),
            "tensor_types": art.quantization["tensor_types"],
            "lower_s": round(lower_s, 1), "eval_s": round(eval_s, 1),
            "lower_traced_peak_MiB": round(traced_peak / 2**20, 1),
        }
        rows.append(row)
        path.unlink()
        print(json.dumps(row), flush=True)

    print("\n| type | file MiB | plan MiB | file/plan | bits/weight | KLD (nats) | top-1 "
          "| tensor types |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        plan = f"{r['plan_weight_MiB']}" if r["plan_weight_MiB"] else "-"
        ratio = f"{r['vs_plan']}" if r["vs_plan"] else "-"
        types = ", ".join(f"{k} {v}" for k, v in r["tensor_types"].items())
        print(f"| {r['type']} | {r['MiB']} | {plan} | {ratio} | {r['bits_per_weight']} | "
              f"{r['kld']:.5f} | {r['top1']:.1%} | {types} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak:.0f} MiB "
          f"(fp32 model {parameter_count(base.model) * 4 / 2**20:.0f} MiB)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
