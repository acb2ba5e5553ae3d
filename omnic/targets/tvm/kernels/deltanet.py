"""Qwen3.5's Gated DeltaNet over a recurrent state it updates in place: one TIR PrimFunc per shape.

The mixer's stateful part (`omnic.model.modules.deltanet.GatedDeltaNet` between its projections
and the gated norm) runs as two calls, each `relax.call_tir_inplace` on one of the layer's
states:

- the causal depthwise convolution + SiLU of [state | qkv], which is Mamba-2's
  (`kernels.mamba2.conv_kernel`) with a zero bias: it writes the convolution state in place;
- `rule_kernel(key_heads, value_heads, key_dim, value_dim)`: the gated delta rule as a
  recurrence, token by token (exact; no chunked WY form), one task per value head. Value head h
  reads key head h // (value_heads / key_heads) (transformers' repeat_interleave). Per token,
  with q and k L2-normalised (eps 1e-6), q scaled by key_dim^-1/2, beta = sigmoid(b) and the
  decay e = exp(-exp(A_log) softplus(a + dt_bias)):

      delta = (v - e S^T k) beta        S' = e S + k delta^T        o = S'^T q

  o is computed from the old state as e (S^T q) + (k . q) delta, so the state is read once
  (S^T k and S^T q together) and then read and written once (S'), instead of twice each.
  S [1, value_heads, key_dim, value_dim] is read, updated and written back in place.

Both compute in float32; they differ from the torch module's one-chunk form by rounding only.

TVM is imported inside the functions, so this module imports without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tvm

_SOFTPLUS_LINEAR = 20.0  # torch's softplus threshold: above it softplus(x) is x
_L2_EPS = 1e-6  # transformers' l2norm (the FLA kernels' value)


def rule_kernel(key_heads: int, value_heads: int, key_dim: int,
                value_dim: int) -> "tvm.tirx.PrimFunc":
    """The delta rule PrimFunc: (xc [1, t, 2 key_heads key_dim + value_heads value_dim] (the
    convolution's output, q | k | v), a [1, t, value_heads], b [1, t, value_heads], A_log
    [value_heads], dt_bias [value_heads], state [1, value_heads, key_dim, value_dim],
    o [1, t, value_heads * value_dim]) with a symbolic t, all float32; `state` is written in
    place."""
    from tvm.script import tirx as T

    if value_heads % key_heads:
        raise ValueError(f"key_heads={key_heads} does not divide value_heads={value_heads}")
    KH, VH, DK, DV = key_heads, value_heads, key_dim, value_dim
    rep = VH // KH
    kw = KH * DK
    width = 2 * kw + VH * DV
    q_scale = DK ** -0.5

    @T.prim_func(private=True, s_tir=True)
    def gated_delta_rule(xc_h: T.handle, a_h: T.handle, b_h: T.handle, al_h: T.handle,
                         db_h: T.handle, st_h: T.handle, o_h: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        t = T.int64()
        xc = T.match_buffer(xc_h, (1, t, width), "float32")
        a = T.match_buffer(a_h, (1, t, VH), "float32")
        b = T.match_buffer(b_h, (1, t, VH), "float32")
        a_log = T.match_buffer(al_h, (VH,), "float32")
        dt_bias = T.match_buffer(db_h, (VH,), "float32")
        state = T.match_buffer(st_h, (1, VH, DK, DV), "float32")
        out = T.match_buffer(o_h, (1, t, VH * DV), "float32")
        for h in T.parallel(T.int64(VH)):
            with T.sblock("rule"):
                # whole buffers: the inferred regions would name the let-bound key head
                T.reads(xc[0, 0:t, 0:width], a[0, 0:t, h], b[0, 0:t, h], a_log[h], dt_bias[h],
                        state[0, h, 0:DK, 0:DV])
                T.writes(state[0, h, 0:DK, 0:DV], out[0, 0:t, h * DV:h * DV + DV])
                # sc: 0 the q scale, then k . q; 1 the k scale; 2 softplus; 3 the decay; 4 beta
                sc = T.sblock_alloc_buffer((5,), "float32")
                qn = T.sblock_alloc_buffer((DK,), "float32")
                kn = T.sblock_alloc_buffer((DK,), "float32")
                dl = T.sblock_alloc_buffer((DV,), "float32")  # S^T k, then delta
                sq = T.sblock_alloc_buffer((DV,), "float32")  # S^T q
                q0: T.let[T.int64] = (h // rep) * DK
                k0: T.let[T.int64] = kw + (h // rep) * DK
                v0: T.let[T.int64] = 2 * kw + h * DV
                for j in T.serial(t):
                    sc[0] = T.float32(0)
                    sc[1] = T.float32(0)
                    for i in T.serial(DK):
                        sc[0] = sc[0] + xc[0, j, q0 + i] * xc[0, j, q0 + i]
                        sc[1] = sc[1] + xc[0, j, k0 + i] * xc[0, j, k0 + i]
                    sc[0] = T.rsqrt(sc[0] + T.float32(_L2_EPS)) * T.float32(q_scale)
                    sc[1] = T.rsqrt(sc[1] + T.float32(_L2_EPS))
                    for i in T.vectorized(DK):
                        qn[i] = xc[0, j, q0 + i] * sc[0]
                        kn[i] = xc[0, j, k0 + i] * sc[1]
                    sc[2] = a[0, j, h] + dt_bias[h]
                    sc[2] = T.if_then_else(sc[2] > T.float32(_SOFTPLUS_LINEAR), sc[2],
                                           T.log1p(T.exp(sc[2])))
                    sc[3] = T.exp(sc[2] * -T.exp(a_log[h]))
                    sc[4] = T.sigmoid(b[0, j, h])
                    sc[0] = T.float32(0)
                    for i in T.serial(DK):
                        sc[0] = sc[0] + kn[i] * qn[i]
                    # one read of the old state: S^T k and S^T q
                    for p in T.vectorized(DV):
                        dl[p] = T.float32(0)
                        sq[p] = T.float32(0)
                    for i in T.serial(DK):
                        for p in T.vectorized(DV):
                            dl[p] = dl[p] + state[0, h, i, p] * kn[i]
                            sq[p] = sq[p] + state[0, h, i, p] * qn[i]
                    # delta = (v - e S^T k) beta; o = e S^T q + (k . q) delta
                    for p in T.vectorized(DV):
                        dl[p] = (xc[0, j, v0 + p] - dl[p] * sc[3]) * sc[4]
                        out[0, j, h * DV + p] = sq[p] * sc[3] + sc[0] * dl[p]
                    # S' = e S + k delta^T
                    for i in T.serial(DK):
                        for p in T.vectorized(DV):
                            state[0, h, i, p] = state[0, h, i, p] * sc[3] + kn[i] * dl[p]

    return gated_delta_rule
