"""`omnic import`: what it writes, and the clear errors (exit 2) for what it cannot express."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from omnic.cli.main import main as omnic_main
from omnic.model import build_model
from omnic.compiler.validate import load_resolved

from hf_checkpoints import COMMON, make_checkpoint


def _config_dir(tmp_path, **config):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    return d


LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512,
         "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
         "rms_norm_eps": 1e-5}


@pytest.mark.parametrize("change,needle", [
    ({"architectures": ["GPT2LMHeadModel"]}, "unsupported architecture GPT2LMHeadModel"),
    ({"attention_bias": True}, "attention_bias=True"),
    ({"mlp_bias": True}, "mlp_bias=True"),
    ({"hidden_act": "relu"}, "hidden_act='relu'"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "rope type 'longrope'"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope type 'dynamic'"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                       "mscale": 1.0}}, "yarn with mscale"),
])
def test_unsupported_is_a_clear_error(tmp_path, capsys, change, needle):
    d = _config_dir(tmp_path, **{**LLAMA, **change})
    assert omnic_main(["import", str(d), "-o", str(tmp_path / "s.yaml")]) == 2
    assert needle in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "s.yaml").exists()


def test_gemma2_odd_sliding_layers_become_a_layer_pattern(tmp_path, capsys):
    from omnic.spec import Model

    d = _config_dir(tmp_path, **{**LLAMA, "architectures": ["Gemma2ForCausalLM"],
                                 "num_hidden_layers": 3,
                                 "layer_types": ["full_attention", "sliding_attention",
                                                 "full_attention"]})
    out = tmp_path / "s.yaml"
    assert omnic_main(["import", str(d), "-o", str(out)]) == 0
    model = yaml.safe_load(out.read_text())["model"]
    assert model["layer_pattern"] == "1 full : 1 sliding ..."
    table = Model.model_validate(model).table
    assert [(r.attention, r.window) for r in table] == [
        ("full", None), ("sliding", 4096), ("full", None)]  # Gemma 2's default window


def test_missing_config_is_a_clear_error(tmp_path, capsys):
    assert omnic_main(["import", str(tmp_path), "-o", str(tmp_path / "s.yaml")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_written_spec(tmp_path):
    d = _config_dir(tmp_path, **LLAMA)  # no tokenizer.json: the byte tokenizer stands in
    out = tmp_path / "specs" / "m.yaml"
    assert omnic_main(["import", str(d), "-o", str(out), "--context-length", "32",
                       "--name", "mine"]) == 0
    text = out.read_text()
    assert text.startswith(f"# Imported by `omnic import` from {d.resolve()} (LlamaForCausalLM).")
    data = yaml.safe_load(text)
    assert data["device"] == "desktop_cpu" and data["name"] == "mine"
    # outside the spec's folder: absolute (a relative path may not leave it through `..`)
    assert data["weights"] == {"source": "huggingface", "path": str(d.resolve())}
    assert data["tokenizer"] == {"kind": "byte"}
    assert data["model"]["context_length"] == 32 and data["model"]["n_kv_heads"] == 2
    assert data["model"]["norm"] == {"kind": "rmsnorm", "eps": 1e-5, "unit_offset": False}
    assert "onnx" in data["targets"]


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path, checkpoints):
    from transformers import AutoModelForCausalLM

    single = checkpoints["llama"]
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(single).save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    ref = build_model(load_resolved(_imported(single, tmp_path / "a.yaml")), tmp_path).state_dict()
    got = build_model(load_resolved(_imported(sharded, tmp_path / "b.yaml")), tmp_path).state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_mixtral_fused_expert_layout(tmp_path, checkpoints):
    """transformers 5's in-memory fused experts (gate_up_proj [E, 2I, D], down_proj [E, D, I])
    load exactly like the per-expert w1/w2/w3 layout of Hub checkpoints."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    legacy = checkpoints["mixtral"]
    fused = tmp_path / "fused"
    fused.mkdir()
    model = AutoModelForCausalLM.from_pretrained(legacy)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in sd)
    save_file(sd, fused / "model.safetensors")
    (fused / "config.json").write_text((legacy / "config.json").read_text())
    ref = build_model(load_resolved(_imported(legacy, tmp_path / "a.yaml")), tmp_path).state_dict()
    got = build_model(load_resolved(_imported(fused, tmp_path / "b.yaml")), tmp_path).state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_unknown_checkpoint_tensor_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    from omnic.compiler.validate import inline_presets, load
    from omnic.model import WeightError
    from omnic.spec.load import SpecError

    d = make_checkpoint("qwen3", tmp_path)
    sd = load_file(d / "model.safetensors")
    sd["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(COMMON["hidden_size"])
    save_file(sd, d / "model.safetensors")
    path = _imported(d, tmp_path / "q.yaml")
    with pytest.raises(SpecError, match="model.layers.0.self_attn.o_proj.bias"):
        load_resolved(path)  # validation opens the checkpoint: refused before any build
    spec = inline_presets(load(path)).resolved
    with pytest.raises(WeightError, match="model.layers.0.self_attn.o_proj.bias"):
        build_model(spec, tmp_path)


def _imported(hf_dir, out):
    assert omnic_main(["import", str(hf_dir), "-o", str(out)]) == 0
    return out
