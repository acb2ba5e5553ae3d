"""The int8 activation rounding of a runtime's quantized matmuls, applied to the exact reference.

`artifact.activation_quant` names, per weight, the `ActivationQuant` the runtime's kernel
applies to that matmul's input (omnic.quant.activations has the table of kernels). The exact
reference model gets a forward pre-hook on each of those Linear modules that rounds its input
the same way, so it computes what the artifact computes: stored weights times int8-rounded
activations. A tied embedding that is also the lm_head has no Linear of its own: its rounding is
applied to the final norm's output, the lm_head's only input.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping

from omnic.constants import TensorNames
from omnic.quant.activations import ActivationQuant

if TYPE_CHECKING:
    import torch


def fake_quantize(x: "torch.Tensor", aq: ActivationQuant) -> "torch.Tensor":
    """`x` rounded to int8 along its last axis as `aq` says, and back to x's float dtype."""
    import torch

    if aq.order:  # round in the runtime's column order, then put the columns back
        order = torch.tensor(aq.order, device=x.device)
        out = torch.empty_like(x)
        out[..., order] = fake_quantize(x[..., order], replace(aq, order=()))
        return out
    k = x.shape[-1]
    xf = x.float()
    if not aq.symmetric:  # XNNPACK qd8: one scale and zero point per row, range includes 0
        lo = xf.amin(-1, keepdim=True).clamp(max=0.0)
        hi = xf.amax(-1, keepdim=True).clamp(min=0.0)
        scale = torch.where(hi > lo, 255.0 / (hi - lo), torch.ones_like(hi))
        from_min, from_max = -128.0 - lo * scale, 127.0 - hi * scale
        zp = torch.where((-128.0 + lo * scale) + (127.0 + hi * scale) > 0, from_min, from_max)
        zp = torch.round(zp.clamp(-128.0, 127.0))
        q = (torch.round(xf * scale) + zp).clamp(-128.0, 127.0)
        return ((q - zp) / scale).to(x.dtype)
    block = aq.block or k
    pad = (-k) % block  # a last partial block: zeros change no block's max
    blocks = torch.nn.functional.pad(xf, (0, pad)).reshape(*x.shape[:-1], -1, block)
    amax = blocks.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    d = amax / 127.0
    if aq.scale_dtype == "float16":
        d = d.half().float()
    out = (torch.round(blocks * inv) * d).reshape(*x.shape[:-1], k + pad)[..., :k]
    return out.to(x.dtype)


def digest_key(activation_quant: Mapping[str, ActivationQuant] | None) -> str:
    """A stable text of the mapping, for naming the reference it makes."""
    if not activation_quant:
        return ""
    return ";".join(f"{n}={aq}" for n, aq in sorted(activation_quant.items()))


def apply(model: Any, activation_quant: Mapping[str, ActivationQuant], strict: bool = True
          ) -> None:
    """Hook `model` (a copy the caller owns) so each named matmul rounds its input.

    Raises:
        ValueError: (when `strict`) a name that is not a Linear weight of the model nor its
            tied lm_head; without `strict` such names are skipped.
    """
    import torch

    for name, aq in activation_quant.items():
        if name == TensorNames.EMBED:
            if getattr(model, "lm_head", "absent") is not None:
                continue  # an untied embedding is only looked up, and lookups are exact
            model.norm.register_forward_hook(
                lambda _m, _args, out, aq=aq: fake_quantize(out, aq))
            continue
        path, _, leaf = name.rpartition(".")
        try:
            module = model.get_submodule(path)
        except AttributeError:
            module = None
        if leaf != "weight" or not isinstance(module, torch.nn.Linear):
            if not strict:
                continue
            raise ValueError(f"activation_quant names {name!r}, which is not the weight of a "
                             "Linear of the model")
        module.register_forward_pre_hook(
            lambda _m, args, aq=aq: (fake_quantize(args[0], aq), *args[1:]))
