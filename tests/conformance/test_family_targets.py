"""Every imported family compiles to every target and passes golden conformance there.

Six tiny transformers checkpoints (tests/hf_checkpoints.py: random configs, nothing downloaded)
are imported with `omnic import`'s library function and compiled at fp32 through the real
pipeline to all five targets, one build per family. The features each family brings:

| family          | what the targets must carry                                               |
|-----------------|---------------------------------------------------------------------------|
| gemma3          | two RoPE tables (linear scaling on the full layers only), sliding layers  |
|                 | beside a full one (two masks; a ring cache of the window in ExecuTorch,   |
|                 | Core ML and TVM), q/k norms, sandwich norms, scaled embeddings            |
| smollm3         | a NoPE layer (no rotary) after three RoPE layers                          |
| phi4_mini_long  | partial rotary (12 of 16 dims: slice + cat), longrope's long factors      |
| qwen3_moe       | routed experts (top-k without renormalisation), per-head q/k norm         |
| olmo2           | post-norm-only blocks, q/k norm over all heads at once                    |
| granite         | embedding, residual and attention multipliers, logits scaling             |

Each artifact must pass its golden check on its own runtime (Core ML off macOS: not_run, and its
structural check passes instead), and the runtime's own greedy continuation must equal the
reference's token for token: golden's `greedy_match` (omnic/golden/check.py) is the fraction of
decode steps where the runtime's own greedy decode agrees with the reference's, so 1.0 on every
runtime means every runtime generated the same tokens. The prompts (12 tokens) run past gemma3's
4-token window and the decode steps continue in the rings. Caches hold what
omnic/targets/kv_layout.py says each target keeps.

Time: the six builds run two at a time in worker processes (two cores; a build is mostly
single-threaded Python, ExecuTorch's lowering alone ~40 s of it).
"""

from __future__ import annotations

import os
import platform
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator

import pytest
import yaml

pytest.importorskip("transformers")

from hf_checkpoints import make_checkpoint  # noqa: E402

ALL_TARGETS = {"onnx": {}, "gguf": {"file_type": "F32"}, "executorch": {"backend": "xnnpack"},
               "coreml": {"deployment_target": "iOS18", "compute_precision": "fp32"},
               "tvm": {"target": "llvm"}}
GOLDEN = {"cases": 1, "prompt_tokens": 12, "decode_steps": 4}
# family -> transformers config overrides: the fewest layers that still show the pattern
FAMILIES = {
    "gemma3": {"num_hidden_layers": 3},  # sliding, sliding, full
    # rope x3, nope: llama.cpp hard-codes NoPE on every 4th layer (the GGUF target refuses others)
    "smollm3": {"num_hidden_layers": 4, "no_rope_layer_interval": 4},
    "phi4_mini_long": {},
    "qwen3_moe": {"norm_topk_prob": True},  # as Qwen3-30B-A3B; llama.cpp always renormalises
    "olmo2": {},
    "granite": {},
}


def _build(family: str, root: Path):
    """Import the family's checkpoint and compile it (runs in a worker process)."""
    import torch

    from omnic.compiler.pipeline import compile
    from omnic.importers.hf import import_hf

    torch.set_num_threads(1)  # two builds share two cores
    hf_dir = make_checkpoint(family, root / "hf", **FAMILIES[family])
    spec_path = root / f"{family}.yaml"
    data, _ = import_hf(hf_dir, spec_path, context_length=64)
    data.update(device="desktop_cpu", targets=ALL_TARGETS, golden=GOLDEN)
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return compile(spec_path, root / "build", progress=False)


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> Iterator[dict[str, Future]]:
    """Every family's build, started at once on a pool of two worker processes."""
    env = {"OMP_NUM_THREADS": "1", "TVM_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # inherited by the workers, which start below
    pool = ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn"))
    try:
        futures = {f: pool.submit(_build, f, tmp_path_factory.mktemp(f)) for f in FAMILIES}
        yield futures
    finally:
        pool.shutdown(cancel_futures=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_passes_on_every_target(family, builds):
    from omnic.golden.metrics import GREEDY_MATCH, GREEDY_MATCH_FP32, MAX_ABS
    from omnic.spec import ResolvedSpec
    from omnic.targets.coreml.structure import structural_check
    from omnic.targets.kv_layout import kv_positions

    result = builds[family].result()
    spec = ResolvedSpec.model_validate(result.manifest.spec)
    windows = [row.window for row in spec.model.table if row.window]
    assert all(GOLDEN["prompt_tokens"] > w for w in windows), "prompts must pass the window"

    artifacts = {a.target: a for a in result.manifest.artifacts}
    assert sorted(artifacts) == sorted(ALL_TARGETS)
    failures, errors = [], {}  # every target's failure at once, not the first one only
    for target, a in artifacts.items():
        g = a.golden
        if target == "coreml" and platform.system() != "Darwin":
            # the compile ran the structural check (the golden stage, off macOS)
            if g.status != "not_run" or "structure checked" not in (g.reason or ""):
                failures.append(f"coreml: {g.status}: {g.reason}")
            failures += [f"coreml structure: {f}" for f in structural_check(a, result.out_dir,
                                                                             spec)]
            continue
        if g.status != "passed":
            failures.append(f"{target}: {g.status}: {g.reason}")
        elif g.metrics[GREEDY_MATCH] != 1.0 or g.metrics[GREEDY_MATCH_FP32] != 1.0:
            failures.append(f"{target}: greedy tokens differ from the reference's: "
                            f"{GREEDY_MATCH} {g.metrics[GREEDY_MATCH]}")
        errors[target] = g.metrics.get(MAX_ABS)
    # ExecuTorch: export_llm's custom SDPA graph wherever it can express the model, its cache
    # written in place by update_cache; the ring caches of a sliding-window family keep the
    # generic graph (a full layer's cache written by index_put_, a ring copied back)
    ops = artifacts["executorch"].details["runtime_ops"]
    rings = any(w < spec.model.context_length for w in windows)
    custom = {"llama::custom_sdpa.out", "llama::update_cache.out"} <= set(ops)
    generic = {"aten::index_put_", "aten::copy_"} & set(ops)
    if custom == rings or bool(generic) != rings:
        failures.append(f"executorch: rings {rings} but the runtime ops are {sorted(ops)}")
    for target in ("executorch", "tvm"):  # the Core ML states are in the structural check
        if artifacts[target].details.get("kv_positions") != kv_positions(spec, target):
            failures.append(f"{target}: caches hold {artifacts[target].details.get('kv_positions')}"
                            f" positions, kv_layout says {kv_positions(spec, target)}")
    print(f"{family}: max |logit error| "
          + ", ".join(f"{t} {e:.2g}" for t, e in errors.items() if e is not None))
    assert not failures, f"{family}:\n" + "\n".join(failures)
    assert result.exit_code == 0
