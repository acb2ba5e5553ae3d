"""LFM2 on TVM, ExecuTorch and Core ML: the short-convolution layers' state beside the
attention layers' KV cache. TVM writes it in place with its own kernel (omnic/targets/tvm/
kernels/short_conv.py); ExecuTorch keeps it as a mutable buffer and Core ML as a state (MLState),
both copied back whole by the graph.

A tiny random transformers LFM2 (tests/hf_checkpoints.py: three convolution layers, kernel 4,
around one attention layer) is imported with `omnic import` and compiled at fp32 and at int4.
Every artifact must pass its golden check against omnic's reference on its real runtime (the
Relax VM, ExecuTorch's runtime; Core ML off macOS: its structural check, states included),
greedy tokens included; the fp32 TVM artifact must also equal
transformers itself (prefill logits, 16 greedy tokens).
"""

from __future__ import annotations

import platform

import numpy as np
import pytest
import yaml

pytest.importorskip("tvm")
pytest.importorskip("transformers")

from hf_checkpoints import make_checkpoint  # noqa: E402

PROMPT = [256, 12, 250, 99, 7, 301, 45, 45, 3, 510, 128, 64]
STEPS = 16
TARGETS = {"tvm": {"target": "llvm"}, "executorch": {"backend": "xnnpack"},
           "coreml": {"deployment_target": "iOS18", "compute_precision": "fp32"}}


@pytest.fixture(scope="module")
def lfm2(tmp_path_factory):
    import torch

    from omnic.compiler.pipeline import compile
    from omnic.importers.hf import import_hf

    root = tmp_path_factory.mktemp("lfm2")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        hf_dir = make_checkpoint("lfm2", root / "hf")
        builds = {}
        for quant in ("fp32", "int4_g32"):
            spec = root / f"lfm2-{quant}.yaml"
            data, _ = import_hf(hf_dir, spec, context_length=64)
            data.update(device="desktop_cpu", quantization=quant,
                        targets=TARGETS,
                        golden={"cases": 1, "prompt_tokens": 12, "decode_steps": 8})
            spec.write_text(yaml.safe_dump(data, sort_keys=False))
            builds[quant] = compile(spec, root / f"build-{quant}", progress=False)
    finally:
        torch.set_num_threads(before)
    return hf_dir, builds


@pytest.mark.parametrize("quant", ["fp32", "int4_g32"])
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_the_artifact_passes_its_golden_check(lfm2, quant, target):
    from omnic.golden.metrics import GREEDY_MATCH

    result = lfm2[1][quant]
    a = next(a for a in result.manifest.artifacts if a.target == target)
    if target == "coreml" and platform.system() != "Darwin":
        from omnic.spec import ResolvedSpec
        from omnic.targets.coreml.structure import structural_check

        # no Core ML runtime here: the compile ran the structural check instead (states, ops)
        assert a.golden.status == "not_run" and "structure checked" in a.golden.reason
        spec = ResolvedSpec.model_validate(result.manifest.spec)
        assert structural_check(a, result.out_dir, spec) == []
        return
    assert a.golden.status == "passed", a.golden.reason
    assert a.golden.metrics[GREEDY_MATCH] == 1.0
    if target == "tvm":
        assert a.details["kernel_calls"]["short_conv"] == 3  # one per convolution layer
    else:  # the generic graph: the states are mutable buffers beside the KV cache
        assert "short_conv" in a.details["kv_cache"], a.details["kv_cache"]
    assert result.exit_code == 0


def test_fp32_equals_transformers(lfm2):
    import torch
    from transformers import AutoModelForCausalLM

    from omnic.targets.tvm.target import TvmRunner

    hf_dir, builds = lfm2
    result = builds["fp32"]
    a = next(a for a in result.manifest.artifacts if a.target == "tvm")
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        ref_logits = hf(ids).logits[0].numpy()
        hf.generation_config.eos_token_id = None
        ref_tokens = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=STEPS,
                                 do_sample=False, pad_token_id=258)[0, len(PROMPT):].tolist()
    runner = TvmRunner(result.out_dir / a.path, num_threads=1)
    logits = runner.forward(np.array(PROMPT))
    assert np.abs(logits - ref_logits).max() < 1e-4
    tokens = [int(logits[-1].argmax())]
    for _ in range(STEPS - 1):  # decode: the conv states carry the last tokens between calls
        tokens.append(int(runner.forward(np.array(tokens[-1:]))[-1].argmax()))
    assert tokens == ref_tokens
