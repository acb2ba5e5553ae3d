"""Which layer kinds each target's graph carries (torch-free).

Every target runs attention layers with a KV cache. Layers that carry a fixed-size state
instead (`omnic.spec.layers.STATE_KINDS`: LFM2's short_conv, Granite 4's mamba2) need each
target's own operators and state handling; a target refuses the kinds it does not carry in its
pre-flight, naming the kind, before any work.
"""

from __future__ import annotations

from omnic.spec.layers import STATE_KINDS
from omnic.targets.rules import Context, Finding, register

# target -> the state kinds it carries (a target not listed carries none)
CARRIED = {
    "gguf": {"short_conv", "mamba2", "gated_deltanet"},
    "onnx": {"short_conv", "mamba2", "gated_deltanet"},
    "tvm": {"short_conv", "mamba2", "gated_deltanet"},
    "executorch": {"short_conv", "mamba2", "gated_deltanet"},
    "coreml": {"short_conv", "mamba2", "gated_deltanet"},
}


def state_kinds(spec_model) -> list[str]:
    """The state kinds among a model's layers, sorted."""
    return sorted({row.attention for row in spec_model.table} & set(STATE_KINDS))


def register_layer_kinds(target: str) -> None:
    """Register `target`'s rule that refuses the state kinds it does not carry (CARRIED)."""

    @register(target, f"{target}.layer_kinds",
              "the target's graph has attention layers with a KV cache, no recurrent state",
              "omnic/targets/mixers.py")
    def _kinds(ctx: Context):
        missing = [k for k in state_kinds(ctx.spec.model) if k not in CARRIED.get(target, ())]
        if missing:
            can = sorted(t for t, kinds in CARRIED.items() if set(missing) <= kinds)
            yield Finding(("model", "layer_pattern"),
                          f"{target} cannot carry {', '.join(missing)} layers yet; "
                          f"{', '.join(can) or 'no target'} can: disable targets.{target}")
