"""LFM2's short convolution over a state it updates in place: one TIR PrimFunc per shape.

`short_conv_kernel(d, kernel)` returns a PrimFunc meant for
`relax.call_tir_inplace(gv, [bx, state, weight], [1, -1], [...])`. Per channel c it convolves
the sequence [state (kernel - 1 values) | bx (t values)] with the channel's taps, one output per
token, and then keeps the sequence's last kernel - 1 values as the next state, as
`omnic.model.modules.short_conv.ShortConv` does. The channels are independent: one task per
channel reads its old state before writing the new one (slot m takes slot t + m > m, so the
ascending order never reads a slot it already wrote).

TVM is imported inside the function, so this module imports without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tvm


def short_conv_kernel(d_model: int, kernel: int) -> "tvm.tirx.PrimFunc":
    """The PrimFunc of one shape: (bx [1, t, d], state [1, d, kernel - 1], weight [d, 1, kernel],
    out [1, t, d]) with a symbolic t, all float32; `state` is written in place."""
    from tvm.script import tirx as T

    if kernel < 2:
        raise ValueError(f"a short convolution spans at least 2 tokens, got {kernel}")
    D, K, S = d_model, kernel, kernel - 1

    @T.prim_func(private=True, s_tir=True)
    def short_conv(bx_h: T.handle, st_h: T.handle, w_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        t = T.int64()
        bx = T.match_buffer(bx_h, (1, t, D), "float32")
        state = T.match_buffer(st_h, (1, D, S), "float32")
        w = T.match_buffer(w_h, (D, 1, K), "float32")
        out = T.match_buffer(out_h, (1, t, D), "float32")
        for c in T.parallel(T.int64(D)):
            with T.sblock("conv"):
                T.reads(bx[0, 0:t, c], state[0, c, 0:S], w[c, 0, 0:K])
                T.writes(out[0, 0:t, c], state[0, c, 0:S])
                # sequence index s < S: the state's slot s, else token s - S (the other index is
                # clamped into range: if_then_else reads only one side, but stays in bounds)
                for j in T.serial(t):
                    out[0, j, c] = T.float32(0)
                    for k in T.serial(K):
                        out[0, j, c] = out[0, j, c] + w[c, 0, k] * T.if_then_else(
                            j + k < S, state[0, c, T.min(j + k, S - 1)],
                            bx[0, T.max(j + k - S, 0), c])
                for m in T.serial(S):
                    state[0, c, m] = T.if_then_else(
                        t + m < S, state[0, c, T.min(t + m, S - 1)],
                        bx[0, T.max(t + m - S, 0), c])

    return short_conv
