"""AWQ's per-channel scales, folded into the op that feeds the scaled linears.

y = W x = (W diag(s)) (x / s): the consumers' columns are multiplied by s and the producer's
output is divided by s, an equivalence in exact arithmetic. The producers AWQ uses in a Llama
block, each only where the division is exact:
- the attention norm feeds q, k and v (a norm's weight, and bias, divided by s; with Gemma's unit
  offset the applied weight 1 + w is);
- the FFN norm feeds gate and up (up alone for the plain GELU FFN);
- v feeds o through attention, linear in v, when every query head has its own kv head (with GQA
  a v row feeds several heads, which would need equal scales);
- up feeds down through act(gate) * up (gated FFNs only).
  ref: https://github.com/mit-han-lab/llm-awq/blob/main/awq/quantize/auto_scale.py (scale_ln_fcs,
       scale_fc_fc)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FoldGroup:
    """A producer module and the linears whose input it makes (module names)."""

    producer: str
    consumers: tuple[str, ...]


def fold_groups(decoder: Any) -> list[FoldGroup]:
    """The producer -> consumers pairs of every block, in AutoAWQ's order."""
    c = decoder.config
    out = []
    for i, block in enumerate(decoder.layers):
        p = f"layers.{i}."
        if block.conv is not None:  # LFM2's short convolution: the norm makes in_proj's input
            out.append(FoldGroup(p + "attn_norm", (p + "conv.in_proj",)))
        elif block.ssm is not None:  # Mamba-2: the norm makes in_proj's input, and the gated
            # norm's weight multiplies out_proj's input channel by channel
            out.append(FoldGroup(p + "attn_norm", (p + "ssm.in_proj",)))
            out.append(FoldGroup(p + "ssm.norm", (p + "ssm.out_proj",)))
        elif block.deltanet is not None:  # Gated DeltaNet: the norm makes every projection's
            # input (its gated norm's weight is shared by the heads: not folded into out_proj)
            out.append(FoldGroup(p + "attn_norm", tuple(
                p + f"deltanet.{name}" for name in ("qkv", "z", "b", "a"))))
        else:
            gate = (p + "attn.gate",) if block.attn.gate is not None else ()
            out.append(FoldGroup(p + "attn_norm", (p + "attn.q", p + "attn.k", p + "attn.v")
                                 + gate))
            if c.n_heads == c.n_kv_heads:
                out.append(FoldGroup(p + "attn.v", (p + "attn.o",)))
        ffn = block.ffn
        if not hasattr(ffn, "up"):
            continue  # mixture of experts: the router and the experts share the norm
        gated = getattr(ffn, "gate", None) is not None
        out.append(FoldGroup(p + "ffn_norm", (p + "ffn.gate", p + "ffn.up") if gated
                             else (p + "ffn.up",)))
        if gated:
            out.append(FoldGroup(p + "ffn.up", (p + "ffn.down",)))
    return out


def apply(modules: dict[str, Any], group: FoldGroup, scales: np.ndarray) -> None:
    """Divide the producer's output by `scales` and multiply the consumers' columns by them,
    in place."""
    import torch

    s = torch.from_numpy(np.asarray(scales, dtype=np.float32))
    producer = modules[group.producer]
    with torch.no_grad():
        if isinstance(producer, torch.nn.Linear):
            producer.weight.div_(s[:, None])
            if producer.bias is not None:
                producer.bias.div_(s)
        elif getattr(producer, "unit_offset", False):
            producer.weight.copy_((1.0 + producer.weight) / s - 1.0)
            if getattr(producer, "bias", None) is not None:
                producer.bias.div_(s)
        else:
            producer.weight.div_(s)
            if getattr(producer, "bias", None) is not None:
                producer.bias.div_(s)
        for name in group.consumers:
            modules[name].weight.mul_(s[None, :])
