"""LFM2 compiles to llama.cpp's `lfm2` architecture, written as convert_hf_to_gguf's LFM2Model
writes it, and llama.cpp runs it like transformers.

The checkpoint is tests/hf_checkpoints.py's tiny `Lfm2ForCausalLM` (4 layers: conv, conv,
attention, conv; a kernel of 4, not LFM2's 3, so a wrong `shortconv.l_cache` shows), imported
with `omnic import` and compiled with the GGUF target as a user would. The reference is
transformers itself, not omnic's PyTorch decoder: the comparison covers the importer's renaming,
the writer's layout (the kernel squeezed to [d, kernel], per-layer head_count_kv with 0 on the
convolutions) and llama.cpp's graph (src/models/lfm2.cpp) at once.
ref: https://github.com/ggml-org/llama.cpp/blob/master/conversion/lfm2.py
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_checkpoints import import_checkpoint, transformers_greedy  # noqa: E402
from test_gguf_families import PROMPT, STEPS, _llama_cpp_greedy  # noqa: E402

KERNEL = 4  # hf_checkpoints' conv_L_cache
CONVS = [True, True, False, True]


@pytest.fixture(scope="module")
def lfm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tiny checkpoint's folder, the spec `omnic import` wrote for it)."""
    return import_checkpoint("lfm2", tmp_path_factory.mktemp("lfm2"), "gguf")


@pytest.fixture(scope="module")
def lowered(lfm2: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """file type -> (artifact, build folder, omnic's decoder): the GGUF target's lowering of the
    imported spec (the compile pipeline's last step, without its golden check)."""
    from omnic.compiler.validate import load_resolved
    from omnic.model import build_model
    from omnic.passes.program import Program
    from omnic.quant.select import tensor_schemes
    from omnic.spec import ResolvedSpec
    from omnic.targets.base import get_target

    _, spec_path = lfm2
    imported = load_resolved(spec_path)
    decoder = build_model(imported, spec_path.parent)
    built: dict[str, tuple] = {}

    def lower(file_type: str):
        if file_type not in built:
            data = imported.model_dump(mode="json")
            data["targets"]["gguf"]["file_type"] = file_type
            spec = ResolvedSpec.model_validate(data)
            assert get_target("gguf").check(spec) == []
            program = Program(spec, spec_path.parent, decoder, quant_plan=tensor_schemes(spec))
            build = tmp_path_factory.mktemp(file_type)
            (artifact,) = get_target("gguf").lower(program, build / "gguf")
            built[file_type] = (artifact, build, decoder)
        return built[file_type]
    return lower


def test_file_has_convert_hf_to_gguf_s_names_keys_and_types(lowered) -> None:
    import gguf

    artifact, build, _ = lowered("Q4_0")
    assert artifact.details["architecture"] == "lfm2"
    reader = gguf.GGUFReader(build / artifact.path)
    # 0 kv heads marks a convolution layer (src/models/lfm2.cpp: is_recr_impl)
    assert reader.get_field("lfm2.attention.head_count_kv").contents() == [
        0 if conv else 2 for conv in CONVS]
    assert reader.get_field("lfm2.shortconv.l_cache").contents() == KERNEL
    tensors = {t.name: t for t in reader.tensors}
    lfm2_names = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.LFM2]}
    for name in tensors:  # every tensor one gguf-py lists for LFM2
        assert re.sub(r"^blk\.\d+\.", "blk.{bid}.", name.removesuffix(".weight")) in lfm2_names
    assert "token_embd_norm.weight" in tensors and "output_norm.weight" not in tensors
    for i, conv in enumerate(CONVS):
        mixer = ("shortconv.in_proj", "shortconv.conv", "shortconv.out_proj") if conv else (
            "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm")
        assert {n.split(".", 2)[2].removesuffix(".weight") for n in tensors
                if n.startswith(f"blk.{i}.")} == {"attn_norm", "ffn_norm", "ffn_gate", "ffn_up",
                                                  "ffn_down", *mixer}
        if conv:
            # the [d, 1, kernel] kernel squeezed to 2-D (GGUF lists dims reversed), never
            # quantized; the projections take the file type
            kernel = tensors[f"blk.{i}.shortconv.conv.weight"]
            assert list(kernel.shape) == [KERNEL, 64] and kernel.tensor_type.name == "F32"
            for proj in ("in_proj", "out_proj"):
                assert tensors[f"blk.{i}.shortconv.{proj}.weight"].tensor_type.name == "Q4_0"


def test_compiled_f32_gguf_runs_in_llama_cpp_like_transformers(lfm2, tmp_path: Path) -> None:
    """`omnic import` -> `omnic compile` (its golden check passing) -> llama.cpp vs
    transformers: the same greedy tokens, logits within fp32 noise, in one call and token by
    token (the convolution state carried from call to call)."""
    from omnic.compiler.pipeline import compile
    from omnic.compiler.validate import load_resolved
    from omnic.targets.gguf.runtime import LlamaCppRunner
    from omnic.targets.kv_layout import kv_positions

    ckpt, spec = lfm2
    f32 = spec.with_name("lfm2-f32.yaml")  # beside it: the spec's relative paths hold
    f32.write_text(spec.read_text().replace("gguf: {}", "gguf: {file_type: F32}"))
    build = compile(f32, tmp_path / "build", progress=False)
    assert build.status == "passed"
    (path,) = (build.out_dir / "gguf").glob("*.gguf")
    ref_tokens, ref = transformers_greedy(ckpt, PROMPT, STEPS)
    runner = LlamaCppRunner(str(path), n_ctx=64)
    try:
        assert runner.load_warnings == []
        # one KV cache, for the one attention layer (the convolutions keep a state instead),
        # as the memory plan predicts
        assert runner.kv_caches == [(256, 1)]
        assert kv_positions(load_resolved(f32), "gguf") == [0 if c else 256 for c in CONVS]
        assert _llama_cpp_greedy(runner, PROMPT, STEPS) == ref_tokens
        sequence = PROMPT + ref_tokens[:-1]
        runner.reset()
        got = runner.forward(np.asarray(sequence, np.int64))
        runner.reset()
        steps = np.concatenate([runner.forward(np.asarray([t], np.int64)) for t in sequence])
        scale = np.abs(ref).max()
        err = max(np.abs(got - ref).max(), np.abs(steps - ref).max())
        # fp32 both sides, the same math in another order
        assert scale > 1.0 and err < 1e-3 * scale, f"max logit error {err:.3g} of {scale:.3g}"
        print(f"lfm2 F32: max logit error {err:.2e} (logits up to {scale:.1f})")
    finally:
        runner.close()


@pytest.mark.parametrize("file_type", ["Q4_0", "Q4_K_M"])
def test_quantized_gguf_runs_like_its_exact_reference(lowered, file_type: str) -> None:
    """Q4_0 written by omnic, Q4_K_M by llama.cpp's own quantizer (which keeps the kernel F32
    by itself, llama-quant.cpp): llama.cpp against omnic's decoder holding the weights exactly
    as stored, fp32 activations (llama.cpp rounds them to Q8 blocks: nmse, not 1e-3)."""
    import gguf

    from omnic.runtime.generate import greedy
    from omnic.runtime.torch_runner import TorchRunner
    from omnic.targets.base import get_target
    from test_gguf import decode_logits, nmse, reference_decoder

    artifact, build, decoder = lowered(file_type)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(build / artifact.path).tensors}
    assert types["blk.0.shortconv.conv.weight"] == "F32"
    assert types["blk.0.shortconv.in_proj.weight"] != "F32"
    exact = TorchRunner(reference_decoder(decoder, artifact.reference_weights))
    tokens, _ = greedy(exact, PROMPT, STEPS)
    runner = get_target("gguf").load(artifact, build)
    try:
        got = decode_logits(runner, PROMPT, tokens[:-1])
        ref = decode_logits(exact, PROMPT, tokens[:-1])
        print(f"lfm2 {file_type}: nmse vs exact {nmse(got, ref):.2e}")
        assert nmse(got, ref) < 5e-3
        assert greedy(runner, PROMPT, STEPS)[0][:4] == tokens[:4]
    finally:
        runner.close()


@pytest.mark.parametrize("change,field", [
    ({"qkv_bias": True}, "model.qkv_bias"),
    ({"n_heads": 2, "n_kv_heads": 1, "head_dim": 16}, "model.head_dim"),  # wo is [d, d]
    ({"layer_pattern": ["short_conv", "nope", "full", "short_conv"]}, "model.layer_pattern"),
    ({"moe": {"experts": 4, "top_k": 2}}, "model.moe"),
    ({"scale_embeddings": True}, "model.scale_embeddings"),  # lfm2 does not scale them
])
def test_what_lfm2_cannot_carry_is_named(change: dict, field: str) -> None:
    from omnic.formats.gguf_families import plan_arch
    from omnic.spec import Model

    base = {"vocab_size": 512, "d_model": 64, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2,
            "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64, "qk_norm": True,
            "tie_embeddings": True, "short_conv": {"kernel": 3},
            "layer_pattern": ["short_conv", "short_conv", "full", "short_conv"]}
    assert plan_arch(Model.model_validate(base))[0].arch == "lfm2"
    plan, problems = plan_arch(Model.model_validate({**base, **change}))
    assert plan is None and field in [p.field for p in problems], problems
