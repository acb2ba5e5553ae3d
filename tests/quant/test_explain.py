"""`omnic plan --explain-quant` against what the targets really store.

Tiny specs are lowered for real (GGUF through gguf-py and llama.cpp's quantizer, ONNX through
the exporter and store_weights, ExecuTorch's weight swap) and every tensor's recorded storage is
compared with explain's answer: GGUF types read back from the file with gguf-py's reader, ONNX
forms from the model's `omnic.weights` records, ExecuTorch forms from `quantize_decoder`. Byte
counts of the weights are compared with the files too (ggml block sizes, ONNX initializers).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from omnic.targets.explain import explain, one_line
from omnic.targets.fates import fates
from omnic.spec import ResolvedSpec

REPO = Path(__file__).resolve().parents[2]
DEVICE = {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}
TINY = {"vocab_size": 320, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64, "tie_embeddings": True}
# 12 layers of 256-wide rows: llama.cpp's K mixtures apply without fallback and its
# use_more_bits layer rule is visible (with an override on layer 1 that skips the rule)
WIDE = {**TINY, "vocab_size": 512, "d_model": 256, "n_layers": 12,
        "ffn": {"kind": "swiglu", "hidden": 512}, "tie_embeddings": False}
QUANT = {"weights": {"scheme": "int4", "group_size": 32, "symmetric": True},
         "overrides": [{"match": {"role": "embedding"}, "scheme": "int8"},
                       {"match": {"name": r"layers\.1\.attn\.v\.weight"}, "scheme": "int8",
                        "group_size": 32}]}


def make_spec(model: dict, quant: dict, targets: dict) -> ResolvedSpec:
    return ResolvedSpec.model_validate({
        "omnic": 1, "name": "tiny", "device": DEVICE, "model": model, "quantization": quant,
        "targets": targets})


def lower(spec: ResolvedSpec, target: str, out: Path) -> Any:
    pytest.importorskip("torch")
    from omnic.model import build_model
    from omnic.passes.program import Program
    from omnic.quant.select import tensor_schemes
    from omnic.targets.base import get_target

    program = Program(spec, Path("."), build_model(spec, Path(".")),
                      quant_plan=tensor_schemes(spec))
    (artifact,) = [a for a in get_target(target).lower(program, out / target)
                   if a.component == "decoder"]
    return artifact


def gguf_types(path: Path) -> dict[str, tuple[str, int]]:
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in reader.tensors}


# -- GGUF ------------------------------------------------------------------------------------
@pytest.mark.parametrize("file_type", ["auto", "Q4_K_M"])
def test_gguf_types_are_what_explain_says(tmp_path, file_type):
    if file_type != "auto":
        pytest.importorskip("llama_cpp")
    model = TINY if file_type == "auto" else WIDE
    spec = make_spec(model, QUANT, {"gguf": {"file_type": file_type}})
    artifact = lower(spec, "gguf", tmp_path)
    stored = gguf_types(tmp_path / artifact.path)
    predicted = fates(spec, "gguf")
    for name, fate in predicted.items():
        gname = fate.detail["gguf_name"]
        assert stored[gname][0] == fate.detail["type"], (name, gname, stored[gname], fate)
    # bytes: the ggml block sizes of the prediction are the file's
    by_gguf = {f.detail["gguf_name"]: f.bytes for f in predicted.values()}
    assert sum(by_gguf.values()) == sum(b for n, (_, b) in stored.items() if n in by_gguf)
    if file_type == "Q4_K_M":  # the mixture really mixes: Q6_K on llama.cpp's chosen layers
        kinds = {f.form for f in predicted.values()}
        assert {"Q4_K", "Q6_K", "Q8_0"} <= kinds


def test_k_mixture_follows_llama_cpp_layer_rule():
    """Independent of the code under test: llama.cpp's use_more_bits for 12 layers picks
    i < 1, i >= 10 and (i - 1) % 3 == 2 (llama-quant.cpp), for attn_v and ffn_down."""
    spec = make_spec(WIDE, {"weights": {"scheme": "int4", "group_size": 32}},
                     {"gguf": {"file_type": "Q4_K_M"}})
    f = fates(spec, "gguf")
    more = {i for i in range(12) if i < 1 or i >= 10 or (i - 1) % 3 == 2}
    for i in range(12):
        want = "Q6_K" if i in more else "Q4_K"
        assert f[f"layers.{i}.attn.v.weight"].form == want, i
        assert f[f"layers.{i}.ffn.down.weight"].form == want, i
        assert f[f"layers.{i}.attn.q.weight"].form == "Q4_K"
    assert f["lm_head.weight"].form == "Q6_K"


# -- ONNX ------------------------------------------------------------------------------------
def test_onnx_records_are_what_explain_says(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    spec = make_spec(TINY, QUANT, {"onnx": {}})
    artifact = lower(spec, "onnx", tmp_path)
    model = onnx.load(tmp_path / artifact.path / "model.onnx")
    records = json.loads({p.key: p.value for p in model.metadata_props}["omnic.weights"])
    predicted = fates(spec, "onnx")
    assert set(records) == {n for n, f in predicted.items() if f.detail["form"] != "initializer"}
    for name, rec in records.items():
        detail = predicted[name].detail
        assert rec["form"] == detail["form"], name
        if rec["form"] == "MatMulNBits":
            assert (rec["bits"], rec["block_size"]) == (detail["bits"], detail["block_size"]), name
    # bytes of the quantized matrices: every qweight / scales / zero-point initializer in the
    # file (a fusion may pack q, k, v into one MatMulNBits: compare the totals)
    inits = {i.name: numpy_helper.to_array(i).nbytes for i in model.graph.initializer}
    stored = {rec[k] for rec in records.values() if rec["form"] == "MatMulNBits"
              for k in ("qweight", "scales", "zero_points") if rec.get(k)}
    assert sum(inits[n] for n in stored) == sum(
        f.bytes for n, f in predicted.items() if f.detail["form"] == "MatMulNBits")
    assert predicted["layers.1.attn.v.weight"].form == "MatMulNBits int8 block 32"


# -- ExecuTorch ------------------------------------------------------------------------------
def test_executorch_forms_are_what_explain_says():
    pytest.importorskip("torchao")
    from omnic.model import build_model
    from omnic.quant.select import tensor_schemes
    from omnic.targets.executorch.quant import quantize_decoder

    quant = {**QUANT, "overrides": QUANT["overrides"][:1]}  # XNNPACK: int8 per channel only
    spec = make_spec(TINY, quant, {"executorch": {}})
    decoder = build_model(spec, Path("."))
    result = quantize_decoder(copy.deepcopy(decoder), tensor_schemes(spec))
    predicted = fates(spec, "executorch")
    assert result.forms == {n: f.form for n, f in predicted.items() if f.detail["form"]}
    assert predicted["embed.weight"].form == "embedding_8bit+8da8w"


# -- the explanation itself --------------------------------------------------------------------
def test_rows_group_consecutive_layers_and_name_the_rule():
    spec = make_spec(TINY, QUANT, {"gguf": {}, "onnx": {}, "coreml": {}, "tvm": {}})
    ex = explain(spec)
    names = [r.name for r in ex.rows]
    assert "layers.0-1.attn.q.weight" in names  # two identical layers: one row
    assert "layers.0.attn.v.weight" in names and "layers.1.attn.v.weight" in names  # override
    v1 = ex.lookup("layers.1.attn.v.weight")
    assert v1.rule == r"overrides[1] {name: layers\.1\.attn\.v\.weight}"
    assert v1.targets == {"gguf": "Q8_0", "onnx": "MatMulNBits int8 block 32",
                          "coreml": "constexpr_blockwise_shift_scale int8 block 32",
                          "tvm": "packed int8 g32"}
    assert ex.lookup("embed.weight").rule == "overrides[0] {role: embedding}"
    assert ex.lookup("norm.weight").rule == "fp32 (not a matrix)"
    assert ex.lookup("layers.0.attn.q.weight").rule == "default"
    assert sum(len(r.tensors) for r in ex.rows) == len(fates(spec, "gguf"))
    line = one_line(ex, "layers.1.attn.v.weight")
    assert line.startswith("layers.1.attn.v.weight → ") and "gguf Q8_0" in line
    # Core ML's grid is its own (levels -7..7) and explain says so
    assert any("-7..7" in g for g in ex.grids["coreml"])


def test_a_calibrated_method_is_named_where_it_chooses_int4_codes():
    quant = copy.deepcopy(QUANT)
    quant["weights"]["method"] = "gptq"
    ex = explain(make_spec(TINY, quant, {"gguf": {}, "onnx": {}}))
    assert ex.lookup("layers.0.attn.q.weight").rule == "default; codes gptq on calibration text"
    # int8 overrides take rtn
    v1 = ex.lookup("layers.1.attn.v.weight").rule
    assert v1 == r"overrides[1] {name: layers\.1\.attn\.v\.weight}"
    assert ex.lookup("embed.weight").rule == "overrides[0] {role: embedding}"


def test_a_target_that_cannot_carry_the_spec_says_why():
    quant = {"weights": {"scheme": "int4", "group_size": 64}}
    ex = explain(make_spec(TINY, quant, {"gguf": {}, "onnx": {}}))
    assert "gguf" in ex.not_carried and "group_size 64" in ex.not_carried["gguf"]
    assert ex.lookup("layers.0.attn.q.weight").targets == {"onnx": "MatMulNBits int4 block 64"}


def test_cli_explain_quant_is_torch_free():
    heavy = ("torch", "onnx", "onnxruntime", "coremltools", "executorch", "tvm", "gguf",
             "transformers", "safetensors", "tokenizers")
    code = (
        "import sys, io, contextlib; from omnic.cli.main import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        f"    assert main(['plan', {str(REPO / 'specs' / 'mobile_2gb.yaml')!r}, '--explain-quant',"
        " '--tensor', 'layers.3.attn.v.weight']) == 0\n"
        "print(buf.getvalue())\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout.strip().splitlines()
    assert out[-1] == "[]", out[-1]
    assert out[0] == ("layers.3.attn.v.weight → onnx MatMulNBits int4 block 32 | gguf Q4_0 | "
                      "executorch 8da4w_g32 | coreml constexpr_blockwise_shift_scale int4 block 32"
                      " | tvm packed int4 g32")


def test_kv_cache_row_follows_the_spec():
    quant = {**QUANT, "kv_cache": "int8"}
    model = {**TINY, "n_heads": 2, "n_kv_heads": 1}  # head_dim 32: q8_0 blocks fit
    ex = explain(make_spec(model, quant, {"gguf": {}, "onnx": {}}))
    assert ex.kv_cache == {"gguf": "q8_0 (llama.cpp cache type)"}  # onnx refuses an int8 cache
    assert "kv_cache" in ex.not_carried["onnx"]
    assert explain(make_spec(TINY, QUANT, {"gguf": {}})).kv_cache == {"gguf": "f32"}


def test_kv_cache_extent_follows_the_per_layer_table():
    model = {**TINY, "n_layers": 3, "layer_pattern": "2 sliding : 1 full",
             "sliding_window": {"size": 8}}  # TINY's context is 64
    quant = {**QUANT, "overrides": QUANT["overrides"][:1]}  # ExecuTorch: no grouped int8
    ex = explain(make_spec(model, quant, {"gguf": {}, "executorch": {}}))
    assert ex.kv_extent["executorch"] == "8 (sliding) x 2 + 64 x 1 layers, positions each"
    # llama.cpp pads to 256 cells: min(256, 8 + n_ubatch 64) -> 256, like the full layer
    assert ex.kv_extent["gguf"] == "256 x 1 + 256 (sliding) x 2 layers, positions each"


def test_tvm_refuses_bf16_before_lowering():
    """apache-tvm 0.27's frontend cannot import bf16 parameters (found by bench/quant_quality.py:
    the lowering crashed after check() had accepted the spec); now check and explain say so."""
    spec = make_spec(TINY, {"weights": {"scheme": "bf16"}}, {"tvm": {}, "gguf": {}})
    ex = explain(spec)
    assert "bf16" in ex.not_carried["tvm"] and "gguf" not in ex.not_carried
    assert ex.lookup("layers.0.attn.q.weight").targets == {"gguf": "BF16"}
