"""Test-only fault injection: prove that the golden check can fail.

The one place the environment variable OMNIC_TEST_FAULT is read. When it names a fault, the
pipeline hands the targets a damaged copy of the program while the golden references keep the
true decoder, so a correct golden check must fail and say what diverged. Never set it outside
tests.

Faults:
    swap_kv_heads   reverse the order of the key heads in every layer's k projection (rows of
                    layers.{i}.attn.k.weight and .bias): each query group attends to the keys
                    of another group, the classic wrong-GQA-layout bug. Needs >= 2 kv heads.
    permute_component_weights
                    reverse the output rows of the first matrix (or conv filter bank) of every
                    component (encoders, projectors, heads): a wrong weight layout in each
                    component artifact, the decoder untouched. Needs a spec with modalities.
"""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omnic.passes.program import Program

ENV = "OMNIC_TEST_FAULT"
FAULTS = ("swap_kv_heads", "permute_component_weights")


def active_fault() -> str | None:
    """The fault named by OMNIC_TEST_FAULT, or None. Unknown names are an error, not ignored."""
    name = os.environ.get(ENV, "").strip()
    if not name:
        return None
    if name not in FAULTS:
        raise ValueError(f"{ENV}={name!r} is not a known fault; one of {FAULTS}")
    return name


def apply_fault(program: "Program", fault: str) -> "Program":
    """A copy of `program` with `fault` planted; the input is not touched."""
    import torch

    if fault == "permute_component_weights":
        return _permute_component_weights(program)
    if fault != "swap_kv_heads":
        raise ValueError(f"unknown fault {fault!r}")
    model = program.spec.model
    kv, hd = model.kv_heads, model.dim_per_head
    if kv < 2:
        raise ValueError("swap_kv_heads needs a model with at least 2 kv heads")
    decoder = copy.deepcopy(program.decoder)
    state = decoder.state_dict()
    order = torch.arange(kv * hd).reshape(kv, hd).flip(0).reshape(-1)
    with torch.no_grad():
        for i in range(model.n_layers):
            for suffix in ("weight", "bias"):
                name = f"layers.{i}.attn.k.{suffix}"
                if name in state:
                    state[name].copy_(state[name][order].clone())
    return program.evolve(decoder=decoder)


def _permute_component_weights(program: "Program") -> "Program":
    import dataclasses

    import torch

    if not program.components:
        raise ValueError("permute_component_weights needs a spec with modalities")
    damaged = {}
    for name, comp in program.components.items():
        module = copy.deepcopy(comp.module)
        weight = next(p for p in module.parameters() if p.dim() >= 2 and p.shape[0] >= 2)
        with torch.no_grad():
            weight.copy_(weight.flip(0).clone())
        damaged[name] = dataclasses.replace(comp, module=module)
    return program.evolve(components=damaged)
