"""Presets: every file is valid, sourced, named after itself, shipped in the wheel, resolvable."""

from __future__ import annotations

import glob
import re
import sys
from pathlib import Path

import pytest

from omnic.presets import resolve, store
from omnic.spec import Spec

ROOT = Path(__file__).resolve().parents[2]
ALL = [(kind, name) for kind in store.KINDS for name in store.names(kind)]


def test_required_presets_exist():
    assert {"mobile_2gb", "mobile_4gb", "iphone_6gb", "android_flagship", "raspberry_pi5",
            "desktop_cpu"} <= set(store.names("device"))
    assert {"smollm_135m", "smollm_360m", "qwen2.5_0.5b", "llama3.2_1b",
            "tinyllama_1.1b"} <= set(store.names("model"))
    assert {"int8", "int4_g32", "int4_g128", "fp16"} <= set(store.names("quantization"))


def test_presets_come_from_the_repository_in_a_checkout():
    assert store.builtin_dir() == ROOT / "presets"


@pytest.mark.parametrize("kind, name", ALL, ids=[f"{k}/{n}" for k, n in ALL])
def test_preset_is_valid_and_cites_a_source(kind, name):
    path = store.path_of(kind, name)
    text = path.read_text(encoding="utf-8")
    assert re.search(r"^# source: https?://\S+", text, re.M), f"{path} has no # source: URL"
    preset = store.load(kind, name)
    if kind == "device":
        assert preset.name == name
        assert preset.ram_mb is None or preset.memory_budget_mb < preset.ram_mb
        assert set(preset.preferred_targets) <= {"onnx", "gguf", "executorch", "coreml", "tvm"}


def test_app_budgets_follow_the_phone_kill_limits():
    # an app on a 2 GB phone is killed near 1.4 GB, on a 4 GB one near 2 GB
    assert store.load("device", "mobile_2gb").memory_budget_mb == 1400
    assert store.load("device", "mobile_4gb").memory_budget_mb == 2000
    iphone = store.load("device", "iphone_6gb")
    assert (iphone.os, iphone.os_version) == ("ios", "18")


def test_int4_presets_keep_int8_embeddings():
    for name in ("int4_g32", "int4_g128"):
        q = store.load("quantization", name)
        assert q.weights.scheme == "int4"
        assert [(o.match.role, o.scheme) for o in q.overrides] == [("embedding", "int8")]
    assert store.load("quantization", "int4_g128").weights.group_size == 128


def test_unknown_preset_suggests_close_names():
    with pytest.raises(store.UnknownPreset) as err:
        store.path_of("device", "iphone_6")
    assert err.value.suggestions[0] == "iphone_6gb"


def test_user_preset_path_is_searched_first(tmp_path, monkeypatch):
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "my_board.yaml").write_text(
        "name: my_board\nmemory_budget_mb: 256\nbandwidth_gbps: 2.0\nos: linux\n")
    monkeypatch.setenv(store.ENV_PATH, str(tmp_path))
    assert "my_board" in store.names("device")
    assert store.load("device", "my_board").memory_budget_mb == 256


def test_wheel_data_files_cover_every_preset():
    tomllib = (pytest.importorskip("tomllib") if sys.version_info >= (3, 11)
               else pytest.skip("3.11+"))
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = set()
    for target, patterns in config["tool"]["setuptools"]["data-files"].items():
        assert target.startswith("share/omnic/presets/")
        for pattern in patterns:
            shipped.update(Path(p).relative_to("presets").as_posix()
                           for p in glob.glob(pattern, root_dir=ROOT))
    on_disk = {p.relative_to(ROOT / "presets").as_posix()
               for p in (ROOT / "presets").rglob("*.yaml")}
    assert on_disk == shipped


def test_resolve_inlines_presets_and_fills_derived_values():
    spec = Spec.model_validate({"omnic": 1, "name": "r", "device": "iphone_6gb",
                                "model": "smollm_135m", "quantization": "int4_g32",
                                "targets": {"coreml": {}}})
    r = resolve(spec, ROOT)
    assert r.device.name == "iphone_6gb" and r.device.memory_budget_mb == 3000
    assert (r.model.n_kv_heads, r.model.head_dim, r.model.d_model) == (3, 64, 576)
    assert r.quantization.weights.group_size == 32
    dumped = r.model_dump()
    assert dumped["model"]["n_kv_heads"] == 3 and dumped["extends"] == ()


def test_resolve_fills_mha_defaults_of_an_inline_model():
    spec = Spec.model_validate({"omnic": 1, "name": "r", "device": "desktop_cpu", "targets": {},
                                "model": {"vocab_size": 300, "d_model": 96, "n_layers": 1,
                                          "n_heads": 6, "ffn": {"kind": "gelu", "hidden": 64},
                                          "context_length": 8}})
    r = resolve(spec, ROOT)
    assert (r.model.n_kv_heads, r.model.head_dim) == (6, 16)
    assert r.quantization.weights.scheme == "fp32"


# Published parameter counts of the presets whose layers differ (the llama-family ones are checked
# in tests/plan/test_plan.py): the exact totals of each checkpoint's safetensors.
PUBLISHED = {
    "gemma3_270m": 268_098_176,      # https://huggingface.co/google/gemma-3-270m
    "gemma3_1b": 999_885_952,        # https://huggingface.co/google/gemma-3-1b-it
    "smollm3_3b": 3_075_098_624,     # https://huggingface.co/HuggingFaceTB/SmolLM3-3B
    "phi4_mini": 3_836_021_760,      # https://huggingface.co/microsoft/Phi-4-mini-instruct
    "olmo2_1b": 1_484_916_736,       # https://huggingface.co/allenai/OLMo-2-0425-1B
    "granite3.3_2b": 2_533_539_840,  # https://huggingface.co/ibm-granite/granite-3.3-2b-instruct
    "lfm2_350m": 354_483_968,        # https://huggingface.co/LiquidAI/LFM2-350M
    "lfm2_1.2b": 1_170_340_608,      # https://huggingface.co/LiquidAI/LFM2-1.2B
    # GraniteMoeHybridForCausalLM's count on the published configs (the cards round: 340M, 1.5B)
    "granite4.0_h_350m": 340_332_224,  # https://huggingface.co/ibm-granite/granite-4.0-h-350m
    "granite4.0_h_1b": 1_461_538_368,  # https://huggingface.co/ibm-granite/granite-4.0-h-1b
    # Qwen3_5ForCausalLM's count of the text decoders (tied), which with the MTP head and the
    # vision tower equals each checkpoint's safetensors total (873,438,784 / 2,274,069,824 /
    # 4,659,865,088 as the files' headers sum them)
    "qwen3.5_0.8b": 752_393_024,  # https://huggingface.co/Qwen/Qwen3.5-0.8B
    "qwen3.5_2b": 1_881_825_088,  # https://huggingface.co/Qwen/Qwen3.5-2B
    "qwen3.5_4b": 4_205_751_296,  # https://huggingface.co/Qwen/Qwen3.5-4B
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_the_published_figure(name):
    from omnic.spec.inventory import parameter_count

    assert parameter_count(store.load("model", name)) == PUBLISHED[name]


def test_per_layer_presets_resolve_to_their_tables():
    from omnic.spec.layers import table

    kinds = lambda name: [  # noqa: E731
        "nope" if r.rope is None else r.attention for r in table(store.load("model", name))]
    assert kinds("gemma3_1b") == (["sliding"] * 5 + ["full"]) * 4 + ["sliding"] * 2
    gemma = table(store.load("model", "gemma3_270m"))
    assert {(r.window, r.rope.theta) for r in gemma} == {(512, 1e4), (None, 1e6)}
    assert kinds("smollm3_3b") == ["full", "full", "full", "nope"] * 9
    for name, attention in (("granite4.0_h_350m", [10, 13, 17, 27]),
                            ("granite4.0_h_1b", [5, 15, 25, 35])):  # NoPE attention, else mamba2
        rows = table(store.load("model", name))
        assert [i for i, r in enumerate(rows) if r.attention != "mamba2"] == attention
        assert all(r.attention in ("mamba2", "full") and r.rope is None for r in rows)
    rows = table(store.load("model", "qwen3.5_0.8b"))  # every 4th layer attends, with RoPE
    assert [i for i, r in enumerate(rows) if r.attention == "full"] == [3, 7, 11, 15, 19, 23]
    assert {r.rope.dims for r in rows if r.rope} == {64}
    phi = table(store.load("model", "phi4_mini"))[0].rope
    assert phi.dims == 96 and len(phi.scaling.long_factor) == 48


@pytest.mark.parametrize("name", store.names("model"))
def test_resolving_a_model_twice_changes_nothing(name):
    """The per-layer table `omnic resolve` writes re-validates against the fields it follows."""
    from omnic.presets.resolve import explicit_model

    once = explicit_model(store.load("model", name))
    assert once.layers is not None and len(once.layers) == once.n_layers
    again = explicit_model(type(once).model_validate(once.model_dump()))
    assert again == once
