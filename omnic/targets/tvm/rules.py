"""The TVM target's rules on the shared table of `omnic.targets.rules` (torch-free). Its other
limits need TVM itself and live in `target._problems`; importing this module registers them."""

from __future__ import annotations

from omnic.constants import Targets
from omnic.targets.mixers import register_layer_kinds, state_kinds
from omnic.targets.rules import Context, Finding, register

register_layer_kinds(Targets.TVM)  # the layer kinds mixers.CARRIED lists


@register(Targets.TVM, "tvm.devices_attention_only",
          "the GPU builds take the generic graph, which has no short_conv, mamba2 or "
          "gated_deltanet kernel yet",
          "omnic/targets/tvm/devices.py")
def _devices(ctx: Context):
    kinds = state_kinds(ctx.spec.model)
    cfg = ctx.spec.targets.tvm
    if kinds and cfg is not None and cfg.devices:
        yield Finding(("targets", "tvm", "devices"),
                      f"the GPU builds ({', '.join(cfg.devices)}) cannot carry "
                      f"{', '.join(kinds)} layers yet; the host build can: remove the devices")
