"""Golden conformance over the example specs: the numbers in golden/ (written only by
`omnic golden update`) must not move, and every artifact of a compiled example passes its check.

- Each example spec's golden inputs and reference outputs (fp32, and quantized with the
  reference quantizers) are recomputed and compared with golden/<spec>/: a refactor of the
  builder, the quantizers or the golden inputs that changes any number fails here.
- specs/mobile_2gb.yaml compiled once (the shared `mobile_2gb_build` fixture) must carry those
  same inputs and fp32 outputs, and no artifact may have failed its golden check.

Specs with more than MAX_PARAMS parameters are recomputed only with OMNIC_GOLDEN_ALL=1 (their
random weights alone take minutes to generate on a laptop CPU).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from omnic.golden import summary

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "specs").glob("*.yaml"))
MAX_PARAMS = 50_000_000


def _golden(spec: Path) -> tuple[dict, dict]:
    d = REPO / "golden" / spec.stem
    if not (d / "expected.json").exists():
        pytest.fail(f"golden/{spec.stem}/ is missing: run `omnic golden update {spec}`")
    return (json.loads((d / "inputs.json").read_text()),
            json.loads((d / "expected.json").read_text()))


def test_every_example_spec_has_golden_data():
    assert SPECS, "no example specs"
    missing = [s.stem for s in SPECS if not (REPO / "golden" / s.stem / "expected.json").exists()]
    assert not missing, f"run `omnic golden update` (missing: {missing})"


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_reference_outputs_match_golden(spec):
    from omnic.spec.inventory import parameter_count
    from omnic.compiler.validate import load_resolved

    resolved = load_resolved(spec)
    params = parameter_count(resolved.model)
    if params > MAX_PARAMS and not os.environ.get("OMNIC_GOLDEN_ALL"):
        pytest.skip(f"{params / 1e6:.0f}M parameters; set OMNIC_GOLDEN_ALL=1 to recompute")
    golden_inputs, golden_expected = _golden(spec)
    inputs, expected = summary.compute(spec, resolved)
    problems = [] if inputs == golden_inputs else ["golden inputs differ"]
    if sorted(expected["references"]) != sorted(golden_expected["references"]):
        problems.append(f"references {sorted(expected['references'])} != golden "
                        f"{sorted(golden_expected['references'])}")
    for name, ref in golden_expected["references"].items():
        if name in expected["references"]:
            problems += summary.compare_reference(name, ref, expected["references"][name])
    if problems and expected["spec_sha256"] != golden_expected["spec_sha256"]:
        # The resolved spec is allowed to change (a new field with a default) while the numbers
        # stay put; when the numbers moved too, say so: it may be why.
        problems.append("note: the resolved spec changed since golden/ was written")
    assert not problems, "\n".join(problems) + f"\n(if intended: omnic golden update {spec})"


def test_compiled_example_matches_golden_and_passes(mobile_2gb_build):
    spec = REPO / "specs" / "mobile_2gb.yaml"
    golden_inputs, golden_expected = _golden(spec)
    build = mobile_2gb_build.out_dir
    prompts = np.load(build / "golden" / "inputs.npz")["prompts"]
    assert prompts.tolist() == golden_inputs["prompts"]
    fp32 = np.load(build / "golden" / "fp32.npz")
    actual = summary.summarize_reference(
        summary.ReferenceData("fp32", fp32["tokens"], fp32["logits"], fp32["logits"],
                              fp32["fp32_tokens"]))
    problems = summary.compare_reference("fp32", golden_expected["references"]["fp32"], actual)
    assert not problems, "\n".join(problems)
    m = mobile_2gb_build.manifest
    failed = [f"{a.target} {a.path}: {a.golden.reason}" for a in m.artifacts
              if a.golden.status == "failed"]
    assert not failed, "\n".join(failed)
    assert m.status == "passed" and mobile_2gb_build.exit_code == 0


def test_compiled_example_has_every_target_run_on_its_runtime(mobile_2gb_build):
    """All five targets are built; each passes on its runtime, Core ML says why it did not run."""
    import platform

    by_target = {a.target: a.golden for a in mobile_2gb_build.manifest.artifacts
                 if a.component == "decoder"}
    assert sorted(by_target) == sorted(["onnx", "gguf", "executorch", "coreml", "tvm"])
    for target, golden in by_target.items():
        if target == "coreml" and platform.system() != "Darwin":
            assert golden.status == "not_run" and "needs macOS" in golden.reason
        else:
            assert golden.status == "passed", f"{target}: {golden.status} {golden.reason}"


def test_onnxruntime_genai_generates_the_reference_tokens_from_the_build(mobile_2gb_build):
    """The ONNX folder of the example build, loaded by the onnxruntime-genai package itself,
    greedily generates the quantization-exact PyTorch reference's tokens on every golden case."""
    og = pytest.importorskip("onnxruntime_genai")
    build = mobile_2gb_build.out_dir
    (art,) = [a for a in mobile_2gb_build.manifest.artifacts if a.target == "onnx"]
    reference = np.load(build / art.golden.reference)["tokens"]
    prompts = np.load(build / "golden" / "inputs.npz")["prompts"]
    model = og.Model(str(build / art.path))
    for prompt, expected in zip(prompts, reference):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + len(expected), do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt.astype(np.int32)[None])
        got = []
        while not generator.is_done() and len(got) < len(expected):
            generator.generate_next_token()
            got.append(int(generator.get_next_tokens()[0]))
        assert got == expected.tolist()
