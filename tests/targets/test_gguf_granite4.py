"""Granite 4.0-H compiles to llama.cpp's `granitehybrid` architecture, written as
convert_hf_to_gguf's GraniteHybridModel (Mamba2Model + GraniteMoeModel) writes it, and llama.cpp
runs it like transformers; the GGUF importer reads the file back.

The checkpoint is tests/hf_checkpoints.py's tiny `GraniteMoeHybridForCausalLM` (4 layers: mamba,
mamba, attention (NoPE), mamba; 4 SSM heads of 32, 2 groups, d_state 16, kernel 4; Granite's
four multipliers), imported with `omnic import` and compiled with the GGUF target as a user
would. The references are independent of the code under test: transformers itself for the F32
file's logits, the checkpoint's own tensors under the converter's transforms (restated here from
conversion/mamba.py and conversion/granite.py) for the file's layout, and the weights as stored
in the file (dequantized by gguf-py) for the quantized files.
ref: https://github.com/ggml-org/llama.cpp/blob/master/conversion/granite.py
ref: https://github.com/ggml-org/llama.cpp/blob/master/src/models/granite-hybrid.cpp
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

llama_cpp = pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from gguf_hybrid import (  # noqa: E402
    assert_f32_runs_like_transformers,
    assert_tensors_are_converted,
    import_back,
)
from hf_checkpoints import import_checkpoint  # noqa: E402
from test_gguf_families import (  # noqa: E402
    PROMPT, STEPS, _random_decoder, _runs_like_the_reference,
)

MAMBA = [True, True, False, True]  # hf_checkpoints' layer_types
# one golden case, short: the compile's own check, kept inside the suite's time budget
GOLDEN = {"cases": 1, "prompt_tokens": 12, "decode_steps": 8}


@pytest.fixture(scope="module")
def granite4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tiny checkpoint's folder, the spec `omnic import` wrote for it)."""
    return import_checkpoint("granite4", tmp_path_factory.mktemp("granite4"), "gguf")


@pytest.fixture(scope="module")
def builds(granite4: tuple[Path, Path]) -> dict:
    """quant -> (CompileResult, the GGUF file) of `omnic compile` at fp32 and int4_g32."""
    from omnic.compiler.pipeline import compile

    _, spec = granite4
    data = yaml.safe_load(spec.read_text())
    out = {}
    for quant in ("fp32", "int4_g32"):
        path = spec.with_name(f"granite4-{quant}.yaml")  # beside it: relative paths hold
        path.write_text(yaml.safe_dump({**data, "quantization": quant, "golden": GOLDEN},
                                       sort_keys=False))
        result = compile(path, spec.parent / f"build-{quant}", progress=False)
        (file,) = (result.out_dir / "gguf").glob("*.gguf")
        out[quant] = (result, file)
    return out


@pytest.mark.parametrize("quant,precision", [("fp32", "fp32"), ("int4_g32", "q4_0")])
def test_the_compile_passes_its_golden_check(builds, quant: str, precision: str) -> None:
    from omnic.golden.metrics import GREEDY_MATCH

    result, _ = builds[quant]
    (a,) = result.manifest.artifacts
    assert result.status == "passed" and a.golden.status == "passed", a.golden.reason
    assert a.golden.metrics[GREEDY_MATCH] == 1.0
    assert a.details["architecture"] == "granitehybrid" and a.precision == precision


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # conversion/llama.py LlamaModel.permute (GraniteHybridModel.undo_permute = True)
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _converted(ckpt: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as convert_hf_to_gguf would store them (numpy shapes, F32):
    conversion/mamba.py Mamba2Model.modify_tensors and conversion/granite.py, restated."""
    from safetensors.numpy import load_file

    config = json.loads((ckpt / "config.json").read_text())
    groups, ffn = config["mamba_n_groups"], config["shared_intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    out = {}
    for name, w in load_file(ckpt / "model.safetensors").items():
        m = re.match(r"model\.layers\.(\d+)\.(.+)", name)
        if m is None:
            out[{"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight":
                 "output.weight", "model.norm.weight": "output_norm.weight"}[name]] = w
            continue
        blk, rest = f"blk.{m.group(1)}.", m.group(2)
        if rest == "shared_mlp.input_linear.weight":
            out[blk + "ffn_gate.weight"], out[blk + "ffn_up.weight"] = w[:ffn], w[ffn:]
            continue
        new, transform = {
            "input_layernorm.weight": ("attn_norm.weight", None),
            "post_attention_layernorm.weight": ("ffn_norm.weight", None),
            "shared_mlp.output_linear.weight": ("ffn_down.weight", None),
            "self_attn.q_proj.weight": ("attn_q.weight", lambda w: _permute(w, heads)),
            "self_attn.k_proj.weight": ("attn_k.weight", lambda w: _permute(w, kv)),
            "self_attn.v_proj.weight": ("attn_v.weight", None),
            "self_attn.o_proj.weight": ("attn_output.weight", None),
            "mamba.in_proj.weight": ("ssm_in.weight", None),
            "mamba.conv1d.weight": ("ssm_conv1d.weight", lambda w: w.squeeze()),
            "mamba.conv1d.bias": ("ssm_conv1d.bias", None),
            "mamba.dt_bias": ("ssm_dt.bias", None),
            "mamba.A_log": ("ssm_a", lambda w: -np.exp(w.reshape(-1, 1).astype(np.float64))),
            "mamba.D": ("ssm_d", lambda w: w.reshape(-1, 1)),
            "mamba.norm.weight": ("ssm_norm.weight", lambda w: w.reshape(groups, -1)),
            "mamba.out_proj.weight": ("ssm_out.weight", None),
        }[rest]
        out[blk + new] = np.asarray(transform(w) if transform else w, np.float32)
    return out


def test_the_file_is_what_convert_hf_to_gguf_writes(builds, granite4) -> None:
    """Keys from the checkpoint's config.json as GraniteHybridModel.set_gguf_parameters writes
    them; every tensor named as gguf-py lists for GRANITE_HYBRID and equal to the checkpoint's
    under the converter's transforms; in the int4 file only the matrices quantized."""
    ckpt, _ = granite4
    config = json.loads((ckpt / "config.json").read_text())
    _, f32 = builds["fp32"]
    reader = gguf.GGUFReader(f32)

    def key(name: str):  # noqa: ANN202
        return reader.get_field(f"granitehybrid.{name}").contents()

    assert key("attention.head_count_kv") == [0 if m else config["num_key_value_heads"]
                                              for m in MAMBA]
    assert (key("ssm.conv_kernel"), key("ssm.inner_size"), key("ssm.state_size"),
            key("ssm.time_step_rank"), key("ssm.group_count")) == (
        config["mamba_d_conv"], config["mamba_expand"] * config["hidden_size"],
        config["mamba_d_state"], config["mamba_n_heads"], config["mamba_n_groups"])
    assert key("rope.scaling.finetuned") is False  # NoPE: no RoPE on the attention layer
    for gguf_key, hf_key in (("attention.scale", "attention_multiplier"),
                             ("embedding_scale", "embedding_multiplier"),
                             ("residual_scale", "residual_multiplier"),
                             ("logit_scale", "logits_scaling")):
        assert np.float32(key(gguf_key)) == np.float32(config[hf_key]), gguf_key
    assert key("feed_forward_length") == config["shared_intermediate_size"]

    expected = _converted(ckpt)
    assert_tensors_are_converted(reader, expected, gguf.MODEL_ARCH.GRANITE_HYBRID)

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(builds["int4_g32"][1]).tensors}
    for name, tname in types.items():
        matrix = re.search(r"(ssm_in|ssm_out|ffn_(gate|up|down)|attn_[qkvo]\w*|^output)\.weight$",
                           name)
        want = "Q8_0" if name == "token_embd.weight" else "Q4_0" if matrix else "F32"
        assert tname == want, name  # conv, A, D, dt bias, norms: F32 as the converter keeps them


def test_f32_gguf_runs_in_llama_cpp_like_transformers(builds, granite4) -> None:
    """llama.cpp's own greedy decoding equals transformers' over 16 tokens, and its logits
    match along the whole sequence, in one call and token by token (the conv and SSM states
    carried from call to call)."""
    ckpt, spec = granite4
    assert_f32_runs_like_transformers(builds["fp32"][1], ckpt, spec, MAMBA, PROMPT, STEPS,
                                      "granite4")


@pytest.fixture(scope="module")
def decoder(granite4):
    from omnic.compiler.validate import load_resolved
    from omnic.model import build_model

    _, spec = granite4
    return build_model(load_resolved(spec), spec.parent)


def _lower(spec_path: Path, decoder, file_type: str, out: Path) -> Path:  # noqa: ANN001
    """The GGUF target's lowering of the imported spec at `file_type` (no golden check)."""
    from omnic.compiler.validate import load_resolved
    from omnic.passes.program import Program
    from omnic.quant.select import tensor_schemes
    from omnic.spec import ResolvedSpec
    from omnic.targets.base import get_target

    data = load_resolved(spec_path).model_dump(mode="json")
    data["targets"]["gguf"]["file_type"] = file_type
    spec = ResolvedSpec.model_validate(data)
    assert get_target("gguf").check(spec) == []
    program = Program(spec, spec_path.parent, decoder, quant_plan=tensor_schemes(spec))
    (artifact,) = get_target("gguf").lower(program, out / "gguf")
    return out / artifact.path


@pytest.mark.parametrize("file_type", ["Q4_0", "Q4_K_M"])
def test_quantized_gguf_runs_like_its_exact_reference(builds, granite4, decoder, file_type: str,
                                                      tmp_path: Path) -> None:
    """Q4_0 (the int4_g32 compile, written by omnic) and Q4_K_M (llama.cpp's own quantizer,
    which keeps ssm_conv1d F32 by itself): llama.cpp against omnic's decoder holding the
    weights exactly as the file stores them (gguf-py's dequantization), fp32 activations
    (llama.cpp rounds them to Q8 blocks: nmse, not 1e-4)."""
    from omnic.compiler.validate import load_resolved
    from omnic.formats.gguf_arch import plan_arch, tensor_plan
    from omnic.runtime.generate import greedy
    from omnic.runtime.torch_runner import TorchRunner
    from omnic.targets.gguf.runtime import LlamaCppRunner
    from omnic.targets.gguf.write import read_back
    from test_gguf import decode_logits, nmse, reference_decoder

    _, spec_path = granite4
    path = builds["int4_g32"][1] if file_type == "Q4_0" else _lower(spec_path, decoder,
                                                                   file_type, tmp_path)
    spec = load_resolved(spec_path)
    plan, _ = plan_arch(spec.model)
    facts, weights = read_back(path, spec, plan, tensor_plan(spec.model, plan), True)
    assert facts["types"]["blk.0.ssm_conv1d.weight"] == "F32"
    assert facts["types"]["blk.0.ssm_in.weight"] not in ("F32", "F16")
    exact = TorchRunner(reference_decoder(decoder, weights))
    tokens, _ = greedy(exact, PROMPT, STEPS)
    runner = LlamaCppRunner(str(path), n_ctx=64)
    try:
        assert runner.load_warnings == []
        got, ref = (decode_logits(r, PROMPT, tokens[:-1]) for r in (runner, exact))
        print(f"granite4 {file_type}: nmse vs the exact reference {nmse(got, ref):.2e}")
        assert nmse(got, ref) < 5e-3
        assert greedy(runner, PROMPT, STEPS)[0][:4] == tokens[:4]
    finally:
        runner.close()


def test_gguf_imports_back_to_the_same_model(builds, granite4, tmp_path: Path) -> None:
    """`omnic import` of the F32 file: the spec model of the Hugging Face import, every tensor
    equal (A_log is stored as -exp(A_log) and read back as log(-A): within float32 rounding)."""
    _, spec = granite4
    original, imported = import_back(builds["fp32"][1], spec, tmp_path)
    for name, tensor in original.items():
        if name.endswith("A_log"):
            err = (imported[name] - tensor).abs().max().item()
            assert err <= 2 * torch.finfo(torch.float32).eps * tensor.abs().max().item() + 1e-7
        else:
            assert torch.equal(imported[name], tensor), name


def test_rope_attention_layers_with_biases_run_like_the_reference(tmp_path: Path) -> None:
    """Bamba's form of the architecture: RoPE on every attention layer (rope.scaling.finetuned
    true; "normal" RoPE, q/k rows permuted; llama3 scaling as rope_freqs), q/k/v biases, tied
    embeddings, no Granite scales. No Hugging Face checkpoint has this combination here: the
    reference is omnic's decoder, whose Mamba-2 layers equal transformers (tests/importers)."""
    spec, decoder = _random_decoder("granite4-rope", {
        "n_layers": 4, "layer_pattern": "1 mamba2 : 1 full", "qkv_bias": True,
        "tie_embeddings": True,
        "rope": {"theta": 10000.0, "scaling": {
            "kind": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_context_length": 16}},
        "mamba2": {"heads": 8, "head_dim": 16, "d_state": 8, "groups": 4, "kernel": 3}},
        tmp_path)
    _runs_like_the_reference("granite4_rope", spec, decoder, "granitehybrid", tmp_path)
    (path,) = (tmp_path / "build" / "gguf").glob("*.gguf")
    reader = gguf.GGUFReader(path)
    assert reader.get_field("granitehybrid.rope.scaling.finetuned").contents() is True
    assert "rope_freqs.weight" in {t.name for t in reader.tensors}


_BASE = {"vocab_size": 512, "d_model": 64, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2,
         "ffn": {"kind": "swiglu", "hidden": 96}, "context_length": 64,
         "layer_pattern": ["mamba2", "mamba2", "nope", "mamba2"],
         "mamba2": {"heads": 4, "head_dim": 32, "d_state": 16, "groups": 2, "kernel": 4}}


@pytest.mark.parametrize("change,field", [
    ({"mamba2": {"heads": 4, "head_dim": 16, "d_state": 16}}, "model.mamba2.head_dim"),
    ({"mamba2": {**_BASE["mamba2"], "conv_bias": False}}, "model.mamba2.conv_bias"),
    ({"layer_pattern": ["mamba2", "nope", "full", "mamba2"]}, "model.layer_pattern"),
    ({"layer_pattern": ["mamba2", "short_conv", "nope", "mamba2"], "short_conv": {"kernel": 3}},
     "model.layer_pattern"),
    ({"moe": {"experts": 4, "top_k": 2}}, "model.moe"),
    ({"scale_embeddings": True}, "model.scale_embeddings"),
    ({"qk_norm": True}, "model.qk_norm"),
    ({"layer_pattern": ["mamba2", "sliding", "sliding", "mamba2"],
      "sliding_window": {"size": 8}}, "model.sliding_window"),
])
def test_what_granitehybrid_cannot_carry_is_named(change: dict, field: str) -> None:
    from omnic.formats.gguf_families import plan_arch
    from omnic.spec import Model

    assert plan_arch(Model.model_validate(_BASE))[0].arch == "granitehybrid"
    plan, problems = plan_arch(Model.model_validate({**_BASE, **change}))
    assert plan is None and field in [p.field for p in problems], problems
