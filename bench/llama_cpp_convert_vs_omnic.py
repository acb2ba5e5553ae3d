"""omnic's Q4_0 GGUF against llama.cpp's own convert_hf_to_gguf.py + quantizer, same weights.

    PYTHONPATH=. .venv/bin/python bench/llama_cpp_convert_vs_omnic.py \
        [--shape smollm_135m|qwen2.5_0.5b] [--threads 2] [--work /tmp/llamacpp-vs-omnic]

1. A random Hugging Face checkpoint of the shape (fp32 safetensors, byte tokenizer.json).
2. llama.cpp: `convert_hf_to_gguf.py HF --outtype f32` (or --outtype f16), then
   `llama_cpp.llama_model_quantize(..., LLAMA_FTYPE_MOSTLY_Q4_0)` — the llama-quantize step — in
   its own process. The converter is taken from the llama-cpp-python 0.3.36 source distribution
   (vendor/llama.cpp): `pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all:` into
   the work folder, extracted there; it is never copied into this repository.
3. omnic: `omnic import HF`, the spec set to int4 g32 (int8 tied embedding) and
   `targets: {gguf: {file_type: Q4_0}}`, golden 2 cases x (16 + 8) tokens, `omnic compile`.
4. Both files decoded by the same llama-cpp-python harness in fresh processes, same threads:
   decode and prefill tokens/s; size; tensor types; compile time and peak RSS (VmHWM per process;
   llama.cpp's is the larger of convert and quantize; omnic's includes its golden check, the
   manifest splits it per stage).

Prints a table; not a test. Run it on a quiet machine (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402
from ort_genai_builder_vs_omnic import measure, omnic_spec, stage_peaks, summary  # noqa: E402

SDIST = "llama-cpp-python==0.3.36"
VENDOR = "vendor/llama.cpp/"
WANTED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")

# convert_hf_to_gguf.py, run as is except for one fallback: omnic's byte tokenizer (byte-level
# BPE without merges) is not in the converter's list of known pre-tokenizer hashes, which raises.
# With no merges the word split cannot change a tokenization, so "default" is written then.
CONVERT = """
import runpy, sys
script = sys.argv[1]
sys.path.insert(0, script.rsplit("/", 1)[0])
from conversion import base
known = base.TextModel.get_vocab_base_pre
def pre(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:
        return "default"
base.TextModel.get_vocab_base_pre = pre
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""

QUANTIZE = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
p.nthread = int(sys.argv[3])
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p))
sys.exit(rc)
"""


def converter(work: Path, sdist: Path | None) -> Path:
    """convert_hf_to_gguf.py extracted from the llama-cpp-python sdist into work/llama.cpp."""
    dest = work / "llama.cpp"
    script = dest / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    if sdist is None:
        found = sorted(work.glob("llama_cpp_python-*.tar.gz"))
        if not found:
            subprocess.run([h.PY, "-m", "pip", "download", SDIST, "--no-deps", "--no-binary",
                            ":all:", "-d", str(work)], check=True)
            found = sorted(work.glob("llama_cpp_python-*.tar.gz"))
        sdist = found[-1]
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            _, _, rel = m.name.partition(VENDOR)
            if rel and rel.startswith(WANTED) and m.isfile():
                m.name = rel
                tar.extract(m, dest, filter="data")
    return script


def tensor_types(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    return dict(Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(h.SHAPES), default="smollm_135m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--decode", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per worker (after 1 warm-up)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both files")
    p.add_argument("--cpu-rounds", type=int, default=0,
                   help="rounds of 1-thread runs timed by CPU time (0: none)")
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--outtype", choices=["f32", "f16"], default="f32",
                   help="the converter's output before quantizing (f32: the exact weights)")
    p.add_argument("--sdist", type=Path, help="a llama_cpp_python-0.3.36.tar.gz already here")
    p.add_argument("--work", type=Path, default=Path("/tmp/llamacpp-vs-omnic"))
    p.add_argument("--keep", action="store_true", help="reuse the checkpoint and outputs in --work")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    script = converter(a.work, a.sdist)
    work = a.work / a.shape
    if work.exists() and not a.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {h.load_average()}", file=sys.stderr)
    hf = work / "hf"
    if not (hf / "config.json").is_file():
        (work / "checkpoint.json").write_text(json.dumps(h.make_checkpoint(a.shape, hf, a.context)))
    info = json.loads((work / "checkpoint.json").read_text())
    fp32 = info["fp32_bytes"]

    raw, q4 = work / f"ref-{a.outtype}.gguf", work / "ref-Q4_0.gguf"
    if not q4.is_file():
        conv = h.run_measured([h.PY, "-c", CONVERT, str(script), str(hf), "--outfile", str(raw),
                               "--outtype", a.outtype], env=h.thread_env(a.threads),
                              log=work / "convert.log")
        if conv["returncode"]:
            raise SystemExit(f"convert_hf_to_gguf.py failed, see {conv['log']}")
        quant = h.run_measured([h.PY, "-c", QUANTIZE, str(raw), str(q4), str(a.threads)],
                               env=h.thread_env(a.threads), log=work / "quantize.log")
        if quant["returncode"]:
            raise SystemExit(f"llama_model_quantize failed, see {quant['log']}")
        (work / "ref_run.json").write_text(json.dumps({"convert": conv, "quantize": quant}))
    ref = json.loads((work / "ref_run.json").read_text())

    spec, build = work / "spec.yaml", work / "omnic"
    if not (build / "manifest.json").is_file():
        omnic_spec(hf, spec, a.context, {"gguf": {"file_type": "Q4_0"}})
        run = h.run_measured([h.PY, "-m", "omnic.cli.main", "compile", str(spec), "-o",
                              str(build), "--force"], env=h.thread_env(a.threads),
                             log=work / "omnic_compile.log")
        (work / "omnic_run.json").write_text(json.dumps(run))
    run = json.loads((work / "omnic_run.json").read_text())
    if run["returncode"]:
        raise SystemExit(f"omnic compile failed, see {run['log']}")
    ours = next((build / "gguf").glob("*.gguf"))
    stages = stage_peaks(build, ("build", "gguf: lower", "gguf: golden", "reference"))

    files = {"llama.cpp": q4, "omnic": ours}
    vocab = h.SHAPES[a.shape]["vocab_size"]
    results = measure(files, ("llama",), a.threads, a.rounds, a, vocab)
    cpu = measure(files, ("llama",), 1, a.cpu_rounds, a, vocab) if a.cpu_rounds else {}
    (work / "results.json").write_text(json.dumps(
        {"threads": {k[0]: v for k, v in results.items()},
         "cpu_1_thread": {k[0]: v for k, v in cpu.items()}}, indent=1))

    def cell(name: str, key: str, best: bool = False, table: dict | None = None) -> str | None:
        value = summary((results if table is None else table)[(name, "llama")], key, best)
        return None if value is None else f"{value:.1f}"

    ref_peak = max(ref["convert"]["peak_rss_mb"], ref["quantize"]["peak_rss_mb"])
    ref_s = ref["convert"]["seconds"] + ref["quantize"]["seconds"]
    rows = []
    for name, label, path, secs, peak in (
            ("llama.cpp", "llama.cpp convert + quantize Q4_0", q4, ref_s, ref_peak),
            ("omnic", "omnic Q4_0", ours, run["seconds"], run["peak_rss_mb"])):
        rows.append([label, f"{path.stat().st_size / 2**20:.1f}", cell(name, "decode_tok_s"),
                     cell(name, "decode_tok_s_p10", best=True)]
                    + ([cell(name, "decode_cpu_tok_s", table=cpu)] if cpu else [])
                    + [cell(name, "prefill_tok_s"), f"{secs:.0f}", f"{peak:.0f}",
                       f"{peak * 2**20 / fp32:.2f}"])

    def ratio(key: str, table: dict, best: bool = False) -> str:
        x = summary(table[("omnic", "llama")], key, best)
        y = summary(table[("llama.cpp", "llama")], key, best)
        return "—" if x is None or y is None else f"{x / y:.2f}x"

    loads = sorted({r["load_average"] for v in [*results.values(), *cpu.values()] for r in v
                    if "load_average" in r})
    notes = [
        f"checkpoint: {a.shape} shape, {info['parameters']:,} parameters, random fp32 weights "
        f"({fp32 / 2**20:.0f} MiB); {a.threads} threads; prompt {a.prompt}, decode {a.decode}, "
        f"{a.rounds} interleaved rounds x {a.repeat} runs (+1 warm-up each); both files run by "
        "the same llama-cpp-python loop; p10 = fastest tenth of the single-token steps"
        + (f"; cpu = 1 thread, tok/s from CPU time per step, {a.cpu_rounds} rounds" if cpu else ""),
        f"llama.cpp: convert ({a.outtype}) {ref['convert']['seconds']:.0f}s / "
        f"{ref['convert']['peak_rss_mb']:.0f} MiB, quantize {ref['quantize']['seconds']:.0f}s / "
        f"{ref['quantize']['peak_rss_mb']:.0f} MiB (peak RSS of each process: VmHWM)",
        "omnic stages (s, peak MiB): " + ", ".join(f"{k} {v[0]:.0f}s/{v[1]:.0f}"
                                                   for k, v in stages.items()),
        f"tensor types: llama.cpp {tensor_types(q4)}; omnic {tensor_types(ours)}",
        f"decode omnic / llama.cpp: median {ratio('decode_tok_s', results)}, p10 "
        f"{ratio('decode_tok_s_p10', results, True)}"
        + (f", cpu-time {ratio('decode_cpu_tok_s', cpu)}" if cpu else "")
        + f"; compile peak omnic / llama.cpp: {run['peak_rss_mb'] / ref_peak:.2f}x",
        f"load average (1/5/15 min) at end: {h.load_average()}; per worker "
        f"{loads[0] if loads else '?'} .. {loads[-1] if loads else '?'}",
    ]
    notes += [f"{k[0]}: {r['error']}" for k, v in [*results.items(), *cpu.items()] for r in v
              if "error" in r][:6]
    h.print_table("llama.cpp convert_hf_to_gguf + quantize vs omnic (Q4_0 GGUF, same weights)",
                  ["artifact", "MiB", "decode tok/s", "p10 tok/s"] + (["cpu tok/s"] if cpu else [])
                  + ["prefill tok/s", "compile s", "compile peak MiB", "x fp32"], rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
