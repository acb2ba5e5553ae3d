"""`omnic run` on an imported checkpoint agrees with transformers (tokens and prefill logits)."""

from __future__ import annotations

import json

import numpy as np
import torch

from omnic.cli.main import main as omnic_main

PROMPT = [256, 72, 101, 108, 108, 111, 300, 17]


def test_run_tokens_json_and_logits(checkpoints, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    hf_dir = checkpoints["llama"]
    spec = tmp_path / "llama.yaml"
    assert omnic_main(["import", str(hf_dir), "-o", str(spec)]) == 0
    capsys.readouterr()
    logits_path = tmp_path / "prefill.npy"
    code = omnic_main(["run", str(spec), "--tokens", ",".join(map(str, PROMPT)),
                       "--max-new-tokens", "8",
                       "--ignore-eos", "--json", "--logits-out", str(logits_path)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)

    hf = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    ids = torch.tensor([PROMPT])
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        ref_logits = hf(ids).logits[0].numpy()
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                          do_sample=False, pad_token_id=258)[0, len(PROMPT):].tolist()
    assert out["tokens"] == ref
    assert out["text"] == bytes(t for t in ref if t < 256).decode("utf-8", errors="replace")
    logits = np.load(logits_path)
    assert logits.dtype == np.float32 and logits.shape == (len(PROMPT), 512)
    assert np.abs(logits - ref_logits).max() < 1e-4


def test_run_prompt_adds_bos(checkpoints, tmp_path, capsys):
    spec = tmp_path / "llama.yaml"
    assert omnic_main(["import", str(checkpoints["llama"]), "-o", str(spec)]) == 0
    a = tmp_path / "a.npy"
    b = tmp_path / "b.npy"
    assert omnic_main(["run", str(spec), "--prompt", "Hi", "--max-new-tokens", "2",
                       "--logits-out", str(a)]) == 0
    assert omnic_main(["run", str(spec), "--tokens", "256,72,105", "--max-new-tokens", "2",
                       "--logits-out", str(b)]) == 0
    np.testing.assert_array_equal(np.load(a), np.load(b))


def test_run_bad_inputs_exit_2(tmp_path, capsys, checkpoints):
    spec = tmp_path / "llama.yaml"
    assert omnic_main(["import", str(checkpoints["llama"]), "-o", str(spec)]) == 0
    assert omnic_main(["run", str(spec), "--tokens", "1,x"]) == 2
    assert omnic_main(["run", str(spec), "--tokens", "1,9999"]) == 2
    assert omnic_main(["run", str(spec), "--tokens", "1", "--target", "onnx"]) == 2
    # no manifest
    assert omnic_main(["run", str(tmp_path), "--tokens", "1", "--target", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "outside the vocabulary" in err and "not an omnic build" in err
