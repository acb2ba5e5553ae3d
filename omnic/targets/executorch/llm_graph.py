"""The decode graph ExecuTorch's own LLM export makes: its custom SDPA reads a KV cache that its
custom op updates in place.

export_llm (and optimum-executorch on top of it) swaps a model's attention for
`llama::update_cache` + `llama::custom_sdpa`:
- the cache is a mutable buffer laid out [B, S, H_kv, D] (heads after the positions), written
  in place at `start_pos` by `update_cache`: no index_put copy of the cache, no write-back;
- `custom_sdpa` attends causally over positions [0, start_pos + T) only, not over the whole
  static cache, and reads grouped KV heads directly (no expanded copy of K and V per query
  head), which is most of the time of a generic decode step at a long context.
  ref: https://github.com/pytorch/executorch/blob/main/examples/models/llama/source_transformation/sdpa.py
  ref: https://github.com/pytorch/executorch/blob/main/extension/llm/custom_ops/custom_ops.py

The ops' kernels come with the ExecuTorch runtime (the pip wheel's bindings and the C++ LLM
runner link them). The causal mask is the only mask they take here, so a model whose attention
is more than causal softmax keeps omnic's generic graph (`why_generic` says why).

Around the two ops the block is written so that XNNPACK's partitioner takes all of it, one
partition per layer and no portable kernels in between (each rule from
backends/xnnpack/partition/config/generic_node_configs.py):
- reshapes name the token axis -1: a symbolic size in a view is refused, one inferred one is
  not (ViewCopyConfig);
- RMSNorm averages a 4D view over its two innermost axes, the only mean.dim XNNPACK has
  (MeanDimConfig, global average pooling), and squares by a multiplication;
- RoPE's rotate-half is a matmul with a constant signed permutation, not two slices and a
  concatenation (slices of a dynamic-size tensor are refused, SliceCopyConfig); a partial
  rotary passes its other dims through with cos 1 and sin 0. Each output of the product reads
  one input times +-1, so it is exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from omnic.model.modules.decoder import Decoder


def why_generic(decoder: "Decoder") -> str | None:
    """Why the decoder keeps the generic graph (a reason for the manifest), or None when the
    custom ops carry it."""
    c = decoder.config
    if any(b.conv is not None for b in decoder.layers):
        return "short_conv layers keep a state that the generic graph copies back whole"
    if any(b.ssm is not None for b in decoder.layers):
        return "mamba2 layers keep two states that the generic graph copies back whole"
    if any(b.deltanet is not None for b in decoder.layers):
        return "gated_deltanet layers keep two states that the generic graph copies back whole"
    rings = [i for i, n in enumerate(decoder.cache_lengths())
             if n < c.context_length and decoder.layers[i].attn is not None]
    if rings:
        return (f"sliding-window layers {rings[:4]}{'...' if len(rings) > 4 else ''} keep "
                "window-sized ring caches, which custom_sdpa's causal mask cannot read")
    if c.attn_softcap is not None:
        return "attention soft-capping sits inside the softmax, where custom_sdpa has no hook"
    return None


def _rms_norm_4d(self, x: "torch.Tensor") -> "torch.Tensor":
    """RMSNorm.forward with its mean as XNNPACK takes it (see the module docstring)."""
    import torch

    dtype = x.dtype
    h = x.float()
    kept = [n if isinstance(n, int) else -1 for n in h.shape[:-1]] + [1]  # one -1: the tokens
    squares = (h * h).reshape(1, -1, h.shape[-1], 1)  # 4D whatever the rank (per-head q/k norms)
    h = h * torch.rsqrt(squares.mean((-2, -1), keepdim=True).reshape(kept) + self.eps)
    if self.unit_offset:
        return (h * (1.0 + self.weight.float())).to(dtype)
    return self.weight * h.to(dtype)


def _xnnpack_norms(decoder: "Decoder") -> None:
    """Every RMSNorm of the (copied) decoder computes its mean as XNNPACK takes it."""
    from omnic.model.modules.norm import RMSNorm

    class RMSNorm4D(RMSNorm):
        forward = _rms_norm_4d

    for module in decoder.modules():
        if type(module) is RMSNorm:
            module.__class__ = RMSNorm4D


def _rotation(head_dim: int, dims: int) -> "torch.Tensor":
    """R [head_dim, head_dim] with linear(x, R) = rotate_half(x[..., :dims]) followed by zeros
    (a linear, not a matmul: XNNPACK takes a 4D linear whole; matmul's decomposition reshapes
    by the symbolic token count)."""
    import torch

    half = dims // 2
    r = torch.zeros(head_dim, head_dim)
    r[torch.arange(half), torch.arange(half, dims)] = -1.0  # out[j] = -x[j + half], j < half
    r[torch.arange(half, dims), torch.arange(half)] = 1.0  # out[j] = x[j - half], j >= half
    return r


def _full_width(table: "torch.Tensor", head_dim: int, fill: float) -> "torch.Tensor":
    """A [T, d] cos or sin table widened to [T, 1, head_dim] (`fill` on the unrotated dims)."""
    import torch

    d = table.shape[-1]
    if d < head_dim:
        pad = torch.full((head_dim - d,), fill, dtype=table.dtype)
        table = torch.cat((table, pad.expand(*table.shape[:-1], head_dim - d)), dim=-1)
    return table[:, None, :]


def custom_ops_module(decoder: "Decoder", dtype: "torch.dtype") -> "torch.nn.Module":
    """The decoder as export_llm's graph: forward(tokens [1, T], input_pos [1]) -> logits, with
    `k_cache_{i}` / `v_cache_{i}` [1, context, n_kv, head_dim] mutable buffers. The decoder is
    changed in place (its norms): pass a copy."""
    import torch
    import torch.nn.functional as F

    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401 - registers llama::

    c = decoder.config
    _xnnpack_norms(decoder)

    class CustomOpsDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = decoder
            shape = (1, c.context_length, c.n_kv_heads, c.head_dim)
            for i in range(c.n_layers):
                self.register_buffer(f"k_cache_{i}", torch.zeros(shape, dtype=dtype),
                                     persistent=False)
                self.register_buffer(f"v_cache_{i}", torch.zeros(shape, dtype=dtype),
                                     persistent=False)
            for n in sorted({r.cos.shape[-1] for r in decoder._ropes.values()}):
                self.register_buffer(f"rotation_{n}", _rotation(c.head_dim, n), persistent=False)

        def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
            d = self.decoder
            start = input_pos[0].item()
            torch._check(start >= 0)
            torch._check(start < c.context_length)
            positions = input_pos[:1] + torch.arange(tokens.shape[1], dtype=torch.int64)
            tables = {None: None}
            for key, (cos, sin) in d._tables(positions, False).items():
                if key is not None:
                    tables[key] = (_full_width(cos, c.head_dim, 1.0),
                                   _full_width(sin, c.head_dim, 0.0),
                                   getattr(self, f"rotation_{cos.shape[-1]}"))
            x = d._embed(tokens)
            for i, block in enumerate(d.layers):
                k_cache, v_cache = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
                a = block.attn
                h_in = x if block.attn_norm is None else block.attn_norm(x)
                q, k, v = a.project(h_in, None, None, heads_last=True)
                rope = tables[d._rope_keys[i]]
                if rope is not None:
                    cos, sin, rot = rope
                    q = q * cos.to(q.dtype) + F.linear(q, rot.to(q.dtype)) * sin.to(q.dtype)
                    k = k * cos.to(k.dtype) + F.linear(k, rot.to(k.dtype)) * sin.to(k.dtype)
                torch.ops.llama.update_cache(k.to(dtype), k_cache, start)
                torch.ops.llama.update_cache(v.to(dtype), v_cache, start)
                h = torch.ops.llama.custom_sdpa(q.to(dtype), k_cache, v_cache, start, None, 0.0,
                                                True, a.scale)
                h = a.output(h.to(x.dtype).reshape(1, -1, a.n_heads * a.head_dim), h_in)
                x = block._finish(x, h)
            return d._head(x)

    return CustomOpsDecoder().eval()
