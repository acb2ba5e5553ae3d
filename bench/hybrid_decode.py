"""Hybrid models against a transformer of the same size (issue 17): an LFM2-350M-shaped int4
build (10 short-convolution layers, 6 attention layers) and a Granite-4.0-H-350M-shaped one (28
Mamba-2 layers, 4 attention layers) and a Qwen3.5-0.8B-shaped one (18 Gated DeltaNet layers, 6
attention layers) next to a SmolLM-360M-shaped one (32 attention layers), all
random weights, the same omnic recipe, the same threads:

    PYTHONPATH=. .venv/bin/python bench/hybrid_decode.py [--work /tmp/hybrid] [--threads 1] \
        [--rounds 3] [--prompt 128] [--decode 64] [--repeat 3] [--targets gguf,onnx] \
        [--shapes lfm2_350m,granite4.0_h_350m,smollm_360m]

1. each shape: a random Hugging Face checkpoint (bench/harness.py SHAPES), `omnic import
   --quant int4_g32 --targets T` with a 2048-token context, compiled (golden 2 x (16 + 8));
2. decode and prefill tok/s of each artifact in a fresh process per round, rounds interleaved
   (bench/harness.py workers: `llama` for GGUF; for ONNX `og` (onnxruntime-genai) where genai
   runs the model and `omnic_onnx` (a plain onnxruntime session fed by omnic's runner) for
   every shape, so that the Mamba-2 hybrid, which genai cannot run, has a like-for-like row);
3. llama.cpp's resident memory (VmRSS) of each GGUF file in a 2048-cell context after 128 and
   after 2048 positions (batches of 128), and with a 128-cell context: what the KV cache and
   the recurrent state cost as the context grows, beside the f16 KV bytes the shapes imply.

Random weights: speed and memory only, nothing about quality. Not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import harness as h  # noqa: E402
from executorch_vs_export_llm import cached, summarize  # noqa: E402

NAMES = {"lfm2_350m": "LFM2-350M-shaped", "granite4.0_h_350m": "Granite-4.0-H-350M-shaped",
         "qwen3.5_0.8b": "Qwen3.5-0.8B-shaped", "smollm_360m": "SmolLM-360M-shaped"}
# target -> the workers that measure it: (worker, the shapes it can run; None: every shape)
WORKERS = {"gguf": [("llama", None)],
           "onnx": [("og", {"lfm2_350m", "qwen3.5_0.8b", "smollm_360m"}), ("omnic_onnx", None)]}
CONTEXT = 2048


def build(a: argparse.Namespace, name: str, shape: str, target: str, env: dict) -> dict:
    """The int4 artifact of one shape for one target, compiled once into --work."""
    import yaml

    hf = a.work / f"hf-{shape}"
    cached(a.work / f"hf-{shape}.json", lambda: h.make_checkpoint(shape, hf, CONTEXT))
    out = a.work / f"omnic-{shape}-{target}"
    record = a.work / f"omnic-{shape}-{target}.json"
    if not record.is_file():
        spec = a.work / f"{shape}-{target}.yaml"
        subprocess.run([h.PY, "-m", "omnic.cli.main", "import", str(hf), "-o", str(spec),
                        "--context-length", str(CONTEXT), "--quant", "int4_g32",
                        "--targets", target], check=True, env=env)
        data = yaml.safe_load(spec.read_text())
        data["golden"] = {"cases": 2, "prompt_tokens": 16, "decode_steps": 8}
        spec.write_text(yaml.safe_dump(data, sort_keys=False))
        run = h.run_measured([h.PY, "-m", "omnic.cli.main", "compile", str(spec), "-o", str(out),
                              "--force", "--no-cache"], env=env, log=record.with_suffix(".log"))
        record.write_text(json.dumps(run))
    if not (out / "manifest.json").is_file():  # a failed golden check keeps the build here
        out = out.with_name(out.name + ".failed")
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(e for e in manifest["artifacts"]
                 if e["component"] == "decoder" and e["target"] == target)
    return {"name": name, "path": out / entry["path"], "golden": entry["golden"]["status"],
            "compile_s": json.loads(record.read_text()).get("seconds")}


def kv_mib(config: dict, positions: int) -> float:
    """f16 K and V bytes (MiB) of `positions` in the attention layers of a config.json: the
    layers whose cache grows; LFM2's convolution layers keep kernel - 1 values per channel,
    Granite's Mamba-2 and Qwen3.5's Gated DeltaNet layers a fixed-size state."""
    layers = config["num_hidden_layers"]
    if "full_attn_idxs" in config:
        layers = len(config["full_attn_idxs"])
    if "layer_types" in config:
        layers = sum(t in ("attention", "full_attention") for t in config["layer_types"])
    elif config.get("model_type") == "qwen3_5_text":  # every 4th layer attends
        layers = layers // 4
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * layers * config["num_key_value_heads"] * head_dim * positions * 2 / 2**20


def rss_worker(path: Path, threads: int, n_ctx: int, marks: list[int]) -> dict:
    """VmRSS (MiB) of a llama.cpp context of n_ctx cells after each mark of positions."""
    from llama_cpp import Llama

    def rss() -> float:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines()
                    if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    # batches of 128: the compute buffers are all touched by the first 128 positions, so what
    # grows after that is the KV cache's pages as positions are written
    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=128, n_ubatch=128,
                n_threads=threads, n_threads_batch=threads, verbose=False)
    out, done = {"loaded": rss()}, 0
    for mark in marks:
        llm.eval([(7 * i) % 256 for i in range(done, mark)])
        done = mark
        out[str(mark)] = rss()
    return out


def measure_rss(path: Path, threads: int, n_ctx: int, marks: list[int], env: dict) -> dict:
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import hybrid_decode as b; "
            "print(json.dumps(b.rss_worker(b.Path(sys.argv[2]), int(sys.argv[3]), "
            "int(sys.argv[4]), json.loads(sys.argv[5]))))")
    res = subprocess.run([h.PY, "-c", code, str(BENCH), str(path), str(threads), str(n_ctx),
                          json.dumps(marks)], env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/hybrid"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all files")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per worker (+1 warm-up)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--decode", type=int, default=64)
    p.add_argument("--targets", default="gguf,onnx")
    p.add_argument("--shapes", default=",".join(NAMES))
    a = p.parse_args()
    shapes = {NAMES[s]: s for s in a.shapes.split(",")}
    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    env = h.thread_env(a.threads)
    load_start = h.load_average()
    files = {}
    for target in a.targets.split(","):
        for name, shape in shapes.items():
            art = build(a, name, shape, target, env)
            for kind, runs in WORKERS[target]:
                if runs is None or shape in runs:
                    files[f"{name} {target} ({kind})"] = (art, kind)
    results: dict[str, list[dict]] = {n: [] for n in files}
    for r in range(a.rounds):
        for label, (art, kind) in files.items():
            res = h.measure_in_worker(kind, art["path"], a.threads, a.prompt, a.decode,
                                      a.repeat, 256)
            results[label].append(res)
            print(f"round {r + 1}/{a.rounds} {label}: " + (res["error"] if "error" in res else
                  f"decode {res['decode_tok_s']:.1f} tok/s"), file=sys.stderr)
    stats = {n: summarize(v, a.prompt, a.decode) for n, v in results.items()}
    lines = ["| build | golden | MiB | decode tok/s | decode p10 | prefill tok/s |",
             "|" + "---|" * 6]
    for label, (art, _) in files.items():
        s = stats[label]
        cells = (["error: " + s.get("error", ""), "", ""] if "error" in s else
                 [f"{s['decode_median']:.1f}", f"{s['decode_p10']:.1f}",
                  f"{s['prefill_median']:.1f}"])
        lines.append(f"| {label} int4_g32 | {art['golden']} | "
                     f"{h.dir_bytes(art['path']) / 2**20:.1f} | " + " | ".join(cells) + " |")
    if "gguf" in a.targets.split(","):
        lines += ["", "llama.cpp VmRSS (MiB):", "",
                  "| build | n_ctx 128: after 128 | n_ctx 2048: loaded | after 128 | "
                  f"after {CONTEXT} | growth 128 -> {CONTEXT} | f16 KV of those positions |",
                  "|" + "---|" * 7]
        for name, shape in shapes.items():
            path = files[f"{name} gguf (llama)"][0]["path"]
            small = measure_rss(path, a.threads, 128, [128], env)
            big = measure_rss(path, a.threads, CONTEXT, [128, CONTEXT], env)
            lines.append(f"| {name} | {small['128']:.0f} | {big['loaded']:.0f} | "
                         f"{big['128']:.0f} | {big[str(CONTEXT)]:.0f} | "
                         f"{big[str(CONTEXT)] - big['128']:.0f} | "
                         f"{kv_mib(h.SHAPES[shape], CONTEXT - 128):.1f} |")
    lines += ["", f"{a.threads} thread(s); prompt {a.prompt} random ids, {a.decode} greedy steps; "
              f"{a.rounds} interleaved rounds x {a.repeat} timed runs (+1 warm-up) per fresh "
              f"worker; tok/s: median, p10: 10th percentile; load average at start / end: "
              f"{load_start} / {h.load_average()}"]
    report = "\n".join(lines)
    (a.work / "report.md").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
