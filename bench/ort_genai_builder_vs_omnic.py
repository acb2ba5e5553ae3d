"""omnic's int4 ONNX against the onnxruntime-genai model builder's int4 ONNX, same weights.

    PYTHONPATH=. .venv/bin/python bench/ort_genai_builder_vs_omnic.py \
        [--shape smollm_135m|qwen2.5_0.5b] [--threads 2] [--work /tmp/ortgenai-vs-omnic]

1. A random Hugging Face checkpoint of the shape (fp32 safetensors, byte tokenizer.json).
2. The builder: `python -m onnxruntime_genai.models.builder -i HF -o OUT -p int4 -e cpu`
   (its defaults for int4 on CPU: block 32, symmetric, accuracy_level 4 = int8 activations).
3. omnic: `omnic import HF -o spec.yaml`, the spec set to int4 g32 (int8 tied embedding, the
   int4_g32 preset) with golden 2 cases x (16 + 8) tokens, then `omnic compile --targets onnx`;
   with --same-quant also a second build quantized as the builder does (every matrix int4 g32,
   the tied embedding too): the same bytes per token, so the graphs alone are compared.
4. All folders measured by the same harnesses in fresh processes with the same thread count,
   interleaved (round r measures every folder once, --rounds rounds): onnxruntime-genai's
   Generator (og) and a plain onnxruntime session (ort); decode tokens/s (median run, and the
   fastest tenth of the steps: the uncontended estimate on a shared machine), prefill tokens/s.
   --cpu-rounds adds 1-thread runs timed by the thread's CPU time, which other processes on a
   loaded machine disturb far less than wall time. Size on disk and the compile's peak RSS
   (VmHWM of the process; omnic's includes its golden check, the manifest splits it per stage).

Prints a table; not a test. The load average is recorded with every measurement.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402


# The onnxruntime-genai builder's `-p int4` on CPU: every matrix int4, block 32, symmetric,
# the tied embedding / lm_head included (its GatherBlockQuantized shares the lm_head's data).
# ref: https://github.com/microsoft/onnxruntime-genai/blob/main/src/python/py/models/builder.py
BUILDER_QUANT = {"weights": {"scheme": "int4", "group_size": 32, "symmetric": True}}
QUANTS = {"int4_g32": "int4_g32", "builder": BUILDER_QUANT}  # omnic preset / the builder's choice


def omnic_spec(hf_dir: Path, spec: Path, context: int, targets: dict,
               quantization: str | dict = "int4_g32") -> None:
    """`omnic import` then the quantization, targets and golden size of this comparison."""
    r = h.run_measured([h.PY, "-m", "omnic.cli.main", "import", str(hf_dir), "-o", str(spec),
                        "--context-length", str(context)], env=h.thread_env(1))
    if r["returncode"]:
        raise SystemExit(f"omnic import failed: {r}")
    data = yaml.safe_load(spec.read_text())
    # Random weights give near-flat logits, so int4 agrees with fp32 on the top token only by
    # chance (27 % measured on the SmolLM shape): that floor is lifted as in specs/llama3_1b.yaml;
    # the quantization-exact limits and the KLD limit still apply.
    # 2 cases x (16 + 8) positions: int8 activations (MatMulNBits accuracy_level 4, llama.cpp's
    # Q8_0 activations) flip the argmax of such flat logits at ~2 % of positions (126 of 128
    # measured on the SmolLM shape); with 11 positions two flips broke the 0.9 top-1 limit.
    # At Llama-3.2-1B's shape (128256 near-flat logits) Q4_0 noise alone gives KLD 0.14 against
    # fp32 (measured, 2 x 24 positions): the KLD limit is lifted to 0.3 here too; the exact-
    # reference limits (greedy match, nmse) are what catch a wrong artifact and stay.
    # Likewise int8 activations (accuracy_level 4) flip 20 % of the argmaxes of the 1B shape's
    # flat logits against the exact reference (top1 0.80 measured), a rate no trained model shows.
    floors = {"onnx/int4_g32/top1_fp32": 0.0, "gguf/q4_0/top1_fp32": 0.0,
              "onnx/int4_g32/kld": 0.3, "gguf/q4_0/kld": 0.3, "onnx/int4_g32/top1": 0.7}
    data.update(quantization=quantization, targets=targets,
                golden={"cases": 2, "prompt_tokens": 16, "decode_steps": 8, "tolerances": floors})
    spec.write_text(yaml.safe_dump(data, sort_keys=False))


def stage_peaks(build: Path, names: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """(seconds, peak RSS MiB) of the named stages in a build's manifest."""
    t = json.loads((build / "manifest.json").read_text())["timings"]
    return {s["stage"]: (s["seconds"], s["peak_rss_mb"]) for s in t["stages"] + t["targets"]
            if s["stage"] in names}


def compile_omnic(hf: Path, work: Path, name: str, quant: str | dict, context: int,
                  threads: int) -> tuple[Path, dict]:
    """Import + compile into work/<name> once (reused afterwards); (build dir, run record)."""
    spec, build, record = work / f"{name}.yaml", work / name, work / f"{name}_run.json"
    if not (build / "manifest.json").is_file():
        omnic_spec(hf, spec, context, {"onnx": {}}, quant)
        run = h.run_measured(
            [h.PY, "-m", "omnic.cli.main", "compile", str(spec), "-o", str(build), "--force"],
            env=h.thread_env(threads), log=work / f"{name}_compile.log")
        record.write_text(json.dumps(run))
    run = json.loads(record.read_text())
    if run["returncode"]:
        raise SystemExit(f"omnic compile failed, see {run['log']}")
    return build, run


def measure(folders: dict[str, Path], kinds: tuple[str, ...], threads: int, rounds: int,
            a: argparse.Namespace, vocab: int) -> dict[tuple[str, str], list[dict]]:
    """Every (folder, harness) once per round, rounds interleaved; all results kept."""
    out: dict[tuple[str, str], list[dict]] = {(n, k): [] for n in folders for k in kinds}
    for r in range(rounds):
        for kind in kinds:
            for name, folder in folders.items():
                res = h.measure_in_worker(kind, folder, threads, a.prompt, a.decode, a.repeat,
                                          vocab)
                out[(name, kind)].append(res)
                print(f"round {r + 1}/{rounds} {kind} {threads} thread(s) {name}: "
                      + (res["error"] if "error" in res else
                         f"decode {res['decode_tok_s']:.1f} tok/s (p10 steps "
                         f"{res['decode_tok_s_p10']:.1f}), load {res['load_average']}"),
                      file=sys.stderr)
    return out


def summary(runs: list[dict], key: str, best: bool = False) -> float | None:
    ok = [r[key] for r in runs if "error" not in r and key in r]
    if not ok:
        return None
    return max(ok) if best else statistics.median(ok)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(h.SHAPES), default="smollm_135m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--decode", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per worker (after 1 warm-up)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all folders")
    p.add_argument("--cpu-rounds", type=int, default=0,
                   help="rounds of 1-thread runs timed by CPU time (0: none)")
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--work", type=Path, default=Path("/tmp/ortgenai-vs-omnic"))
    p.add_argument("--keep", action="store_true", help="reuse the checkpoint and outputs in --work")
    p.add_argument("--same-quant", action="store_true",
                   help="also build omnic with the builder's quantization (embedding int4 too)")
    a = p.parse_args()
    work = a.work / a.shape
    if work.exists() and not a.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    load_start = h.load_average()
    print(f"load average at start: {load_start}", file=sys.stderr)
    hf = work / "hf"
    if not (hf / "config.json").is_file():
        info = h.make_checkpoint(a.shape, hf, a.context)
        (work / "checkpoint.json").write_text(json.dumps(info))
    info = json.loads((work / "checkpoint.json").read_text())
    fp32 = info["fp32_bytes"]
    vocab = h.SHAPES[a.shape]["vocab_size"]

    builder_out = work / "builder"
    if not (builder_out / "genai_config.json").is_file():
        builder = h.run_measured(
            [h.PY, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(builder_out),
             "-p", "int4", "-e", "cpu", "-c", str(work / "builder_cache")],
            env=h.thread_env(a.threads), log=work / "builder.log")
        (work / "builder_run.json").write_text(json.dumps(builder))
    builder = json.loads((work / "builder_run.json").read_text())
    if builder["returncode"]:
        raise SystemExit(f"the builder failed, see {builder['log']}")

    builds = {"omnic": ("omnic int4_g32 preset (int8 embedding)", "int4_g32")}
    if a.same_quant:
        builds["omnic_builderq"] = ("omnic int4 g32 everywhere (builder's quantization)",
                                    "builder")
    runs, folders = {"builder": builder}, {"builder": builder_out}
    labels = {"builder": "ort-genai builder int4 (block 32, acc. level 4)"}
    stages = {}
    for name, (label, quant) in builds.items():
        build, runs[name] = compile_omnic(hf, work, name, QUANTS[quant], a.context, a.threads)
        folders[name], labels[name] = build / "onnx", label
        stages[name] = stage_peaks(build, ("build", "onnx: lower", "onnx: golden", "reference"))

    results = measure(folders, ("og", "ort"), a.threads, a.rounds, a, vocab)
    cpu = measure(folders, ("og", "ort"), 1, a.cpu_rounds, a, vocab) if a.cpu_rounds else {}
    (work / "results.json").write_text(json.dumps(
        {"threads": {f"{k[0]}/{k[1]}": v for k, v in results.items()},
         "cpu_1_thread": {f"{k[0]}/{k[1]}": v for k, v in cpu.items()}}, indent=1))

    def cell(value: float | None) -> str | None:
        return None if value is None else f"{value:.1f}"

    rows = []
    for name, folder in folders.items():
        run = runs[name]
        row = [labels[name], f"{h.dir_bytes(folder, ('.onnx', '.onnx.data', '.data')) / 2**20:.1f}"]
        for kind in ("og", "ort"):
            row += [cell(summary(results[(name, kind)], "decode_tok_s")),
                    cell(summary(results[(name, kind)], "decode_tok_s_p10", best=True))]
        if cpu:
            row += [cell(summary(cpu[(name, k)], "decode_cpu_tok_s")) for k in ("og", "ort")]
        row += [cell(summary(results[(name, "og")], "prefill_tok_s")), f"{run['seconds']:.0f}",
                f"{run['peak_rss_mb']:.0f}", f"{run['peak_rss_mb'] * 2**20 / fp32:.2f}"]
        rows.append(row)

    def ratio(name: str, kind: str, key: str, table: dict, best: bool = False) -> str:
        x, y = summary(table[(name, kind)], key, best), summary(table[("builder", kind)], key, best)
        return "—" if x is None or y is None else f"{x / y:.2f}x"

    ratios = []
    for name in builds:
        parts = [f"{kind} {ratio(name, kind, 'decode_tok_s', results)} (p10 "
                 f"{ratio(name, kind, 'decode_tok_s_p10', results, True)})"
                 for kind in ("og", "ort")]
        if cpu:
            parts += [f"cpu-time {kind} {ratio(name, kind, 'decode_cpu_tok_s', cpu)}"
                      for kind in ("og", "ort")]
        ratios.append(f"decode {name} / builder: " + ", ".join(parts))
    loads = sorted({r["load_average"] for v in [*results.values(), *cpu.values()] for r in v
                    if "load_average" in r})
    notes = [
        f"checkpoint: {a.shape} shape, {info['parameters']:,} parameters, random fp32 weights "
        f"({fp32 / 2**20:.0f} MiB); {a.threads} threads; prompt {a.prompt}, decode {a.decode}; "
        f"{a.rounds} interleaved rounds x {a.repeat} runs (+1 warm-up each)",
        "decode tok/s: median run; p10 = the fastest tenth of all single-token steps (best "
        "round); og = onnxruntime-genai Generator, ort = plain onnxruntime session",
        *([f"cpu: 1 thread, tok/s from the thread's CPU time per step (median), {a.cpu_rounds} "
           "rounds"] if cpu else []),
        "compile peak RSS: whole process (VmHWM); x fp32 = peak / fp32 weight bytes; omnic's "
        "includes import, PyTorch reference and golden check on onnxruntime",
        *[f"{name} stages (s, peak MiB): " + ", ".join(f"{k} {v[0]:.0f}s/{v[1]:.0f}"
                                                     for k, v in st.items())
          for name, st in stages.items()],
        *ratios,
        f"load average (1/5/15 min): start {load_start}, end {h.load_average()}; per worker "
        f"{loads[0] if loads else '?'} .. {loads[-1] if loads else '?'}",
    ]
    errors = [f"{k}: {r['error']}" for k, v in [*results.items(), *cpu.items()] for r in v
              if "error" in r]
    columns = ["artifact", "weights MiB", "decode og", "og p10", "decode ort", "ort p10"]
    columns += ["cpu og", "cpu ort"] if cpu else []
    columns += ["prefill og", "compile s", "compile peak MiB", "x fp32"]
    h.print_table("onnxruntime-genai builder vs omnic (int4 ONNX, same weights; tok/s)", columns,
                  rows, notes + errors[:6])
    return 0


if __name__ == "__main__":
    sys.exit(main())
