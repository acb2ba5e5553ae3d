"""Multimodal prompts: placeholder expansion, splicing, the embeds entries of the decoder, and
ONNX (embedding.onnx + text.onnx + the encoders' artifacts) against the PyTorch reference.

Tolerance: 1e-4 max abs on logits, the fp32 row of the ONNX decoder's golden check (the same
float32 math, reordered by onnxruntime's fused kernels); components 1e-5 (a few ops).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omnic.constants import Components
from omnic.runtime import multimodal as mm
from omnic.tokenizer import ByteTokenizer

torch = pytest.importorskip("torch")

ATOL = 1e-4
V, A, S = Components.VISION_ENCODER, Components.AUDIO_ENCODER, Components.SENSOR_PROJECTOR
BOS, IMG, AUD, SEN = 256, 259, 260, 261  # the byte tokenizer's ids (independently of the code)


# -- prompt assembly (no model) -------------------------------------------------------------------
def test_byte_placeholder_ids():
    tok = ByteTokenizer(300)
    assert mm.placeholder_ids(tok, [V, A, S]) == {V: IMG, A: AUD, S: SEN}
    assert tok.tokens()[IMG] == "<unused_0>"  # tokenizer.json keeps its names (text builds)
    with pytest.raises(mm.PromptError, match="no token '<sensor>'.*--sensor-token"):
        mm.placeholder_ids(ByteTokenizer(261), [S])  # <unused_2> would be id 261


def test_assemble_places_and_expands():
    tok = ByteTokenizer(300)
    ids = {V: IMG, A: AUD}
    got = mm.assemble_prompt("Hi<image>ok<audio>!", tok, {V: 3, A: 2}, ids)
    assert got == [BOS, ord("H"), ord("i"), IMG, IMG, IMG, ord("o"), ord("k"), AUD, AUD, ord("!")]


def test_assemble_unplaced_inputs_go_first_in_modality_order():
    tok = ByteTokenizer(300)
    ids = {V: IMG, A: AUD, S: SEN}
    got = mm.assemble_prompt("go<audio>", tok, {S: 1, V: 2, A: 1}, ids)
    assert got == [BOS, IMG, IMG, SEN, ord("g"), ord("o"), AUD]
    assert mm.assemble_prompt("", tok, {V: 2}, {V: IMG}) == [BOS, IMG, IMG]
    assert mm.assemble_prompt("<image>", tok, {V: 1}, {V: IMG},
                              add_special_tokens=False) == [IMG]


@pytest.mark.parametrize("text,counts,needle", [
    ("<audio>x", {V: 1}, "has <audio> but no --audio"),
    ("<image>x<image>", {V: 1}, "<image> 2 times"),
])
def test_assemble_errors(text, counts, needle):
    with pytest.raises(mm.PromptError, match=needle):
        mm.assemble_prompt(text, ByteTokenizer(300), counts, {V: IMG, A: AUD})


def test_hf_tokenizer_with_a_configured_placeholder(tmp_path):
    from omnic.tokenizer import HFTokenizer

    ByteTokenizer(300).save(tmp_path)
    hf = HFTokenizer(tmp_path)
    with pytest.raises(mm.PromptError, match="no token '<image>'"):
        mm.placeholder_ids(hf, [V])
    ids = mm.placeholder_ids(hf, [V], {V: "<unused_7>"})
    assert ids == {V: 259 + 7}
    got = mm.assemble_prompt("a<unused_7>b", hf, {V: 2}, ids, {V: "<unused_7>"})
    assert got == [BOS, ord("a"), 266, 266, ord("b")]


def test_splice_and_checks():
    emb = np.arange(12, dtype=np.float32).reshape(6, 2)
    tokens = [BOS, IMG, 5, IMG, AUD, 7]
    rows = {IMG: np.array([[-1, -2], [-3, -4]], np.float32), AUD: np.array([[9, 9]], np.float32)}
    out = mm.splice(emb, tokens, rows)
    expect = emb.copy()
    expect[1], expect[3], expect[4] = [-1, -2], [-3, -4], [9, 9]
    np.testing.assert_array_equal(out, expect)
    assert emb[1, 0] == 2  # input untouched
    with pytest.raises(mm.PromptError, match="2 placeholder tokens .* 3 encoder"):
        mm.splice(emb, tokens, {IMG: np.zeros((3, 2), np.float32)})
    mm.check_placeholders(tokens, {V: 2}, {V: IMG})
    with pytest.raises(mm.PromptError, match="holds 1 audio_encoder"):
        mm.check_placeholders(tokens, {A: 2}, {A: AUD})


# -- the decoder's embeds entries (torch only) ----------------------------------------------------
@pytest.mark.parametrize("model", [
    {},
    {"scale_embeddings": True, "final_softcap": 30.0, "tie_embeddings": False,
     "sliding_window": {"size": 4, "layers": "even"}},
])
def test_embeds_entries_equal_token_entries(make_spec, model):
    from omnic.model import build_model

    d = build_model(make_spec(model), Path("."))
    ids = torch.tensor([[256, 3, 77, 120, 9, 41, 200]])
    pos = torch.arange(7)
    k, v = d.empty_cache(1)
    ref, rk, _ = d(ids, pos, k, v)
    x = d.embed_tokens(ids)
    if model.get("scale_embeddings"):  # Gemma's sqrt(d) scaling is part of the embedding
        torch.testing.assert_close(x, d.embed.weight[ids] * 8.0, rtol=0, atol=0)
    got, gk, _, hidden = d.forward_embeds(x, pos, k, v, return_hidden=True)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(gk[0], rk[0], rtol=0, atol=0)
    # the hidden state is what the head reads: logits recomputed from it by hand
    head = d.embed.weight if d.lm_head is None else d.lm_head.weight
    by_hand = hidden @ head.T
    if model.get("final_softcap"):
        by_hand = torch.tanh(by_hand / 30.0) * 30.0
    torch.testing.assert_close(by_hand, ref, rtol=0, atol=1e-5)
    mask = torch.ones(1, 7, dtype=torch.int64)
    past = [torch.zeros(1, 2, 0, 16)] * 2
    concat = d.forward_concat(ids, mask, pos[None], past, past)[0]
    out = d.concat_embeds_entry(True)(x, mask, pos[None], past, past)
    assert len(out) == 4
    torch.testing.assert_close(out[0], concat, rtol=0, atol=0)
    torch.testing.assert_close(out[3], hidden, rtol=0, atol=1e-6)


# -- ONNX against the reference, on the compiled tiny multimodal build ----------------------------
@pytest.fixture(scope="module")
def build(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from multimodal_build import multimodal_build

    spec_path, build_dir = multimodal_build(tmp_path_factory)
    from omnic.compiler.multimodal_run import build_parts, reference_parts
    from omnic.compiler.validate import load_resolved

    spec = load_resolved(spec_path)
    needed = [V, A, S, Components.ACTION_HEAD]
    ref = reference_parts(spec, spec_path.parent, needed)
    onnx = build_parts(build_dir, "onnx", needed)
    return {"spec": spec, "dir": build_dir, "ref": ref, "onnx": onnx}


def _inputs(spec, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    v, a = spec.modalities.vision, spec.modalities.audio
    return {V: rng.uniform(-1, 1, (1, 3, v.image_size, v.image_size)).astype(np.float32),
            A: rng.uniform(-1.5, 1, (1, a.n_mels, a.n_frames)).astype(np.float32),
            S: rng.standard_normal((1, spec.modalities.sensors.dim)).astype(np.float32)}


def _steps(parts, prompt, inputs, ids, tokens):
    """Logits of the prefill and of each decode step that fed `tokens`."""
    rows = {ids[c]: np.asarray(parts.components[c](inputs[c]))[0] for c in inputs}
    r = mm.SplicingRunner(parts.decoder, rows)
    out = [r.forward(np.asarray(prompt))]
    out += [r.forward(np.asarray([t])) for t in tokens[:-1]]
    return out, r.prompt_hidden


@pytest.mark.slow
@pytest.mark.parametrize("given", [(V,), (A,), (V, A, S)], ids=["image", "audio", "all"])
def test_onnx_equals_reference(build, given):
    from omnic.spec.component_inventory import placeholder_tokens

    spec = build["spec"]
    tok = ByteTokenizer(spec.model.vocab_size)
    inputs = {c: x for c, x in _inputs(spec, 0).items() if c in given}
    counts = {c: n for c, n in placeholder_tokens(spec).items() if c in given}
    ids = mm.placeholder_ids(tok, list(counts))
    prompt = mm.assemble_prompt("Look: <image> and hear <audio>. Say", tok, counts, ids) \
        if given == (V, A, S) else mm.assemble_prompt("Describe it.", tok, counts, ids)
    head = Components.ACTION_HEAD
    results = {}
    for side in ("ref", "onnx"):
        parts = build[side]
        results[side] = mm.generate(parts.decoder, prompt, parts.components, inputs, ids, 8,
                                    action_head=parts.components[head])
    ref, got = results["ref"], results["onnx"]
    assert got.tokens == ref.tokens
    assert np.abs(got.prompt_logits - ref.prompt_logits).max() < ATOL
    for c in given:  # each encoder's rows, ONNX vs torch
        np.testing.assert_allclose(got.embeddings[c], ref.embeddings[c], atol=1e-5, rtol=0)
    # every decode step, not only the prefill
    ref_steps, ref_hidden = _steps(build["ref"], prompt, inputs, ids, ref.tokens)
    got_steps, got_hidden = _steps(build["onnx"], prompt, inputs, ids, ref.tokens)
    for a, b in zip(ref_steps, got_steps):
        assert np.abs(a - b).max() < ATOL
    np.testing.assert_allclose(got_hidden, ref_hidden, atol=ATOL, rtol=0)
    np.testing.assert_allclose(got.actions, ref.actions, atol=1e-5, rtol=0)
    assert got.actions.shape == (2, 3)
    # the action head reads that hidden state: recomputed with the torch module by hand
    module = build["ref"].components[head]
    np.testing.assert_allclose(ref.actions, module(ref_hidden[None])[0], atol=1e-6)


@pytest.mark.slow
def test_the_inputs_reach_the_decoder(build):
    """Another image changes every logit from the image on, none before it; and the text
    decoder (model.onnx, token ids) agrees with embedding.onnx + text.onnx before the image."""
    from omnic.compiler.artifact_runner import open_build_runner

    spec = build["spec"]
    tok = ByteTokenizer(spec.model.vocab_size)
    n = spec.modalities.vision.n_tokens
    prompt = mm.assemble_prompt("ab<image>cd", tok, {V: n}, {V: IMG})
    first = prompt.index(IMG)
    a = mm.generate(build["onnx"].decoder, prompt, build["onnx"].components,
                    {V: _inputs(spec, 1)[V]}, {V: IMG}, 1)
    b = mm.generate(build["onnx"].decoder, prompt, build["onnx"].components,
                    {V: _inputs(spec, 2)[V]}, {V: IMG}, 1)
    diff = np.abs(a.prompt_logits - b.prompt_logits).max(axis=1)
    assert diff[:first].max() == 0
    assert diff[first:].min() > 1e-4
    text = open_build_runner(build["dir"], "onnx")
    text.reset()
    plain = text.forward(np.asarray(prompt[:first]))
    assert np.abs(plain - a.prompt_logits[:first]).max() < ATOL


def test_missing_embeds_decoder_is_reported(build, tmp_path):
    import json
    import shutil

    from omnic.compiler.artifact_runner import BuildError
    from omnic.compiler.multimodal_run import build_parts

    copy = tmp_path / "b"
    shutil.copytree(build["dir"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["artifacts"] = [e for e in manifest["artifacts"] if e["component"] != V]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BuildError, match="no onnx/vision_encoder artifact"):
        build_parts(copy, "onnx", [V])
    for e in manifest["artifacts"]:
        e["details"].pop("multimodal", None)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BuildError, match="compiled without modalities"):
        build_parts(copy, "onnx", [])


def test_targets_without_an_embeds_graph_cannot_take_embeddings(tmp_path):
    from omnic.targets.base import (
        Artifact, NotRunnable, get_target, load_embeds, takes_embeddings,
    )

    assert takes_embeddings(get_target("onnx"))  # embedding.onnx + text.onnx
    for t in ("gguf", "executorch", "coreml", "tvm"):
        assert not takes_embeddings(get_target(t))
        with pytest.raises(NotRunnable, match=f"{t}: cannot take embeddings"):
            load_embeds(get_target(t), Artifact("decoder", t, f"{t}/x"), tmp_path)
