"""Quality and size of every quant preset on every backend that can carry it, for one small model.

    PYTHONPATH=. .venv/bin/python bench/quant_quality.py [-o /tmp/h4/quality] \
        [--schemes fp32,fp16,int8,int4_g32,int4_g128,int4_g32_asym] [--targets onnx,gguf,...] \
        [--markdown /tmp/h4/quality.md] [--report-only]

The model is specs/mobile_2gb.yaml's decoder (pocket-chat: 6 layers, d_model 384, vocab 4096,
tied embeddings, 11.0 M parameters, seeded random weights); only `quantization:` changes, set to
each preset of presets/quant/. Each scheme is compiled once (`omnic compile`, in a subprocess)
for the enabled targets whose pre-flight check accepts it, so every number comes from a real
artifact and its real runtime, read back from the build's manifest.json:

- bytes: the artifact as the manifest records it (file or folder; TVM's includes its compiled
  code); `x fp32`: that size over the fp32 artifact of the same backend (the issue's "int4 <=
  0.32x fp32" criterion). Core ML stores floats in its compute precision, fp16 by default, so its
  fp32 baseline is an extra build at compute_precision fp32 (row `fp32@coreml-fp32-compute`);
- plan: actual / the memory plan's prediction for that target (plan_vs_actual);
- kld: mean KL(p_fp32 || p_runtime) over every golden position, nats; top1: argmax agreement
  with fp32 (llama-perplexity's "same top p"); both from the golden check against the fp32
  PyTorch decoder. Core ML runs only on macOS: off macOS its golden check is not_run (n/a).

Random weights give flatter distributions than a trained model: compare schemes with each other,
not with published KLDs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPEC = ROOT / "specs" / "mobile_2gb.yaml"
SCHEMES = ["fp32", "fp16", "bf16", "int8", "int8_g32", "int4_g32", "int4_g128", "int4_g32_asym"]
TARGETS = ["onnx", "gguf", "executorch", "coreml", "tvm"]
INT4_LIMIT = 0.32  # issue 7: int4 artifacts at most 0.32x the fp32 artifact of the same backend


# Core ML stores float weights in its compute precision (fp16 by default), so its "fp32" artifact
# is really fp16; the true fp32 baseline is compiled apart at compute_precision fp32.
COREML_FP32 = "fp32@coreml-fp32-compute"


def write_spec(scheme: str, out: Path, targets: list[str] | None = None) -> Path:
    """specs/mobile_2gb.yaml with `quantization: <scheme>` (a preset name), keeping only
    `targets` (validation checks every enabled target, so one that cannot carry the scheme
    must be left out of the spec, not only of --targets)."""
    import yaml

    data = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    if targets is not None:
        data["targets"] = {t: v for t, v in data["targets"].items() if t in targets}
    if scheme == COREML_FP32:
        data["quantization"] = "fp32"
        data["targets"] = {"coreml": {**data["targets"]["coreml"], "compute_precision": "fp32"}}
    else:
        data["quantization"] = scheme
    data["name"] = f"pocket-chat-{scheme.split('@')[0]}".replace("_", "-")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{scheme}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def carriers(spec_path: Path, targets: list[str]) -> dict[str, list[str]]:
    """target -> pre-flight problems (empty list: the target can carry the scheme)."""
    from omnic.compiler.validate import resolve, validate_file
    from omnic.targets.base import get_target

    v = validate_file(spec_path)
    resolved = resolve(v.spec, spec_path.parent)
    out = {}
    for t in targets:
        if t not in resolved.targets.enabled():
            out[t] = ["not enabled in this spec"]
            continue
        out[t] = [str(p) for p in get_target(t).check(resolved)]
    return out


def compile_one(spec_path: Path, build: Path, targets: list[str], log: Path) -> int:
    cmd = [sys.executable, "-c", "import sys; from omnic.cli.main import main; sys.exit(main())",
           "compile", str(spec_path), "-o", str(build), "--force", "-q",
           "--targets", ",".join(targets)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "w") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode


def read_build(build: Path) -> dict[str, dict]:
    """target -> {bytes, precision, kld, top1, status, plan_ratio} from a build's manifest."""
    for candidate in (build, build.with_name(build.name + ".failed")):
        path = candidate / "manifest.json"
        if path.is_file():
            m = json.loads(path.read_text())
            break
    else:
        return {}
    plan = {p["target"]: p for p in m.get("plan_vs_actual", []) if p.get("basis") == "target"}
    out = {}
    for a in m["artifacts"]:
        if a["component"] != "decoder":
            continue
        g = a["golden"]
        ratio = plan[a["target"]]["ratio"] if a["target"] in plan else _ratio(m, a, candidate)
        out[a["target"]] = {
            "bytes": a["bytes"], "precision": a["precision"], "status": g["status"],
            "kld": g["metrics"].get("kld"), "top1": g["metrics"].get("top1_fp32"),
            "plan_ratio": ratio,
        }
    return out


def _ratio(manifest: dict, artifact: dict, build: Path) -> float | None:
    """actual / predicted with the current byte model, for a manifest written without it."""
    from omnic.targets.footprint import artifact_bytes, measured_bytes
    from omnic.spec import ResolvedSpec

    predicted = artifact_bytes(ResolvedSpec.model_validate(manifest["spec"]), artifact["target"])
    if not predicted.carried:
        return None
    kept, _ = measured_bytes(build / artifact["path"], predicted.excluded)
    return kept / predicted.bytes


def table(results: dict[str, dict[str, dict]], skipped: dict[str, dict[str, str]]) -> str:
    """Markdown: one section per backend, one row per scheme."""
    lines = ["# Quantization quality: pocket-chat (specs/mobile_2gb.yaml's decoder, 11.0 M params)",
             "", "KLD = mean KL(fp32 || artifact) over golden positions (nats); top-1 = argmax "
             "agreement with fp32; x fp32 = artifact bytes / the same backend's fp32 artifact; "
             "plan = actual / predicted bytes for that target.", ""]
    failures = []
    for target in TARGETS:
        rows = [(s, results.get(s, {}).get(target)) for s in results]
        if not any(r for _, r in rows) and not any(target in skipped.get(s, {}) for s in skipped):
            continue
        fp32 = (results.get(COREML_FP32 if target == "coreml" and COREML_FP32 in results
                            else "fp32", {}).get(target) or {}).get("bytes")
        lines += [f"## {target}", "",
                  "| scheme | precision | bytes | x fp32 | plan | KLD | top-1 | golden |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for scheme in results:
            r = results[scheme].get(target)
            if r is None:
                why = skipped.get(scheme, {}).get(target)
                if why and why != "not enabled in this spec":
                    lines.append(f"| {scheme} | cannot carry: {why[:90]} | | | | | | |")
                continue
            ratio = r["bytes"] / fp32 if fp32 else None
            if scheme.startswith("int4") and ratio is not None and ratio > INT4_LIMIT:
                failures.append(f"{target} {scheme}: {ratio:.3f}x fp32 > {INT4_LIMIT}")
            kld = "n/a" if r["kld"] is None else f"{r['kld']:.2e}"
            top1 = "n/a" if r["top1"] is None else f"{r['top1']:.1%}"
            pr = "" if r["plan_ratio"] is None else f"{r['plan_ratio']:.3f}"
            lines.append(f"| {scheme} | {r['precision']} | {r['bytes']:,} | "
                         f"{'' if ratio is None else f'{ratio:.3f}'} | {pr} | {kld} | {top1} | "
                         f"{r['status']} |")
        lines.append("")
    lines.append(f"int4 <= {INT4_LIMIT}x fp32: " + ("all pass" if not failures else
                                                    "FAIL: " + "; ".join(failures)))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--out", default="/tmp/h4/quality", help="work folder (specs, builds)")
    p.add_argument("--schemes", default=",".join(SCHEMES))
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument("--report-only", action="store_true",
                   help="read existing builds, compile nothing")
    args = p.parse_args(argv)
    out = Path(args.out)
    schemes = [s for s in args.schemes.split(",") if s]
    targets = [t for t in args.targets.split(",") if t]
    if "coreml" in targets and "fp32" in schemes:
        schemes.append(COREML_FP32)
    results: dict[str, dict[str, dict]] = {}
    skipped: dict[str, dict[str, str]] = {}
    for scheme in schemes:
        spec = write_spec(scheme, out / "specs")
        problems = carriers(spec, targets)
        skipped[scheme] = {t: "; ".join(ps) for t, ps in problems.items() if ps}
        ok = [t for t in targets if not problems[t]]
        if scheme == COREML_FP32:
            ok = [t for t in ok if t == "coreml"]
        spec = write_spec(scheme, out / "specs", ok)
        build = out / "builds" / scheme
        if not args.report_only and ok:
            t0 = time.perf_counter()
            rc = compile_one(spec, build, ok, out / f"{scheme}.log")
            print(f"{scheme}: {','.join(ok)} exit {rc} in {time.perf_counter() - t0:.0f}s",
                  file=sys.stderr, flush=True)
        results[scheme] = read_build(build)
    text = table(results, skipped)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
