"""The vision encoder as llama.cpp's mmproj, run by libmtmd and compared with the torch component.

References: the torch `vision_encoder` module omnic builds (an independent implementation of the
tower and projector, checked against transformers in tests/build), on the component golden
inputs; and, for llama.cpp's own image path, omnic's normalisation (x / 255 - mean) / std of the
same 8-bit image. Tolerance: the ("gguf", "mmproj_f32"/"mmproj_f16") rows of
omnic/golden/tolerances.py COMPONENT_TABLE (ggml's fp16-table GELU sets the floor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from omnic.model import build_model  # noqa: E402
from omnic.model.components import build_components  # noqa: E402
from omnic.golden.components import golden_inputs, judge, reference  # noqa: E402
from omnic.golden.tolerances import lookup_component  # noqa: E402
from omnic.passes.program import Program  # noqa: E402
from omnic.quant.select import tensor_schemes  # noqa: E402
from omnic.spec import ResolvedSpec  # noqa: E402
from omnic.targets.gguf import mmproj as gguf_mmproj  # noqa: E402
from omnic.targets.gguf import mmproj_runtime  # noqa: E402
from omnic.targets.base import get_target  # noqa: E402

DEVICE = {"name": "test-host", "memory_budget_mb": 4096, "bandwidth_gbps": 10.0, "os": "linux"}
TINY = {"vocab_size": 320, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 64}
VISION = {"kind": "siglip", "image_size": 32, "patch_size": 4, "d_model": 48, "n_layers": 2,
          "n_heads": 4, "projector": "mlp"}
CASES = {  # name: (vision changes, decoder file type)
    "mlp-f32": ({}, "F32"),
    "shuffle-f32": ({"projector": "pixel_shuffle_mlp", "pixel_shuffle_factor": 2}, "F32"),
    "shuffle-quick-f16": ({"projector": "pixel_shuffle_mlp", "activation": "quick_gelu"}, "F16"),
}


def make_spec(vision: dict[str, Any] | None = None, file_type: str = "F32",
              **modalities: Any) -> ResolvedSpec:
    mods = {"vision": {**VISION, **(vision or {})}, **modalities}
    return ResolvedSpec.model_validate({
        "omnic": 1, "name": "tiny-vlm", "device": DEVICE, "model": TINY, "modalities": mods,
        "quantization": {"weights": {"scheme": "fp32"}},
        "targets": {"gguf": {"file_type": file_type}}})


class Build:
    def __init__(self, root: Path, name: str) -> None:
        vision, ft = CASES[name]
        self.spec = make_spec(vision, ft)
        self.components = build_components(self.spec, Path("."))
        program = Program(self.spec, Path("."), build_model(self.spec, Path(".")),
                          components=self.components, quant_plan=tensor_schemes(self.spec))
        self.dir = root / name
        target = get_target("gguf")
        (self.decoder,) = target.lower(program, self.dir / "gguf")
        self.mmproj = target.lower_component(program, "vision_encoder", self.dir / "gguf")
        self.component = self.components["vision_encoder"]


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory):
    root, cache = tmp_path_factory.mktemp("mmproj"), {}

    def get(name: str) -> Build:
        if name not in cache:
            cache[name] = Build(root, name)
        return cache[name]

    return get


def nmse(got: np.ndarray, want: np.ndarray) -> float:
    return float(((got.astype(np.float64) - want) ** 2).sum()
                 / (want.astype(np.float64) ** 2).sum())


@pytest.mark.parametrize("name", sorted(CASES))
def test_mtmd_embeddings_match_the_torch_component(builds, name: str) -> None:
    b = builds(name)
    assert b.mmproj.component == "vision_encoder" and b.mmproj.path.startswith("gguf/mmproj-")
    tol = lookup_component("gguf", b.mmproj.precision)
    runner = get_target("gguf").load(b.mmproj, b.dir)
    try:
        for x in golden_inputs(b.component, seed=0):
            with torch.no_grad():
                want = b.component.module(torch.from_numpy(x)).numpy()
            got = runner.run(x)
            assert got.shape == want.shape == (1, b.spec.modalities.vision.n_tokens, 64)
            assert nmse(got, want) <= tol.nmse
            assert np.abs(got - want).max() <= tol.atol + tol.rtol * np.abs(want).max()
    finally:
        runner.close()


def test_component_golden_check_passes_through_the_target(builds) -> None:
    b = builds("shuffle-f32")
    result = judge(get_target("gguf"), b.mmproj, b.dir, reference(b.component, seed=3))
    assert result.status == "passed", result.reason
    assert result.metrics["nmse"] < 1e-6


def test_llama_cpp_own_image_path_equals_omnic_normalisation(builds) -> None:
    b = builds("shuffle-f32")
    v = b.spec.modalities.vision
    rgb = np.random.default_rng(11).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pixels = ((rgb / 255.0 - np.array(v.mean)) / np.array(v.std)).transpose(2, 0, 1)[None]
    runner = get_target("gguf").load(b.mmproj, b.dir)
    try:
        got, seen = runner.run_image(rgb)
    finally:
        runner.close()
    np.testing.assert_allclose(seen, pixels, atol=1e-6)  # no resize, same mean/std
    with torch.no_grad():
        want = b.component.module(torch.from_numpy(pixels.astype(np.float32))).numpy()
    assert nmse(got, want) <= lookup_component("gguf", "mmproj_f32").nmse


def test_file_holds_clip_keys_and_the_component_s_tensors(builds) -> None:
    b = builds("shuffle-f32")
    reader = gguf.GGUFReader(b.dir / b.mmproj.path)
    meta = {k: reader.get_field(k).contents() for k in (
        "general.architecture", "clip.projector_type", "clip.vision.image_size",
        "clip.vision.patch_size", "clip.vision.block_count", "clip.vision.projection_dim",
        "clip.vision.projector.scale_factor", "clip.use_gelu", "clip.vision.image_mean")}
    assert meta == {"general.architecture": "clip", "clip.projector_type": "lfm2",
                    "clip.vision.image_size": 32, "clip.vision.patch_size": 4,
                    "clip.vision.block_count": 2, "clip.vision.projection_dim": 64,
                    "clip.vision.projector.scale_factor": 2, "clip.use_gelu": True,
                    "clip.vision.image_mean": [0.5, 0.5, 0.5]}
    tensors = {t.name: t for t in reader.tensors}
    # patch embd w+b, positions, 16 per block, post norm w+b, mm.1 and mm.2 w+b
    assert len(tensors) == 3 + 16 * 2 + 2 + 4
    state = b.component.module.state_dict()
    q = tensors["v.blk.1.attn_q.weight"]
    np.testing.assert_array_equal(np.asarray(q.data).reshape(48, 48),
                                  state["tower.layers.1.attn.q.weight"].numpy())
    fc1 = tensors["mm.1.weight"]
    np.testing.assert_array_equal(np.asarray(fc1.data).reshape(64, 48 * 4),
                                  state["projector.fc1.weight"].numpy())
    assert b.mmproj.details["text_model"] == Path(b.decoder.path).name


def test_a_misplaced_tensor_fails_the_comparison(builds, tmp_path, monkeypatch) -> None:
    """Swapping layer 0's v and o projections in the file breaks the embeddings far past the
    tolerance. (q and k would not do: omnic's seeded tower weights are small, its attention
    nearly uniform, and a transposed score matrix changes the output by NMSE ~3e-7.)"""
    b = builds("mlp-f32")
    names = gguf_mmproj.tensor_names

    def swapped(v, plan):  # noqa: ANN001, ANN202
        out = names(v, plan)
        v, o = "tower.layers.0.attn.v.weight", "tower.layers.0.attn.o.weight"
        out[v], out[o] = out[o], out[v]
        return out

    monkeypatch.setattr(gguf_mmproj, "tensor_names", swapped)
    path = tmp_path / "gguf" / "broken.gguf"
    path.parent.mkdir()
    gguf_mmproj.write_mmproj(path, b.spec, b.component, "F32", Path("."))
    runner = mmproj_runtime.MmprojRunner(str(path), str(b.dir / b.decoder.path), 32, 64, 64, "mlp")
    try:
        x = golden_inputs(b.component, seed=0)[0]
        with torch.no_grad():
            want = b.component.module(torch.from_numpy(x)).numpy()
        assert nmse(runner.run(x), want) > 100 * lookup_component("gguf", "mmproj_f32").nmse
    finally:
        runner.close()


@pytest.mark.parametrize("vision, modalities, field, nearest", [
    ({"kind": "vit"}, {}, "modalities.vision.activation", "gelu_tanh"),
    ({"kind": "clip"}, {}, "modalities.vision.kind", "siglip"),
    ({"pooling": "mean"}, {}, "modalities.vision.pooling", "none"),
    ({"projector": "linear"}, {}, "modalities.vision.projector", "mlp"),
    ({"ffn_hidden": 48}, {}, "modalities.vision.ffn_hidden", "192"),
    ({}, {"audio": {"n_mels": 16, "n_frames": 40, "d_model": 32, "n_layers": 1, "n_heads": 2}},
     "modalities.audio", "targets.gguf"),
    ({}, {"sensors": {"dim": 6}}, "modalities.sensors", "targets.gguf"),
    ({}, {"action_head": {"dim": 6}}, "modalities.action_head", "targets.gguf"),
])
def test_preflight_names_the_field_and_the_nearest_choice(vision, modalities, field, nearest):
    problems = get_target("gguf").check(make_spec(vision, **modalities))
    assert [p.field for p in problems] == [field]
    assert "nearest" in problems[0].message and nearest in problems[0].message


@pytest.mark.parametrize("vision", [
    {}, {"kind": "vit", "activation": "gelu_tanh"}, {"activation": "quick_gelu"},
    {"projector": "pixel_shuffle_mlp", "pixel_shuffle_factor": 4},
    {"projector": "pixel_shuffle_mlp", "ffn_hidden": 48},  # lfm2 has no up/down swap
])
def test_what_llama_cpp_can_carry_passes_preflight(vision) -> None:
    assert get_target("gguf").check(make_spec(vision)) == []
