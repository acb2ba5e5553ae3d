"""Checks shared by the ExecuTorch and Core ML tests of the hybrid models whose layers carry
states (mamba2, gated_deltanet) beside the attention layers' KV caches (a test helper)."""

from __future__ import annotations

import platform
from pathlib import Path

from hf_checkpoints import artifact_of


def assert_mlpackage_declares(result, states: dict[str, list[int]]) -> None:
    """The CompileResult's Core ML package declares exactly `states` (name -> shape) as fp16
    MLStates, and passes the structural check (what the compile ran instead of the golden
    check off macOS)."""
    import coremltools as ct

    from omnic.spec import ResolvedSpec
    from omnic.targets.coreml.quant import load_program
    from omnic.targets.coreml.structure import read_signature, structural_check

    a = artifact_of(result, "coreml")
    package = result.out_dir / a.path
    got = read_signature(ct.utils.load_spec(str(package)), load_program(package))["states"]
    assert {n: s["shape"] for n, s in got.items()} == states
    assert {s["dtype"] for s in got.values()} == {"float16"}  # Core ML states are fp16
    if platform.system() != "Darwin":
        # no Core ML runtime here: the compile ran the structural check instead
        assert a.golden.status == "not_run" and "structure checked" in a.golden.reason
    spec = ResolvedSpec.model_validate(result.manifest.spec)
    assert structural_check(a, result.out_dir, spec) == []


def assert_quantizer_keeps(spec_path: Path, layers: list[int], mixer: str,
                           quantized: tuple[str, ...], kept: tuple[str, ...]) -> None:
    """quantize_decoder itself on the int4 plan of the spec at `spec_path`: in each of `layers`
    the `mixer` module's `quantized` tensors become torchao int4 tensors and its `kept` ones
    stay the very fp32 parameters."""
    import torch

    from omnic.compiler.validate import load_resolved
    from omnic.model import build_model
    from omnic.quant.select import tensor_schemes
    from omnic.targets.executorch.quant import quantize_decoder

    spec = load_resolved(spec_path)
    decoder = build_model(spec, spec_path.parent).eval()
    before = {n: p.detach().clone() for n, p in decoder.named_parameters()}
    quantize_decoder(decoder, tensor_schemes(spec))
    after = dict(decoder.named_parameters())
    for i in layers:
        for name in quantized:
            w = after[f"layers.{i}.{mixer}.{name}"]
            assert type(w.data).__name__ == "IntxUnpackedToInt8Tensor"
            assert w.data.target_dtype == torch.int4
        for name in kept:
            w = after[f"layers.{i}.{mixer}.{name}"]
            assert type(w.data) is torch.Tensor and w.dtype == torch.float32
            assert torch.equal(w, before[f"layers.{i}.{mixer}.{name}"])


def assert_pte_passes_with_state_buffers(result, mixer: str, layers: list[int],
                                         conv_shape: list[int], state_shape: list[int]):
    """The CompileResult's .pte passed its golden check with every greedy token, the generic
    graph's `mixer` layers (`layers`) keeping both states as buffers copied back whole
    (conv_shape and state_shape); the artifact."""
    from omnic.golden.metrics import GREEDY_MATCH

    a = artifact_of(result, "executorch")
    assert a.golden.status == "passed", a.golden.reason
    assert a.golden.metrics[GREEDY_MATCH] == 1.0
    assert result.exit_code == 0
    assert mixer in a.details["kv_cache"], a.details["kv_cache"]
    assert a.details["runtime_ops"]["aten::copy_"] == 2 * len(layers)
    for i in layers:
        assert a.signature["state"][f"k_cache_{i}"]["shape"] == conv_shape
        assert a.signature["state"][f"v_cache_{i}"]["shape"] == state_shape
    return a
