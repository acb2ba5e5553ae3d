"""omnic's TVM artifact (fp32 and int4) against llama.cpp's Q4_0 and omnic's ONNX int4 on
onnxruntime, all from the same real checkpoint, same threads (issue 20).

    PYTHONPATH=. .venv/bin/python bench/tvm_vs_llamacpp.py [--work /tmp/tvm-vs-llamacpp] \
        [--context 512] [--threads 1] [--rounds 5] [--prompt 128] [--decode 64] [--repeat 3] \
        [--hf DIR] [--sdist llama_cpp_python-*.tar.gz]

1. omnic: `omnic import HF --quant int4_g32 --targets tvm`, the same with `--targets onnx`, and
   `--quant fp32 --targets tvm`, golden 2 x (16 + 8), each compiled on its own (lowering time
   and peak RSS recorded; a build is redone when its record in --work is deleted);
2. llama.cpp: convert_hf_to_gguf.py + llama-quantize Q4_0 (real_quality.py `llama_cpp_files`);
3. each file in a fresh process per round, rounds interleaved: prefill tok/s of --prompt random
   ids, decode tok/s of --decode greedy steps (bench/harness.py workers `tvm`, `ort`, `llama`).

The checkpoint is the real SmolLM2-135M-Instruct as `make test` caches it (or --hf). Each step is
cached in --work; report.md and results.json are written there. Not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import harness as h  # noqa: E402
from executorch_vs_export_llm import cached, summarize  # noqa: E402
from real_quality import cached_hf, llama_cpp_files  # noqa: E402


def omnic_build(a: argparse.Namespace, hf: Path, quant: str, targets: str, env: dict) -> dict:
    """Compile the checkpoint with one recipe; the manifest's artifacts and the compile cost."""
    import yaml

    build = a.work / f"omnic-{targets}-{quant}-c{a.context}"
    record = a.work / f"omnic-{targets}-{quant}-c{a.context}.json"
    if not record.is_file():
        spec = a.work / f"smollm2-{targets}-{quant}-c{a.context}.yaml"
        subprocess.run([h.PY, "-m", "omnic.cli.main", "import", str(hf), "-o", str(spec),
                        "--context-length", str(a.context), "--quant", quant,
                        "--targets", targets], check=True, env=env)
        data = yaml.safe_load(spec.read_text())
        data["golden"] = {"cases": 2, "prompt_tokens": 16, "decode_steps": 8}
        spec.write_text(yaml.safe_dump(data, sort_keys=False))
        run = h.run_measured([h.PY, "-m", "omnic.cli.main", "compile", str(spec), "-o",
                              str(build), "--force", "--no-cache"], env=env,
                             log=record.with_suffix(".log"))
        record.write_text(json.dumps(run))
    run = json.loads(record.read_text())
    if not (build / "manifest.json").is_file():
        build = build.with_name(build.name + ".failed")
    manifest = json.loads((build / "manifest.json").read_text())
    out = {"run": run, "status": manifest["status"], "artifacts": {}}
    for e in manifest["artifacts"]:
        if e["component"] == "decoder":
            stages = {t["stage"].split(": ", 1)[1]: round(t["seconds"], 1)
                      for t in manifest["timings"]["targets"]
                      if t["stage"].startswith(f"{e['target']}: ")}
            out["artifacts"][e["target"]] = {"path": str(build / e["path"]),
                                             "golden": e["golden"]["status"], "stages": stages}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/tvm-vs-llamacpp"))
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of all files")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per worker (+1 warm-up)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--decode", type=int, default=64)
    p.add_argument("--hf", type=Path, help="the fp32 Hugging Face directory of the checkpoint")
    p.add_argument("--sdist", type=Path, help="a llama_cpp_python-0.3.36.tar.gz already here")
    a = p.parse_args()
    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    hf = (a.hf or cached_hf()).resolve()
    env = h.thread_env(a.threads)
    load_start = h.load_average()
    vocab = json.loads((hf / "config.json").read_text())["vocab_size"]

    int4 = omnic_build(a, hf, "int4_g32", "tvm", env)
    onnx = omnic_build(a, hf, "int4_g32", "onnx", env)  # its own build: TVM rebuilds alone
    fp32 = omnic_build(a, hf, "fp32", "tvm", env)

    def llama() -> dict:
        q4 = llama_cpp_files(SimpleNamespace(work=a.work, sdist=a.sdist, no_kquants=True,
                                             threads=a.threads, llama_tools=None), hf, env)
        return {"path": str(next(iter(q4.values())))}

    llama_run = cached(a.work / "llama_cpp.json", llama)
    files = {"omnic tvm int4_g32": (Path(int4["artifacts"]["tvm"]["path"]), "tvm"),
             "omnic tvm fp32": (Path(fp32["artifacts"]["tvm"]["path"]), "tvm"),
             "omnic onnx int4_g32 (onnxruntime)": (Path(onnx["artifacts"]["onnx"]["path"]),
                                                   "ort"),
             "llama.cpp Q4_0": (Path(llama_run["path"]), "llama")}
    results: dict[str, list[dict]] = {n: [] for n in files}
    for r in range(a.rounds):
        for name, (path, kind) in files.items():
            res = h.measure_in_worker(kind, path, a.threads, a.prompt, a.decode, a.repeat, vocab)
            results[name].append(res)
            print(f"round {r + 1}/{a.rounds} {name}: " + (res["error"] if "error" in res else
                  f"decode {res['decode_tok_s']:.1f} tok/s, prefill {res['prefill_tok_s']:.1f}"
                  f" tok/s, load {res['load_average']}"), file=sys.stderr)
    stats = {n: summarize(v, a.prompt, a.decode) for n, v in results.items()}

    def mib(path: Path) -> float:
        return h.dir_bytes(path) / 2**20

    lines = ["| artifact | MiB | decode tok/s | decode p10 | prefill tok/s | prefill p10 | "
             "worker peak RSS MiB |", "|" + "---|" * 7]
    for name, (path, _) in files.items():
        s = stats[name]
        cells = (["error: " + s.get("error", "")] + [""] * 4 if "error" in s else
                 [f"{s['decode_median']:.1f}", f"{s['decode_p10']:.1f}",
                  f"{s['prefill_median']:.1f}", f"{s['prefill_p10']:.1f}",
                  f"{s['peak_rss_mb']:.0f}"])
        lines.append(f"| {name} | {mib(path):.1f} | " + " | ".join(cells) + " |")
    ratios = [("omnic tvm int4_g32", "llama.cpp Q4_0"), ("omnic tvm int4_g32", "omnic tvm fp32"),
              ("omnic tvm int4_g32", "omnic onnx int4_g32 (onnxruntime)")]
    lines += ["", "| ratio | decode | prefill |", "|---|---|---|"]
    for x, y in ratios:
        sx, sy = stats[x], stats[y]
        if "error" in sx or "error" in sy:
            lines.append(f"| {x} / {y} | — | — |")
            continue
        lines.append(f"| {x} / {y} | {sx['decode_median'] / sy['decode_median']:.2f}x | "
                     f"{sx['prefill_median'] / sy['prefill_median']:.2f}x |")
    notes = [
        f"SmolLM2-135M-Instruct ({hf.name}); {a.threads} thread(s) everywhere; prompt "
        f"{a.prompt} random ids, {a.decode} greedy steps; {a.rounds} interleaved rounds x "
        f"{a.repeat} timed runs (+1 warm-up) per fresh worker; omnic context {a.context}, "
        f"llama.cpp n_ctx 512; load average at start / end: {load_start} / {h.load_average()}",
        "tok/s: median over all timed runs; p10: their 10th percentile",
        *[f"omnic {q}: compile {b['run'].get('seconds', 0):.0f} s, peak "
          f"{b['run'].get('peak_rss_mb', 0):.0f} MiB, status {b['status']}; per target: "
          + "; ".join(f"{t} golden {v['golden']}, seconds {json.dumps(v['stages'])}"
                      for t, v in b["artifacts"].items())
          for q, b in (("tvm int4_g32", int4), ("onnx int4_g32", onnx), ("tvm fp32", fp32))],
        f"llama.cpp convert + quantize {llama_run['seconds']:.0f} s",
    ]
    text = "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"
    (a.work / "report.md").write_text(text)
    (a.work / "results.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(a).items()}, "stats": stats, "results": results,
         "builds": {"tvm int4_g32": int4, "onnx int4_g32": onnx, "tvm fp32": fp32,
                    "llama.cpp": llama_run}}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
