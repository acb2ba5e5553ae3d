"""Imported Hugging Face checkpoints compile to every target and pass golden conformance.

A tiny Llama (llama3 rope scaling, tied embeddings) and a tiny Qwen2 (qkv bias, yarn) are built
with transformers from random configs, imported with `omnic import`'s library function, and
compiled through the real pipeline to all five targets at fp32. Each artifact must pass its golden
check on its own runtime (Core ML: structurally, numerics not run off macOS). That the imported
model equals transformers is tests/importers' job; this is about the targets taking it.
"""

from __future__ import annotations

import platform

import pytest
import yaml

pytest.importorskip("transformers")

from hf_checkpoints import make_checkpoint  # noqa: E402

ALL_TARGETS = {"onnx": {}, "gguf": {"file_type": "F32"}, "executorch": {"backend": "xnnpack"},
               "coreml": {"deployment_target": "iOS18", "compute_precision": "fp32"},
               "tvm": {"target": "llvm"}}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_imported_checkpoint_passes_on_every_target(family, tmp_path):
    from omnic.compiler.pipeline import compile
    from omnic.importers.hf import import_hf

    hf_dir = make_checkpoint(family, tmp_path / "hf")
    spec_path = tmp_path / f"{family}.yaml"
    data, _ = import_hf(hf_dir, spec_path, context_length=64)
    data.update(device="desktop_cpu", targets=ALL_TARGETS,
                golden={"cases": 1, "prompt_tokens": 8, "decode_steps": 4})
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))

    result = compile(spec_path, tmp_path / "build", progress=False)

    golden = {a.target: a.golden for a in result.manifest.artifacts}
    assert sorted(golden) == sorted(ALL_TARGETS)
    for target, g in golden.items():
        if target == "coreml" and platform.system() != "Darwin":
            assert g.status == "not_run" and "needs macOS" in g.reason, g
        else:
            assert g.status == "passed", f"{family} on {target}: {g.status}: {g.reason}"
    assert result.exit_code == 0
