"""The TVM target's decode graph: packed weights decoded inside the matmuls, and a KV cache
updated in place by an attention kernel that reads only the visible positions.

What the generic export (lowering.export_decoder) does on every call, and what this graph does
instead:
- a packed weight is dequantized into a whole float matrix in front of its matmul (the int4
  model then runs at half its float speed); here `omnic_tvm::packed_linear` and
  `omnic_tvm::packed_embedding` reach the Relax side as calls of the kernels in
  kernels/packed_matmul.py, which decode inside the reduction (MLC-LLM's fused decode-GEMV);
- the KV cache goes in and comes back out as a new tensor (an index_put copies it whole) and
  attention multiplies the whole static cache under a mask; here `omnic_tvm::attention` becomes
  one `call_tir_inplace` per layer (kernels/attention.py) that writes the new keys and values
  into the cache the VM already holds and attends over positions [0, pos] only (a sliding
  layer: its window, from its ring). `main` returns the logits alone; the caches are state.
  The layers with a state instead of a cache do the same with their own ops: LFM2's
  `omnic_tvm::short_conv`, Granite 4's `omnic_tvm::mamba2_scan` (the convolution and the
  selective scan, as a recurrence) and Qwen3.5's `omnic_tvm::gated_deltanet` (the convolution
  and the gated delta rule, as a recurrence), each writing its states in place (kernels/).

The custom ops exist for torch.export: their fake kernels give shapes and llm_relax.py converts
each into its TIR kernel; their torch bodies are slow eager references of the same semantics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omnic.targets.tvm import quant
from omnic.targets.tvm.quant import PackedTensor, dequantize

if TYPE_CHECKING:
    from omnic.model.modules.decoder import Decoder

NAMESPACE = "omnic_tvm"

# The zero-point argument of a symmetric kernel: a placeholder the kernel never reads.
_NO_ZERO = {"int4": (1,), "int8": (1, 1), "fp16": (1,)}


def kind_of(p: PackedTensor) -> str:
    """The kernel family of a packed tensor: int4, int4_asym, int8, int8_asym or fp16."""
    return p.scheme if p.symmetric or p.scheme == "fp16" else f"{p.scheme}_asym"


def _decoded(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, kind: str, group: int,
             width: int) -> torch.Tensor:
    """The float32 matrix of the stored arrays (quant.dequantize, the numpy reference)."""
    scheme, asym = kind.removesuffix("_asym"), kind.endswith("_asym")
    arrays = {"q": q.numpy()}
    if scheme != "fp16":
        arrays["scale"] = scale.numpy()
        if asym:
            arrays["zero"] = zero.numpy()
    p = PackedTensor("eager", scheme, (q.shape[0], width), group, not asym, arrays)
    return torch.from_numpy(dequantize(p))


@torch.library.custom_op(f"{NAMESPACE}::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                  kind: str, group: int, width: int) -> torch.Tensor:
    """x [..., width] @ w.T for the packed w (rows = q.shape[0])."""
    return torch.nn.functional.linear(x, _decoded(q, scale, zero, kind, group, width))


@packed_linear.register_fake
def _(x, q, scale, zero, kind, group, width):  # type: ignore[no-untyped-def]
    return x.new_empty((*x.shape[:-1], q.shape[0]))


@torch.library.custom_op(f"{NAMESPACE}::packed_embedding", mutates_args=())
def packed_embedding(ids: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                     zero: torch.Tensor, kind: str, group: int, width: int) -> torch.Tensor:
    """Rows `ids` of the packed table, decoded: [..., width] float32."""
    return _decoded(q, scale, zero, kind, group, width)[ids]


@packed_embedding.register_fake
def _(ids, q, scale, zero, kind, group, width):  # type: ignore[no-untyped-def]
    return torch.empty((*ids.shape, width), dtype=torch.float32, device=ids.device)


@torch.library.custom_op(f"{NAMESPACE}::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
              v_cache: torch.Tensor, pos: torch.Tensor, ring: bool, window: int, scale: float,
              softcap: float) -> torch.Tensor:
    """Attention of q [1, H, T, D] over the cache after writing k, v [1, KV, T, D] at `pos`
    (a ring layer: over the ring's earlier keys and the new ones); [1, T, H * D].

    window <= 0: none; softcap <= 0: none. This body is the slow reference: it writes copies,
    and the Relax kernel writes the VM's cache in place (the op is pure to torch.export).
    """
    h, kv, t, d = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    c = k_cache.shape[2]
    if ring:
        last = pos[0] - 1
        slot = torch.arange(c)
        held = last - torch.remainder(last - slot, c)
        keys = torch.cat((k_cache, k), dim=2)[0]
        values = torch.cat((v_cache, v), dim=2)[0]
        key_pos = torch.cat((torch.where(held >= 0, held, torch.full_like(held, -2**40)), pos))
    else:
        k_all, v_all = k_cache.clone(), v_cache.clone()
        k_all[:, :, pos], v_all[:, :, pos] = k, v
        keys, values, key_pos = k_all[0], v_all[0], torch.arange(c)
    diff = pos[:, None] - key_pos[None, :]
    visible = (diff >= 0) & ((diff < window) if window > 0 else True)
    keys = keys.repeat_interleave(h // kv, dim=0)
    values = values.repeat_interleave(h // kv, dim=0)
    scores = torch.einsum("htd,hsd->hts", q[0].float(), keys.float()) * scale
    if softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~visible, float("-inf"))
    out = torch.einsum("hts,hsd->thd", torch.softmax(scores, dim=-1), values.float())
    return out.reshape(1, t, h * d)


@attention.register_fake
def _(q, k, v, k_cache, v_cache, pos, ring, window, scale, softcap):  # type: ignore[no-untyped-def]
    return q.new_empty((1, q.shape[2], q.shape[1] * q.shape[3]))


@torch.library.custom_op(f"{NAMESPACE}::short_conv", mutates_args=())
def short_conv(bx: torch.Tensor, state: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The causal depthwise convolution of [state | bx] (bx [1, T, d], state [1, d, K - 1],
    weight [d, 1, K]): [1, T, d]. The Relax kernel (kernels/short_conv.py) also writes the next
    state in place; this body is the pure reference."""
    seq = torch.cat((state, bx.transpose(1, 2)), dim=2)
    return F.conv1d(seq, weight, groups=weight.shape[0]).transpose(1, 2).contiguous()


@short_conv.register_fake
def _(bx, state, weight):  # type: ignore[no-untyped-def]
    return bx.new_empty(bx.shape)


@torch.library.custom_op(f"{NAMESPACE}::mamba2_scan", mutates_args=())
def mamba2_scan(xbc: torch.Tensor, dt: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                A_log: torch.Tensor, D: torch.Tensor, dt_bias: torch.Tensor,
                conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
    """A Mamba-2 layer between in_proj and the gated norm (omnic.model.modules.mamba2): xbc
    [1, T, channels] and dt [1, T, heads] as in_proj made them, the convolution's weight
    [channels, 1, kernel] and bias, A_log / D / dt_bias [heads], the states [1, channels,
    kernel - 1] and [1, heads, head_dim, d_state] -> y [1, T, heads * head_dim].

    The selective scan runs as its recurrence, token by token. The Relax kernels
    (kernels/mamba2.py) also write both next states in place; this body is the pure reference.
    """
    _, heads, head_dim, d_state = ssm_state.shape
    t, inner = xbc.shape[1], heads * head_dim
    groups = (xbc.shape[2] - inner) // (2 * d_state)
    seq = torch.cat((conv_state, xbc.transpose(1, 2)), dim=2)
    xc = F.silu(F.conv1d(seq, weight, bias, groups=weight.shape[0])).transpose(1, 2)
    xs, b, c = xc.split([inner, groups * d_state, groups * d_state], dim=-1)
    xs = xs.reshape(1, t, heads, head_dim)
    b, c = (m.reshape(1, t, groups, d_state).repeat_interleave(heads // groups, dim=2)
            for m in (b, c))  # [1, T, heads, N]: group g serves heads / groups heads in turn
    dt = F.softplus(dt + dt_bias)  # [1, T, heads]
    decay = torch.exp(dt * -torch.exp(A_log))
    s, ys = ssm_state, []
    for i in range(t):
        s = (decay[:, i, :, None, None] * s
             + (dt[:, i, :, None] * xs[:, i])[..., None] * b[:, i, :, None, :])
        ys.append(torch.einsum("bhpn,bhn->bhp", s, c[:, i]) + D[:, None] * xs[:, i])
    return torch.stack(ys, dim=1).reshape(1, t, inner)


@mamba2_scan.register_fake
def _(xbc, dt, weight, bias, A_log, D, dt_bias, conv_state, ssm_state):  # type: ignore[no-untyped-def]
    return xbc.new_empty((1, xbc.shape[1], ssm_state.shape[1] * ssm_state.shape[2]))


@torch.library.custom_op(f"{NAMESPACE}::gated_deltanet", mutates_args=())
def gated_deltanet(qkv: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor,
                   A_log: torch.Tensor, dt_bias: torch.Tensor, conv_state: torch.Tensor,
                   state: torch.Tensor) -> torch.Tensor:
    """A Gated DeltaNet layer between its projections and the gated norm
    (omnic.model.modules.deltanet): qkv [1, T, channels], a and b [1, T, value_heads] as the
    projections made them, the convolution's weight [channels, 1, kernel] (no bias), A_log and
    dt_bias [value_heads], the states [1, channels, kernel - 1] and [1, value_heads, key_dim,
    value_dim] -> o [1, T, value_heads * value_dim].

    The gated delta rule runs as its recurrence, token by token. The Relax kernels
    (kernels/deltanet.py) also write both next states in place; this body is the pure reference.
    """
    _, heads, key_dim, value_dim = state.shape
    t, value_width = qkv.shape[1], heads * value_dim
    key_width = (qkv.shape[2] - value_width) // 2
    seq = torch.cat((conv_state, qkv.transpose(1, 2)), dim=2)
    xc = F.silu(F.conv1d(seq, weight, groups=weight.shape[0])).transpose(1, 2)
    q, k, v = xc.split([key_width, key_width, value_width], dim=-1)
    q, k = (m.reshape(1, t, key_width // key_dim, key_dim) for m in (q, k))
    q, k = (m * torch.rsqrt((m * m).sum(-1, keepdim=True) + 1e-6) for m in (q, k))
    rep = heads // q.shape[2]  # key head g serves value heads g * rep .. g * rep + rep - 1
    q, k = q.repeat_interleave(rep, dim=2) * key_dim ** -0.5, k.repeat_interleave(rep, dim=2)
    v = v.reshape(1, t, heads, value_dim)
    beta, decay = torch.sigmoid(b), torch.exp(-torch.exp(A_log) * F.softplus(a + dt_bias))
    s, outs = state, []
    for i in range(t):
        s = s * decay[:, i, :, None, None]
        delta = (v[:, i] - torch.einsum("bhkv,bhk->bhv", s, k[:, i])) * beta[:, i, :, None]
        s = s + k[:, i, :, :, None] * delta[:, :, None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", s, q[:, i]))
    return torch.stack(outs, dim=1).reshape(1, t, value_width)


@gated_deltanet.register_fake
def _(qkv, a, b, weight, A_log, dt_bias, conv_state, state):  # type: ignore[no-untyped-def]
    return qkv.new_empty((1, qkv.shape[1], state.shape[1] * state.shape[3]))


class PackedWeight(nn.Module):
    """A packed matrix's stored arrays as parameters (q, scale, zero), as the params file
    holds them; a symmetric one's zero is a placeholder buffer (never stored)."""

    def __init__(self, p: PackedTensor) -> None:
        super().__init__()
        self.kind, self.group, self.width = kind_of(p), p.group, p.shape[1]
        frozen = lambda a: nn.Parameter(torch.from_numpy(np.ascontiguousarray(a)),  # noqa: E731
                                        requires_grad=False)
        self.q = frozen(p.arrays["q"])
        empty = torch.zeros(_NO_ZERO[p.scheme], dtype=torch.uint8)
        if "scale" in p.arrays:
            self.scale = frozen(p.arrays["scale"])
        else:
            self.register_buffer("scale", torch.zeros(1, dtype=torch.float16), persistent=False)
        if "zero" in p.arrays:
            self.zero = frozen(p.arrays["zero"])
        else:
            self.register_buffer("zero", empty, persistent=False)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x @ w.T, w decoded by the packed-matmul kernel."""
        return packed_linear(x, self.q, self.scale, self.zero, self.kind, self.group, self.width)


class PackedLinear(PackedWeight):
    """nn.Linear whose weight is packed (its bias, if any, stays float32)."""

    def __init__(self, p: PackedTensor, bias: torch.Tensor | None) -> None:
        super().__init__(p)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(),
                                                          requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y if self.bias is None else y + self.bias


class PackedEmbedding(PackedWeight):
    """nn.Embedding whose table is packed; `linear` serves a tied head."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return packed_embedding(ids, self.q, self.scale, self.zero, self.kind, self.group,
                                self.width)


def pack_modules(decoder: "Decoder", packed: Mapping[str, PackedTensor]) -> list[str]:
    """Swap each nn.Linear / the embedding whose weight is packed for its Packed module, in
    place (pass a copy). Returns the packed names left to the caller (not a linear's weight or
    the embedding table: they keep the generic dequantizing parametrization)."""
    rest = []
    for name, p in packed.items():
        owner_name, _, attr = name.rpartition(".")
        owner = decoder.get_submodule(owner_name)
        parent_name, _, child = owner_name.rpartition(".")
        parent = decoder.get_submodule(parent_name) if parent_name else decoder
        if attr == "weight" and type(owner) is nn.Linear and p.scheme in _NO_ZERO:
            setattr(parent, child, PackedLinear(p, owner.bias))
        elif attr == "weight" and type(owner) is nn.Embedding and p.scheme in _NO_ZERO:
            setattr(parent, child, PackedEmbedding(p))
        else:
            rest.append(name)
    return rest


def stored_name(param_target: str, packed: Mapping[str, PackedTensor]) -> str:
    """The params-file name of a parameter of the fast decoder: `layers.0.attn.q.q` ->
    `layers.0.attn.q.weight.q` (a Packed module's arrays); anything else as quant.stored_name."""
    owner, _, attr = param_target.rpartition(".")
    if attr in ("q", "scale", "zero") and f"{owner}.weight" in packed:
        return f"{owner}.weight.{attr}"
    return quant.stored_name(param_target, packed)


def fast_module(decoder: "Decoder") -> nn.Module:
    """forward(tokens [1, T], input_pos [T], k_0.., v_0..) -> logits [1, T, V]; the caches are
    written in place by the attention op, a short_conv layer's state (its k) by the
    short_conv op, a mamba2 layer's convolution state (its k) and recurrent state (its v) by
    the mamba2_scan op, a gated_deltanet layer's by the gated_deltanet op (see the module
    docstring)."""
    c = decoder.config
    # a sliding layer whose cache is shorter than the context keeps a ring (Decoder._is_ring)
    layers = [(n < c.context_length, b.window or 0)
              for b, n in zip(decoder.layers, decoder.cache_lengths())]

    class FastDecoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = decoder

        def forward(self, tokens, input_pos, *caches):  # type: ignore[no-untyped-def]
            d = self.decoder
            x = d._embed(tokens)
            tables = d._tables(input_pos, False)
            for i, block in enumerate(d.layers):
                a = block.attn
                cos, sin = tables[d._rope_keys[i]]
                h_in = x if block.attn_norm is None else block.attn_norm(x)
                if block.ssm is not None:  # Mamba2.forward: the states are caches[i], [L + i]
                    m = block.ssm
                    z, xbc, dt = m.in_proj(h_in).split([m.inner, m.channels, m.heads], dim=-1)
                    bias = m.conv.bias if m.conv.bias is not None else m.A_log.new_zeros(
                        m.channels)
                    y = mamba2_scan(xbc, dt, m.conv.weight, bias, m.A_log, m.D, m.dt_bias,
                                    caches[i], caches[c.n_layers + i])
                    x = block._finish(x, m.out_proj(m.norm(y, z)))
                    continue
                if block.deltanet is not None:  # GatedDeltaNet._call: the states as mamba2's
                    m = block.deltanet
                    o = gated_deltanet(m.qkv(h_in), m.a(h_in), m.b(h_in), m.conv.weight,
                                       m.A_log, m.dt_bias, caches[i], caches[c.n_layers + i])
                    heads = (1, -1, m.value_heads, m.value_dim)
                    o = m.norm(o.reshape(heads), m.z(h_in).reshape(heads))
                    x = block._finish(x, m.out_proj(o.reshape(1, -1, m.value_width)))
                    continue
                if a is None:  # a short_conv layer (ShortConv.forward): its state is caches[i]
                    sc = block.conv
                    b, gate, xs = sc.in_proj(h_in).chunk(3, dim=-1)
                    y = short_conv(b * xs, caches[i], sc.kernel.weight)
                    x = block._finish(x, sc.out_proj(gate * y))
                    continue
                q, k, v = a.project(h_in, cos, sin)
                ring, window = layers[i]
                h = attention(q, k, v, caches[i], caches[c.n_layers + i], input_pos, ring,
                              window, a.scale, a.softcap or 0.0)
                x = block._finish(x, a.output(h, h_in))
            return self._logits(d.norm(x))

        def _logits(self, x: torch.Tensor) -> torch.Tensor:
            """Decoder._logits, with a packed tied table read by its own kernel."""
            d = self.decoder
            if d.lm_head is not None:
                logits = d.lm_head(x)
            elif isinstance(d.embed, PackedEmbedding):
                logits = d.embed.linear(x)
            else:
                logits = torch.nn.functional.linear(x, d.embed.weight)
            if c.logits_scaling != 1.0:
                logits = logits / c.logits_scaling
            if c.final_softcap is not None:
                logits = torch.tanh(logits / c.final_softcap) * c.final_softcap
            return logits.float()

    return FastDecoder().eval()


def export(decoder: "Decoder") -> "torch.export.ExportedProgram":
    """torch.export of `fast_module(decoder)`, T dynamic in [1, context]."""
    from torch.export import Dim
    from torch.nn.utils import parametrize

    c = decoder.config
    module = fast_module(decoder)
    example_t = min(4, c.context_length)
    tokens = torch.zeros((1, example_t), dtype=torch.int64)
    input_pos = torch.arange(example_t, dtype=torch.int64)
    k, v = decoder.empty_cache(batch=1)
    t = Dim("T", min=1, max=c.context_length)
    dynamic = ({1: t}, {0: t}, tuple(None for _ in range(2 * c.n_layers)))
    with torch.no_grad(), parametrize.cached():
        return torch.export.export(module, (tokens, input_pos, *k, *v), dynamic_shapes=dynamic,
                                   strict=False)


def call_args(ep: "torch.export.ExportedProgram", packed: Mapping[str, PackedTensor],
              state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays `main` takes after its user inputs, in order, keyed by params-file name."""
    kinds = torch.export.graph_signature.InputKind
    out: dict[str, np.ndarray] = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind != kinds.PARAMETER:
            continue
        local = spec.target.removeprefix("decoder.")
        name = stored_name(local, packed)
        base, _, suffix = name.rpartition(".")
        out[name] = packed[base].arrays[suffix] if base in packed else state[local]
    return out
