"""Checks shared by the GGUF tests of the hybrid architectures whose layers carry states
(granitehybrid, qwen35): the file's tensors against the converter's, llama.cpp's F32 run
against transformers, and the import of the file back (a test helper)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def assert_tensors_are_converted(reader, expected: dict, arch) -> None:
    """Every tensor `reader` (a gguf.GGUFReader of an F32 file) holds is named as gguf-py lists
    for `arch` (a gguf.MODEL_ARCH), F32, and equal to `expected` (name -> the checkpoint's
    tensor under the converter's transforms), which names the same tensors."""
    import gguf

    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch]}
    stored = {t.name: t for t in reader.tensors}
    assert stored.keys() == expected.keys()
    for name, t in stored.items():
        assert re.sub(r"^blk\.\d+\.", "blk.{bid}.", re.sub(r"\.(weight|bias)$", "", name)) \
            in allowed, name
        assert t.tensor_type.name == "F32"
        # A = -exp(A_log) rounded once; another float32 exp may differ by one ulp
        np.testing.assert_array_max_ulp(np.asarray(t.data), expected[name],
                                        maxulp=1 if name.endswith("ssm_a") else 0)


def assert_f32_runs_like_transformers(path: Path, ckpt: Path, spec: Path, recurrent: list[bool],
                                      prompt: list[int], steps: int, name: str) -> None:
    """llama.cpp's own greedy decoding of the F32 file at `path` equals transformers' (of the
    checkpoint `ckpt`) over `steps` tokens after `prompt`, and its logits match along the whole
    sequence, in one call and token by token (the states carried from call to call); one KV
    cache, for the one attention layer (`recurrent`: which layers carry states instead), as
    the memory plan of the spec at `spec` predicts."""
    from hf_checkpoints import transformers_greedy
    from test_gguf_families import _llama_cpp_greedy

    from omnic.compiler.validate import load_resolved
    from omnic.targets.gguf.runtime import LlamaCppRunner
    from omnic.targets.kv_layout import kv_positions

    ref_tokens, ref = transformers_greedy(ckpt, prompt, steps)
    runner = LlamaCppRunner(str(path), n_ctx=64)
    try:
        assert runner.load_warnings == []
        assert runner.kv_caches == [(256, 1)]
        assert kv_positions(load_resolved(spec), "gguf") == [0 if r else 256 for r in recurrent]
        assert _llama_cpp_greedy(runner, prompt, steps) == ref_tokens
        sequence = np.asarray(prompt + ref_tokens[:-1], np.int64)
        runner.reset()
        whole = runner.forward(sequence)
        runner.reset()
        stepped = np.concatenate([runner.forward(sequence[i:i + 1])
                                  for i in range(len(sequence))])
        scale = np.abs(ref).max()
        err = max(np.abs(whole - ref).max(), np.abs(stepped - ref).max())
        # fp32 both sides; transformers' chunked forms against llama.cpp's own kernels
        assert scale > 1.0 and err < 1e-4 * scale, f"max logit error {err:.3g} of {scale:.3g}"
        print(f"{name} F32 vs transformers: max logit error {err:.2e} (logits up to "
              f"{scale:.2f}), {steps} greedy tokens equal")
    finally:
        runner.close()


def import_back(path: Path, spec: Path, tmp_path: Path) -> tuple[dict, dict]:
    """`omnic import` of the GGUF file at `path`: its spec model must be the one of the spec at
    `spec` (the Hugging Face import) and name the same tensors; (the original weights, the
    imported ones)."""
    import yaml

    from omnic.cli.main import main
    from omnic.compiler.validate import load_resolved
    from omnic.model import load_weights
    from omnic.spec import Model

    back = tmp_path / "back.yaml"
    assert main(["import", str(path), "-o", str(back), "--targets", "gguf"]) == 0

    def model(p: Path) -> dict:
        return Model.model_validate(yaml.safe_load(p.read_text())["model"]).model_dump()

    assert model(back) == model(spec)
    original = load_weights(load_resolved(spec), spec.parent)
    imported = load_weights(load_resolved(back), tmp_path)
    assert original.keys() == imported.keys()
    return original, imported
