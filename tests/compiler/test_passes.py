"""The pass interface, registry and runner, and the two built-in passes, on a real tiny program."""

from __future__ import annotations

import pytest
import torch

from omnic.passes import (
    DEFAULT,
    PassError,
    PassResult,
    PostconditionError,
    get_pass,
    register_pass,
    registered_passes,
    run_passes,
)
from omnic.passes.program import Program


@pytest.fixture(scope="module")
def program(tiny_spec_file):
    from omnic.model import build_model
    from omnic.compiler.validate import load_resolved

    path = tiny_spec_file("passes", {"quantization": {
        "weights": {"scheme": "int4", "group_size": 32},
        "overrides": [{"match": {"role": "embedding"}, "scheme": "int8"}]}})
    spec = load_resolved(path)
    return Program(spec=spec, spec_dir=path.parent, decoder=build_model(spec, path.parent))


@register_pass("test::boom")
class _Boom:
    def requires(self, program):
        pass

    def call(self, program):
        raise ValueError("kaboom")

    def ensures(self, program):
        pass


def test_registry_and_default_pipeline_order():
    assert {"common::verify_inventory", "quant::plan"} <= set(registered_passes())
    assert DEFAULT == ["common::verify_inventory", "quant::plan"]
    with pytest.raises(ValueError, match="namespaced"):
        register_pass("plan")
    with pytest.raises(KeyError, match="unknown pass"):
        get_pass("quant::nope")


def test_default_pipeline_plans_quantization_without_touching_the_input(program):
    from omnic.quant.select import tensor_schemes

    weights = {k: v.clone() for k, v in program.decoder.state_dict().items()}
    out, records = run_passes(program, DEFAULT)
    assert [(r.id, r.changed) for r in records] == [("common::verify_inventory", False),
                                                    ("quant::plan", True)]
    plan = out.schemes()
    assert plan == tensor_schemes(program.spec)
    assert plan["embed.weight"].scheme == "int8" and plan["layers.1.ffn.up.weight"].scheme == "int4"
    assert plan["layers.0.attn_norm.weight"].scheme == "fp32"
    assert program.quant_plan is None  # the input program is unchanged
    for k, v in program.decoder.state_dict().items():
        assert torch.equal(v, weights[k])
    with pytest.raises(PassError, match=r"quant::plan failed after \[\]: precondition"):
        run_passes(out, ["quant::plan"])  # planning twice is refused


def test_pass_error_names_the_passes_before(program):
    with pytest.raises(PassError) as err:
        run_passes(program, ["common::verify_inventory", "test::boom"])
    assert str(err.value) == (
        "test::boom failed after [common::verify_inventory]: ValueError: kaboom")


def test_verify_inventory_names_the_mismatch(program):
    import copy

    broken = copy.deepcopy(program.decoder)
    broken.extra = torch.nn.Parameter(torch.zeros(3))
    del broken.layers[1].ffn.gate
    with pytest.raises(PassError) as err:
        run_passes(program.evolve(decoder=broken), ["common::verify_inventory"])
    msg = str(err.value)
    assert "missing layers.1.ffn.gate.weight [128, 64]" in msg and "unexpected extra [3]" in msg


def test_quant_plan_postcondition_checks_group_sizes(program, monkeypatch):
    from omnic.quant.select import TensorScheme
    from omnic.spec.inventory import decoder_tensors

    def bad_schemes(spec):
        return {t.name: (TensorScheme("int4", 48, True) if t.is_matrix else
                         TensorScheme("fp32", None, True)) for t in decoder_tensors(spec.model)}

    monkeypatch.setattr("omnic.quant.select.tensor_schemes", bad_schemes)
    with pytest.raises(PassError, match=r"postcondition: embed.weight: group_size 48 does not "
                                        r"divide its input width 64"):
        run_passes(program, ["quant::plan"])


def test_a_pass_returns_a_result(program):
    result = get_pass("common::verify_inventory").call(program)
    assert isinstance(result, PassResult) and result.program is program and not result.changed
    with pytest.raises(PostconditionError):
        get_pass("quant::plan").ensures(program.evolve(quant_plan={}))
