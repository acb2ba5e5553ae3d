"""Golden metrics, tolerance lookup, inputs, and the comparison logic (torch-free parts).

The comparison is driven here by a numpy "runtime" replaying logits, so each failure mode can be
planted exactly; the pipeline tests drive it with a real runtime.
"""

from __future__ import annotations

import numpy as np
import pytest

from omnic.golden import metrics as M
from omnic.golden.check import ReferenceData, compare
from omnic.golden.runs import run_greedy
from omnic.golden.inputs import make_inputs
from omnic.golden.tolerances import TABLE, ToleranceError, family, lookup

RNG = np.random.default_rng(7)


def test_metrics_against_direct_formulas():
    a = RNG.standard_normal((5, 11))
    b = a + 0.01 * RNG.standard_normal((5, 11))
    assert M.nmse(b, a) == pytest.approx(((b - a) ** 2).sum() / (a ** 2).sum())
    cos = [float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)) for x, y in zip(b, a)]
    np.testing.assert_allclose(M.cosine_rows(b, a), cos)
    p = np.exp(a) / np.exp(a).sum(-1, keepdims=True)
    q = np.exp(b) / np.exp(b).sum(-1, keepdims=True)
    np.testing.assert_allclose(M.kld_rows(a, b), (p * np.log(p / q)).sum(-1), rtol=1e-9)
    assert M.kld_rows(a, a + 3.0).max() < 1e-12  # a shift of all logits changes nothing
    assert M.prefix_match(np.array([1, 2, 3]), np.array([1, 2, 4])) == 2
    assert M.prefix_match(np.array([1, 2]), np.array([1, 2])) == 2


def test_kld_matches_torch():
    import torch

    a, b = RNG.standard_normal((4, 30)), RNG.standard_normal((4, 30))
    ref = torch.nn.functional.kl_div(torch.log_softmax(torch.tensor(b), -1),
                                     torch.log_softmax(torch.tensor(a), -1), log_target=True,
                                     reduction="none").sum(-1).numpy()
    np.testing.assert_allclose(M.kld_rows(a, b), ref, rtol=1e-9)


def test_tolerance_lookup_and_overrides():
    assert family("q4_0") == family("int4_g32") == family("8da4w") == "int4"
    assert family("q8_0") == "int8" and family("fp16") == "fp16" and family("mystery") is None
    assert lookup("onnx", "fp32") is TABLE[("*", "fp32")]
    assert lookup("executorch", "fp32") is TABLE[("executorch", "fp32")]
    assert lookup("gguf", "q4_0") is TABLE[("*", "int4")]
    t = lookup("gguf", "q4_0", {"*/*/kld": 0.5, "gguf/int4/kld": 0.3, "gguf/q4_0/nmse": 0.1,
                                "onnx/*/nmse": 9.0})
    assert (t.kld, t.nmse) == (0.3, 0.1) and "overridden" in t.source
    with pytest.raises(ToleranceError, match="no tolerance row"):
        lookup("onnx", "mystery")
    with pytest.raises(ToleranceError, match="unknown metric"):
        lookup("onnx", "fp32", {"onnx/fp32/kl": 1.0})
    for row in TABLE.values():  # every row says where its numbers come from
        assert row.source


def test_inputs_are_deterministic_and_avoid_special_ids():
    kw = dict(cases=3, prompt_tokens=50, decode_steps=4, seed=5, vocab_size=260)
    a = make_inputs(**kw, special_ids=[256, 257, 258])
    b = make_inputs(**kw, special_ids=[258, 257, 256])
    assert a.prompts.dtype == np.int64 and a.prompts.shape == (3, 50)
    np.testing.assert_array_equal(a.prompts, b.prompts)
    assert not np.isin(a.prompts, [256, 257, 258]).any() and a.prompts.max() <= 259
    assert not np.array_equal(a.prompts, make_inputs(**{**kw, "seed": 6}).prompts)
    with pytest.raises(ValueError, match="exceeds model.context_length"):
        make_inputs(**kw, context_length=53)


class ReplayRunner:
    """A numpy 'runtime': logits = a fixed random linear map of a running token hash, so the
    KV-cache semantics (position advances per call) are real; `damage` alters its output."""

    V = 40

    def __init__(self, seed: int = 0, damage=None):
        self.table = np.random.default_rng(seed).standard_normal((997, self.V)).astype(np.float32)
        self.damage = damage
        self.reset()

    def reset(self):
        self.h, self.pos = 0, 0

    def forward(self, tokens):
        out = []
        for t in tokens:
            self.h = (self.h * 31 + int(t) + 1) % 997
            row = self.table[self.h].copy()
            if self.damage:
                row = self.damage(row, self.pos)
            out.append(row)
            self.pos += 1
        return np.stack(out)


def _reference(runner, inputs):
    toks, logits = zip(*(run_greedy(runner, p, inputs.decode_steps, ReplayRunner.V)
                         for p in inputs.prompts))
    return ReferenceData("fp32", np.stack(toks), np.stack(logits), np.stack(logits),
                         np.stack(toks))


INPUTS = make_inputs(cases=3, prompt_tokens=6, decode_steps=5, seed=1, vocab_size=40)
REF = _reference(ReplayRunner(), INPUTS)
FP32 = TABLE[("*", "fp32")]


def test_identical_runtime_passes():
    status, reason, values = compare(ReplayRunner(), INPUTS, REF, FP32)
    assert (status, reason) == ("passed", None)
    assert values["max_abs"] == 0 and values["top1"] == 1 and values["greedy_match"] == 1
    assert values["kld"] == 0 and values["cosine"] == pytest.approx(1.0)


def test_tiny_noise_passes_but_a_wrong_position_fails_with_its_location():
    noisy = ReplayRunner(damage=lambda r, p: r + 1e-6)
    assert compare(noisy, INPUTS, REF, FP32)[0] == "passed"

    def swap_at_7(row, pos):  # position 7 is the second decode step
        return row[::-1].copy() if pos == 7 else row

    status, reason, values = compare(ReplayRunner(damage=swap_at_7), INPUTS, REF, FP32)
    assert status == "failed"
    assert "max_abs" in reason and "prompt position" not in reason.split(";")[0]
    assert "at case 2 position 7 (decode step 2)" in reason and "nmse" in reason
    assert "greedy: case 2 generated token 3 (logits of position 7): runtime chose" in reason
    assert values["greedy_match"] < 1


@pytest.mark.parametrize("gap,tie", [(1e-6, True), (0.5, False)])
def test_greedy_departures_are_failures_unless_a_tie(gap, tie):
    """The reference's top two logits at case 0's first prediction are `gap` apart and the
    runtime prefers the runner-up by as much: a 1e-6 flip is a tie, a 0.5 flip is a failure."""
    from dataclasses import replace

    row_pos = INPUTS.prompt_tokens - 1
    ref = ReferenceData("fp32", REF.tokens.copy(), REF.logits.copy(), REF.fp32_logits.copy(),
                        REF.fp32_tokens.copy())
    row = ref.logits[0, row_pos]
    first, second = np.argsort(row)[::-1][:2]
    original = row.copy()
    row[second] = row[first] - gap  # the reference barely (or clearly) prefers `first`
    ref.fp32_logits[0, row_pos] = row  # this reference is the fp32 one

    def flip(r, pos):
        if pos == row_pos and np.array_equal(r, original):
            r = r.copy()
            r[second] = r[first] + gap
        return r

    tol = replace(FP32, top1=0.9, top1_fp32=0.9)
    status, reason, values = compare(ReplayRunner(damage=flip), INPUTS, ref, tol)
    assert values["greedy_match"] < 1  # the runtime's own greedy departs either way
    if tie:
        assert (status, reason) == ("passed", None)
    else:
        assert status == "failed"
        assert f"greedy: case 0 generated token 1 (logits of position 5): runtime chose " \
               f"token {second}, the reference {first}" in reason


def test_nan_logits_fail():
    def nan_at_3(row, pos):
        return row * np.nan if pos == 3 else row

    status, reason, _ = compare(ReplayRunner(damage=nan_at_3), INPUTS, REF, FP32)
    assert status == "failed" and "non-finite logits (NaN or inf) at case 0 prompt position 3" \
        in reason


def test_golden_summary_catches_drift():
    from omnic.golden import summary

    base = summary.summarize_reference(REF)
    assert summary.compare_reference("fp32", base, summary.summarize_reference(REF)) == []
    drift = ReferenceData("fp32", REF.tokens, REF.logits * (1 + 1e-3), REF.logits, REF.tokens)
    problems = summary.compare_reference("fp32", base, summary.summarize_reference(drift))
    assert any("std" in p for p in problems) and any("slice" in p for p in problems)
    other = REF.tokens.copy()
    other[1, 2] += 1
    moved = ReferenceData("fp32", other, REF.logits, REF.logits, other)
    assert summary.compare_reference("fp32", base, summary.summarize_reference(moved))[0] \
        .startswith("fp32: greedy tokens")


def test_a_runtime_this_host_cannot_run_gets_its_structural_check():
    """Core ML off macOS: not_run says the structure was checked, or failed when it is not."""
    from types import SimpleNamespace

    from omnic.golden.check import GoldenResult, GoldenSession, GoldenStatus

    class Target:
        def __init__(self, failures):
            self.failures, self.calls = failures, []

        def structural_check(self, artifact, build_dir, spec):
            self.calls.append((artifact, build_dir, spec))
            return self.failures

    session = SimpleNamespace(spec="the spec", build_dir="b")
    not_run = GoldenResult(GoldenStatus.NOT_RUN, "needs macOS")
    ok = Target([])
    got = GoldenSession._structure(session, ok, "art", not_run)
    assert (got.status, got.reason) == ("not_run", "needs macOS (structure checked: I/O, KV "
                                        "states, ops, weight compression, precision)")
    assert ok.calls == [("art", "b", "the spec")]
    got = GoldenSession._structure(session, Target(["states: names [], spec expects [k]"]),
                                   "art", not_run)
    assert got.status == "failed" and "states: names []" in got.reason
    # a target without a structural check, or a result that ran, is left as it is
    assert GoldenSession._structure(session, object(), "art", not_run) is not_run
    passed = GoldenResult(GoldenStatus.PASSED)
    assert GoldenSession._structure(session, ok, "art", passed) is passed


def test_a_tensors_weight_limit_is_its_own_schemes_when_coarser():
    """A Core ML artifact labelled int8 (its embedding holds most elements) keeps int4
    matrices: those are held to the int4 row's weight_nmse, the rest to the artifact's."""
    from omnic.golden.tolerances import weight_limit
    from omnic.quant.select import TensorScheme

    int8_row, int4_row = lookup("coreml", "int8"), lookup("coreml", "int4_g32")
    assert int4_row.weight_nmse > int8_row.weight_nmse
    assert weight_limit(int8_row, "coreml", TensorScheme("int4", 32, True)) == int4_row.weight_nmse
    assert weight_limit(int8_row, "coreml", TensorScheme("int8", None, True)) == \
        int8_row.weight_nmse
    assert weight_limit(int8_row, "coreml", None) == int8_row.weight_nmse  # a norm, say
    # never tighter than the artifact's own row
    assert weight_limit(int4_row, "coreml", TensorScheme("int8", None, True)) == \
        int4_row.weight_nmse
