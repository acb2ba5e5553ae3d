"""A tiny multimodal spec (vision + audio + sensors + action head) compiled ONCE per session.

(A module of its own, not conftest.py: tests/runtime and tests/cli both use the build; it is
cached under pytest's session base directory, so whichever asks first compiles it.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from tiny_specs import TEST_DEVICE

SPEC: dict[str, Any] = {
    "omnic": 1,
    "name": "tiny-multimodal",
    "device": dict(TEST_DEVICE),
    "model": {
        "vocab_size": 300, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "ffn": {"kind": "swiglu", "hidden": 128}, "context_length": 128, "tie_embeddings": True,
    },
    "weights": {"source": "random", "seed": 5},
    "tokenizer": {"kind": "byte"},
    "modalities": {
        # 32 px / 8 px patches: 16 image tokens
        "vision": {"kind": "siglip", "image_size": 32, "patch_size": 8, "d_model": 32,
                   "n_layers": 1, "n_heads": 2},
        # 200 frames (2 s) -> 100 after the stride-2 conv -> 25 tokens after pooling by 4
        "audio": {"n_mels": 80, "n_frames": 200, "d_model": 32, "n_layers": 1, "n_heads": 2,
                  "downsample": 4},
        "sensors": {"dim": 4, "n_tokens": 2},
        "action_head": {"dim": 3, "horizon": 2, "hidden": 16},
    },
    "quantization": {"weights": {"scheme": "fp32"}},
    "targets": {"onnx": {}},
    "golden": {"cases": 1, "prompt_tokens": 8, "decode_steps": 4, "seed": 0},
}


def write_spec(directory: Path, data: dict[str, Any] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tiny-multimodal.yaml"
    path.write_text(yaml.safe_dump(data or SPEC, sort_keys=False), encoding="utf-8")
    return path


def multimodal_build(tmp_path_factory) -> tuple[Path, Path]:
    """(spec file, build directory) of SPEC compiled for ONNX, compiled once per session."""
    from omnic.compiler.pipeline import compile as omnic_compile

    root = tmp_path_factory.getbasetemp() / "omnic-multimodal-build"
    spec, build = root / "tiny-multimodal.yaml", root / "build"
    if not (build / "manifest.json").is_file():
        write_spec(root)
        result = omnic_compile(spec, build, targets=["onnx"], force=True, progress=False)
        assert result.exit_code == 0, result.manifest.status
    return spec, build
