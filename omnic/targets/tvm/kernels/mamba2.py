"""Granite 4's Mamba-2 mixer over states it updates in place: two TIR PrimFuncs per shape.

The mixer's stateful part (`omnic.model.modules.mamba2.Mamba2` between in_proj and the gated
norm) runs as two calls, each `relax.call_tir_inplace` on one of the layer's states:

- `conv_kernel(channels, kernel)`: the causal depthwise convolution of [state | xBC] with its
  bias, then SiLU, one output per token; the sequence's last kernel - 1 inputs become the next
  convolution state. One task per channel, as kernels/short_conv.py (the old slots are read
  before they are written: slot m takes slot t + m > m).
- `scan_kernel(heads, head_dim, d_state, groups)`: the selective scan as a recurrence, token
  by token (exact; no T x T parallel form), one task per head. With dt = softplus(dt_raw +
  dt_bias) and A = -exp(A_log), per token t and channel p of head h (group g = h // (heads /
  groups)):

      s[p, :] = exp(dt A) s[p, :] + dt x[p] B_g        y[p] = s[p, :] . C_g + D x[p]

  where x, B and C are the convolution's output split as x | B | C. The recurrent state
  s [1, heads, head_dim, d_state] is read, updated and written back in place.

Both compute in float32 and in the recurrence's order; they differ from the torch module's
one-chunk (state-space duality) form by rounding only.

TVM is imported inside the functions, so this module imports without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tvm

_SOFTPLUS_LINEAR = 20.0  # torch's softplus threshold: above it softplus(x) is x


def conv_kernel(channels: int, kernel: int) -> "tvm.tirx.PrimFunc":
    """The convolution PrimFunc: (xbc [1, t, C], state [1, C, kernel - 1], weight [C, 1, kernel],
    bias [C], out [1, t, C]) with a symbolic t, all float32; `state` is written in place and
    out = SiLU(conv + bias)."""
    from tvm.script import tirx as T

    if kernel < 2:
        raise ValueError(f"a Mamba-2 convolution spans at least 2 tokens, got {kernel}")
    C, K, S = channels, kernel, kernel - 1

    @T.prim_func(private=True, s_tir=True)
    def mamba2_conv(x_h: T.handle, st_h: T.handle, w_h: T.handle, b_h: T.handle,
                    out_h: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        t = T.int64()
        x = T.match_buffer(x_h, (1, t, C), "float32")
        state = T.match_buffer(st_h, (1, C, S), "float32")
        w = T.match_buffer(w_h, (C, 1, K), "float32")
        bias = T.match_buffer(b_h, (C,), "float32")
        out = T.match_buffer(out_h, (1, t, C), "float32")
        for c in T.parallel(T.int64(C)):
            with T.sblock("conv"):
                T.reads(x[0, 0:t, c], state[0, c, 0:S], w[c, 0, 0:K], bias[c])
                T.writes(out[0, 0:t, c], state[0, c, 0:S])
                acc = T.sblock_alloc_buffer((1,), "float32")
                # sequence index s < S: the state's slot s, else token s - S (the other index is
                # clamped into range: if_then_else reads only one side, but stays in bounds)
                for j in T.serial(t):
                    acc[0] = bias[c]
                    for k in T.serial(K):
                        acc[0] = acc[0] + w[c, 0, k] * T.if_then_else(
                            j + k < S, state[0, c, T.min(j + k, S - 1)],
                            x[0, T.max(j + k - S, 0), c])
                    out[0, j, c] = acc[0] * T.sigmoid(acc[0])
                for m in T.serial(S):
                    state[0, c, m] = T.if_then_else(
                        t + m < S, state[0, c, T.min(t + m, S - 1)],
                        x[0, T.max(t + m - S, 0), c])

    return mamba2_conv


def scan_kernel(heads: int, head_dim: int, d_state: int, groups: int) -> "tvm.tirx.PrimFunc":
    """The scan PrimFunc: (xc [1, t, inner + 2 groups d_state], dt [1, t, heads], A_log [heads],
    D [heads], dt_bias [heads], state [1, heads, head_dim, d_state], y [1, t, inner]) with a
    symbolic t, all float32 (inner = heads * head_dim); `state` is written in place."""
    from tvm.script import tirx as T

    if heads % groups:
        raise ValueError(f"groups={groups} does not divide heads={heads}")
    H, P, N = heads, head_dim, d_state
    inner = H * P
    width = inner + 2 * groups * N
    rep = H // groups

    @T.prim_func(private=True, s_tir=True)
    def mamba2_scan(xc_h: T.handle, dt_h: T.handle, a_h: T.handle, d_h: T.handle,
                    db_h: T.handle, st_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        t = T.int64()
        xc = T.match_buffer(xc_h, (1, t, width), "float32")
        dt = T.match_buffer(dt_h, (1, t, H), "float32")
        a_log = T.match_buffer(a_h, (H,), "float32")
        d_skip = T.match_buffer(d_h, (H,), "float32")
        dt_bias = T.match_buffer(db_h, (H,), "float32")
        state = T.match_buffer(st_h, (1, H, P, N), "float32")
        y = T.match_buffer(y_h, (1, t, inner), "float32")
        for h in T.parallel(T.int64(H)):
            with T.sblock("scan"):
                # whole buffers: the inferred regions would name the let-bound group index
                T.reads(xc[0, 0:t, 0:width], dt[0, 0:t, h], a_log[h], d_skip[h], dt_bias[h],
                        state[0, h, 0:P, 0:N])
                T.writes(state[0, h, 0:P, 0:N], y[0, 0:t, h * P:h * P + P])
                # sc: 0 dt, 1 the decay exp(dt A), 2 dt x[p], 3 the dot product with C
                sc = T.sblock_alloc_buffer((4,), "float32")
                prod = T.sblock_alloc_buffer((N,), "float32")
                b0: T.let[T.int64] = inner + (h // rep) * N  # group g's B, then its C
                c0: T.let[T.int64] = inner + groups * N + (h // rep) * N
                for j in T.serial(t):
                    sc[0] = dt[0, j, h] + dt_bias[h]
                    sc[0] = T.if_then_else(sc[0] > T.float32(_SOFTPLUS_LINEAR), sc[0],
                                           T.log1p(T.exp(sc[0])))
                    sc[1] = T.exp(sc[0] * -T.exp(a_log[h]))
                    for p in T.serial(P):
                        sc[2] = sc[0] * xc[0, j, h * P + p]
                        for n in T.vectorized(N):
                            state[0, h, p, n] = (sc[1] * state[0, h, p, n]
                                                 + sc[2] * xc[0, j, b0 + n])
                            prod[n] = state[0, h, p, n] * xc[0, j, c0 + n]
                        sc[3] = T.float32(0)
                        for n in T.serial(N):
                            sc[3] = sc[3] + prod[n]
                        y[0, j, h * P + p] = sc[3] + d_skip[h] * xc[0, j, h * P + p]

    return mamba2_scan
