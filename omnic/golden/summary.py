"""golden/<spec>/: the repository's record of what each example spec computes.

`omnic golden update` writes, per example spec (directory named after the spec file's stem):
- inputs.json: the golden prompts (exact token ids), decode_steps, seed;
- expected.json: compact summaries of the reference outputs on them: the fp32 model, and the
  model with every tensor fake-quantized by omnic.quant.reference per the spec's quantization
  ("quant_reference"): greedy tokens (exact), logits shape, statistics, two slices and a hash.

The conformance tests rebuild the references (and compile the specs) and compare with these
files, so a refactor that moves any number is caught. Tokens and shapes must match exactly;
statistics and slices within STAT_ATOL + STAT_RTOL*|x| (BLAS reorderings across machines);
the logits hash is recorded for same-machine replay and reported, never required.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from omnic.golden.check import ReferenceData
from omnic.golden.inputs import GoldenInputs

if TYPE_CHECKING:
    from omnic.spec import ResolvedSpec

STAT_ATOL = 1e-5
STAT_RTOL = 1e-4
SLICE = 8  # logits shown per slice
DIGITS = 7


def _r(x: float) -> float:
    return float(f"{float(x):.{DIGITS}g}")


def summarize_logits(logits: np.ndarray) -> dict[str, Any]:
    a = np.asarray(logits, dtype=np.float32)
    return {
        "shape": list(a.shape),
        "mean": _r(a.mean(dtype=np.float64)), "std": _r(a.std(dtype=np.float64)),
        "min": _r(a.min()), "max": _r(a.max()), "abs_mean": _r(np.abs(a).mean(dtype=np.float64)),
        "first_slice": [_r(v) for v in a[0, 0, :SLICE]],
        "last_slice": [_r(v) for v in a[-1, -1, :SLICE]],
        "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest(),
    }


def summarize_reference(ref: ReferenceData) -> dict[str, Any]:
    return {"tokens": ref.tokens.tolist(), "logits": summarize_logits(ref.logits)}


def inputs_json(inputs: GoldenInputs) -> dict[str, Any]:
    return {"prompts": inputs.prompts.tolist(), "decode_steps": inputs.decode_steps,
            "seed": inputs.seed}


def compute(spec_path: Path, spec: "ResolvedSpec") -> tuple[dict[str, Any], dict[str, Any]]:
    """(inputs.json data, expected.json data) of one spec, computed from scratch.

    Args:
        spec_path: the spec file (paths in the spec are relative to its folder).
        spec: the spec resolved and validated (`omnic.compiler.validate.load_resolved`).
    """
    import copy

    import torch

    from omnic.model import build_model
    from omnic.golden.check import reference_data
    from omnic.golden.inputs import inputs_for_spec, special_ids_of
    from omnic.digest import spec_sha256
    from omnic.quant.reference import reference_weights
    from omnic.quant.select import tensor_schemes
    from omnic.runtime.torch_runner import TorchRunner
    from omnic.tokenizer import load_tokenizer

    spec_dir = Path(spec_path).parent
    decoder = build_model(spec, spec_dir)
    tokenizer = load_tokenizer(spec, spec_dir)
    inputs = inputs_for_spec(spec, special_ids_of(tokenizer), tokenizer)
    vocab = spec.model.vocab_size
    fp32_runner = TorchRunner(decoder)
    fp32 = reference_data("fp32", fp32_runner, fp32_runner, inputs, vocab)
    expected = {
        "spec": Path(spec_path).name, "name": spec.name,
        "spec_sha256": spec_sha256(spec.model_dump(mode="json")),
        "references": {"fp32": summarize_reference(fp32)},
    }
    weights = reference_weights(decoder.state_dict(), tensor_schemes(spec))
    if weights:
        model = copy.deepcopy(decoder)
        state = model.state_dict()
        model.load_state_dict({k: torch.from_numpy(weights[k]) if k in weights else v
                               for k, v in state.items()})
        quant = reference_data("quant_reference", TorchRunner(model), fp32_runner, inputs, vocab,
                               fp32=fp32)
        expected["references"]["quant_reference"] = summarize_reference(quant)
    return inputs_json(inputs), expected


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def write(golden_root: Path, spec_path: Path, spec: "ResolvedSpec") -> Path:
    """Compute and write golden/<stem>/ for one (resolved) spec; returns the directory."""
    inputs, expected = compute(spec_path, spec)
    out = golden_root / Path(spec_path).stem
    out.mkdir(parents=True, exist_ok=True)
    (out / "inputs.json").write_text(dumps(inputs), encoding="utf-8")
    (out / "expected.json").write_text(dumps(expected), encoding="utf-8")
    return out


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= STAT_ATOL + STAT_RTOL * abs(b)


def compare_reference(name: str, expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Differences between two reference summaries (empty when they agree)."""
    out = []
    if expected["tokens"] != actual["tokens"]:
        out.append(f"{name}: greedy tokens {actual['tokens']} != golden {expected['tokens']}")
    e, a = expected["logits"], actual["logits"]
    if e["shape"] != a["shape"]:
        out.append(f"{name}: logits shape {a['shape']} != golden {e['shape']}")
        return out
    for key in ("mean", "std", "min", "max", "abs_mean"):
        if not _close(a[key], e[key]):
            out.append(f"{name}: logits {key} {a[key]} != golden {e[key]}")
    for key in ("first_slice", "last_slice"):
        bad = [i for i, (x, y) in enumerate(zip(a[key], e[key])) if not _close(x, y)]
        if bad:
            i = bad[0]
            out.append(f"{name}: logits {key}[{i}] {a[key][i]} != golden {e[key][i]}")
    return out
