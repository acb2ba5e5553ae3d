"""Test-only passes that plant a fault: they prove that the golden check can fail.

Tests append one to the model-level pipeline (`compile(..., extra_passes=["test::..."])`, or
`omnic compile --append-pass test::...`). The golden references are built from the model as the
build stage made it, before any pass, so the targets lower a damaged program while the references
keep the true one: a correct golden check must fail and say what diverged. Never in a default
pipeline.

Passes:
    test::swap_kv_heads
                    reverse the order of the key heads in every layer's k projection (rows of
                    layers.{i}.attn.k.weight and .bias): each query group attends to the keys
                    of another group, the classic wrong-GQA-layout bug. Needs >= 2 kv heads.
    test::permute_weight
                    reverse the output rows of the middle layer's FFN up projection: one
                    matrix of one layer in a wrong layout (its rows no longer pair with gate's).
    test::double_scale
                    double the middle layer's attention output projection: one matrix whose
                    quantization scales are twice what they should be.
    test::permute_component_weights
                    reverse the output rows of the first matrix (or conv filter bank) of every
                    component (encoders, projectors, heads): a wrong weight layout in each
                    component artifact, the decoder untouched. Needs a spec with modalities.
"""

from __future__ import annotations

import copy
import dataclasses

from omnic.passes.base import PassResult, PreconditionError, register_pass
from omnic.passes.program import Program

NAMESPACE = "test::"


def fault_name(pass_ids: list[str]) -> str | None:
    """The fault planted by a pipeline's test passes (without the namespace), or None."""
    names = [p.removeprefix(NAMESPACE) for p in pass_ids if p.startswith(NAMESPACE)]
    return ",".join(names) or None


@register_pass("test::swap_kv_heads")
class SwapKvHeads:
    """A copy of the program whose k projections have their kv heads in reverse order."""

    def requires(self, program: Program) -> None:
        if program.spec.model.kv_heads < 2:
            raise PreconditionError("swap_kv_heads needs a model with at least 2 kv heads")

    def call(self, program: Program) -> PassResult:
        import torch

        model = program.spec.model
        kv, hd = model.kv_heads, model.dim_per_head
        decoder = copy.deepcopy(program.decoder)
        state = decoder.state_dict()
        order = torch.arange(kv * hd).reshape(kv, hd).flip(0).reshape(-1)
        with torch.no_grad():
            for i in range(model.n_layers):
                for suffix in ("weight", "bias"):
                    name = f"layers.{i}.attn.k.{suffix}"
                    if name in state:
                        state[name].copy_(state[name][order].clone())
        return PassResult(program.evolve(decoder=decoder), changed=True)

    def ensures(self, program: Program) -> None:
        pass


@register_pass("test::permute_component_weights")
class PermuteComponentWeights:
    """A copy of the program whose components have their first matrix's rows reversed."""

    def requires(self, program: Program) -> None:
        if not program.components:
            raise PreconditionError("permute_component_weights needs a spec with modalities")

    def call(self, program: Program) -> PassResult:
        import torch

        damaged = {}
        for name, comp in program.components.items():
            module = copy.deepcopy(comp.module)
            weight = next(p for p in module.parameters() if p.dim() >= 2 and p.shape[0] >= 2)
            with torch.no_grad():
                weight.copy_(weight.flip(0).clone())
            damaged[name] = dataclasses.replace(comp, module=module)
        return PassResult(program.evolve(components=damaged), changed=True)

    def ensures(self, program: Program) -> None:
        pass


def _middle_layer_copy(program: Program, name: str, change) -> PassResult:
    """A copy of the program with `change(tensor)` applied in place to layers.{mid}.{name}."""
    import torch

    decoder = copy.deepcopy(program.decoder)
    state = decoder.state_dict()
    key = f"layers.{program.spec.model.n_layers // 2}.{name}"
    if key not in state:
        raise PreconditionError(f"the decoder has no {key}")
    with torch.no_grad():
        change(state[key])
    return PassResult(program.evolve(decoder=decoder), changed=True)


@register_pass("test::permute_weight")
class PermuteWeight:
    """A copy of the program whose middle layer's ffn.up rows are in reverse order."""

    def requires(self, program: Program) -> None:
        pass

    def call(self, program: Program) -> PassResult:
        return _middle_layer_copy(program, "ffn.up.weight",
                                  lambda w: w.copy_(w.flip(0).clone()))

    def ensures(self, program: Program) -> None:
        pass


@register_pass("test::double_scale")
class DoubleScale:
    """A copy of the program whose middle layer's attn.o weights are doubled."""

    def requires(self, program: Program) -> None:
        pass

    def call(self, program: Program) -> PassResult:
        return _middle_layer_copy(program, "attn.o.weight", lambda w: w.mul_(2.0))

    def ensures(self, program: Program) -> None:
        pass
