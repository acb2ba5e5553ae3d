"""Attention over a static KV cache that it writes in place: one TIR PrimFunc per layer shape.

`attention_kernel(...)` returns a PrimFunc meant for
`relax.call_tir_inplace(gv, [q, k, v, k_cache, v_cache, pos], [3, 4, -1], [...])`. It attends
each of the t new queries over the positions it can see and writes the t new keys and values
into the caches. The semantics are those of `omnic.model.modules.decoder.Block.forward` on a
static cache (`_static_masks`, `_ring_sources`, `_allowed`):

- full layer (`ring=False`; slot p holds position p): token i is written at slot pos[i] first,
  then query i reads slots max(0, pos[i] - window + 1) .. pos[i] and no others. A decode step
  therefore costs O(position), not O(cache_len).
- ring layer (`ring=True`; cache_len <= window < context, position p in slot p % C): query i
  reads the positions still in the ring (pos[0] - C .. pos[0] - 1, those inside its window),
  then the new keys up to its own. Only THEN are the new keys written, the last C of them when
  t > C.

How it runs:
- Each task is one (token, kv head) pair. It streams its visible keys in chunks of `_CHUNK`,
  for all H / KV query heads that share the kv head, so each K and V row comes from memory once
  per chunk, not once per head. The softmax runs online in float32, with one rescale per chunk.
- A decode step (t = 1) also splits the key range into `max(1, _DECODE_TASKS // KV)` parts, so
  that a model with few kv heads still fills the threads (flash-decoding). The parts' (max, sum,
  weighted values) are merged afterwards.
- Dot products keep two chains of `_LANES`-wide partial sums and add them as a tree; exp is a
  polynomial that vectorizes (`_exp`). Results therefore differ from a sequential float32
  computation by rounding only.

TVM is imported inside the functions, so this module imports without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tvm

_LANES = 8  # float32 lanes of an AVX2 / 2 x NEON register: D is walked in steps of it
_CHUNK = 32  # keys per softmax rescale (a multiple of 8): their scores sit in a local buffer
_DECODE_TASKS = 8  # a decode step splits its keys until kv heads x parts reaches about this
_NEG = -3.0e38  # running-max start and masked score: finite, so no inf - inf, and exp gives 0

# Cephes' expf, as in TVM's topi.fast_exp: exp(x) = 2^n * p(r) with n = round(x / ln 2),
# r = x - n ln 2 (ln 2 in two parts), p a polynomial; within 2 ulp of expf. It is written out as
# arithmetic so that a loop of it vectorizes: LLVM turns a vector llvm.exp into one libm call
# per lane. Below _EXP_LO it returns exactly 0 (2^-127 is built with a zero exponent field).
# ref: https://github.com/jeremybarnes/cephes/blob/master/single/expf.c
_EXP_HI, _EXP_LO = 88.3762626647950, -88.3762626647949
_LOG2E, _LN2_HI, _LN2_LO = 1.44269504088896341, 0.693359375, -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
             1.6666665459e-1, 5.0000001201e-1)


def _exp(x):
    """exp of a float32 PrimExpr, as plain arithmetic (see _EXP_POLY)."""
    from tvm.script import tirx as T

    x = T.max(T.min(x, T.float32(_EXP_HI)), T.float32(_EXP_LO))
    n = T.floor(x * T.float32(_LOG2E) + T.float32(0.5))
    r = x - n * T.float32(_LN2_HI) - n * T.float32(_LN2_LO)
    p = T.float32(_EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        p = p * r + T.float32(c)
    p = p * r * r + r + T.float32(1)
    return p * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))


def attention_kernel(n_heads: int, n_kv_heads: int, head_dim: int, cache_len: int, *,
                     ring: bool, window: int | None, scale: float,
                     softcap: float | None) -> "tvm.tirx.PrimFunc":
    """The attention PrimFunc of one layer's shape.

    Args:
        n_heads: H, query heads.
        n_kv_heads: KV, dividing H; query head h reads kv head h // (H // KV).
        head_dim: D.
        cache_len: C, the slots of the layer's static cache.
        ring: whether the cache is a ring (position p in slot p % C, C <= window); otherwise
            slot p holds position p.
        window: a key at distance >= window from its query is masked (None: no window).
        scale: scores are (q . k) * scale.
        softcap: scores become tanh(s / softcap) * softcap (Gemma 2); None for none.

    Returns:
        A private PrimFunc (q [1,H,t,D], k [1,KV,t,D], v [1,KV,t,D], k_cache [1,KV,C,D],
        v_cache [1,KV,C,D], pos int64 [t], out [1,t,H*D]) with a symbolic t. Everything is
        float32 but pos, the t consecutive ascending positions. k_cache and v_cache are
        written in place; out holds each token's heads side by side (the o projection's
        input).
    """
    from tvm.script import tirx as T

    if n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads={n_kv_heads} does not divide n_heads={n_heads}")
    if ring and (window is None or cache_len > window):
        raise ValueError(f"a ring of {cache_len} slots needs a window at least as long, "
                         f"got {window}")
    H, KV, D, C = n_heads, n_kv_heads, head_dim, cache_len
    rep = H // KV
    W = window if window is not None else C + 1  # no window: farther than any slot
    lanes = next(n for n in (_LANES, 4, 2, 1) if n <= D)  # a power of two: a tree adds them
    n_vec, tail = D // lanes, D % lanes
    CH = _CHUNK
    S = max(1, _DECODE_TASKS // KV)  # key-range parts of a decode step
    capped = softcap is not None
    cap = float(softcap) if capped else 1.0
    qk_scale = float(scale) / cap  # folded: tanh(q.k * scale / cap) * cap

    def visible_from(p, p0):
        # the first position seen from p: its window's start, and for a ring the oldest
        # position it holds before the call's first position p0 is written
        first = T.max(p - (W - 1), T.int64(0))
        return T.max(first, p0 - C) if ring else first

    @T.macro
    def attend_range(kb, vb, qv, acc, sbuf, part, st, lsum, red, g, start, n, wrap):
        # Keys r = 0..n-1 at kb[0, g, start + r] (modulo C when `wrap`), folded into the running
        # state of each query head hh of the group: st[hh, 0] the max, lsum[hh] the sum of exps
        # in 8 lanes, acc[hh] the exp-weighted values.
        for c in T.serial((n + (CH - 1)) // CH):
            for hh, r in T.grid(rep, CH):
                sbuf[hh, r] = T.float32(_NEG)
            for hh in T.serial(rep):  # heads outer: q stays in registers, K rows come from L1
                for r in T.serial(T.min(CH, n - c * CH)):
                    slot: T.let[T.int64] = T.if_then_else(
                        wrap, T.floormod(start + c * CH + r, C), start + c * CH + r)
                    # q . k: two chains of vector FMAs, then a tree across the lanes
                    for a in T.serial(2):
                        for ln in T.vectorized(lanes):
                            part[a, ln] = T.float32(0)
                    for d0 in T.unroll(n_vec):
                        for ln in T.vectorized(lanes):
                            part[d0 % 2, ln] = part[d0 % 2, ln] + (
                                qv[hh, d0 * lanes + ln] * kb[0, g, slot, d0 * lanes + ln])
                    for ln in T.vectorized(lanes):
                        part[0, ln] = part[0, ln] + part[1, ln]
                    if lanes == 8:
                        for ln in T.vectorized(4):
                            part[0, ln] = part[0, ln] + part[0, ln + 4]
                    if lanes >= 4:
                        for ln in T.vectorized(2):
                            part[0, ln] = part[0, ln] + part[0, ln + 2]
                    if lanes >= 2:
                        part[0, 0] = part[0, 0] + part[0, 1]
                    for d in T.unroll(tail):
                        part[0, 0] = part[0, 0] + (
                            qv[hh, n_vec * lanes + d] * kb[0, g, slot, n_vec * lanes + d])
                    if capped:
                        sbuf[hh, r] = T.tanh(part[0, 0] * T.float32(qk_scale)) * T.float32(cap)
                    else:
                        sbuf[hh, r] = part[0, 0] * T.float32(qk_scale)
            for hh in T.serial(rep):
                # the chunk's max, in 8 lanes and then a tree; the rescale of what came before
                for ln in T.vectorized(8):
                    red[ln] = sbuf[hh, ln]
                for r0 in T.serial(1, CH // 8):
                    for ln in T.vectorized(8):
                        red[ln] = T.max(red[ln], sbuf[hh, r0 * 8 + ln])
                for ln in T.vectorized(4):
                    red[ln] = T.max(red[ln], red[ln + 4])
                for ln in T.vectorized(2):
                    red[ln] = T.max(red[ln], red[ln + 2])
                st[hh, 2] = T.max(st[hh, 0], T.max(red[0], red[1]))
                st[hh, 3] = _exp(st[hh, 0] - st[hh, 2])
                st[hh, 0] = st[hh, 2]
                for d in T.vectorized(D):
                    acc[hh, d] = acc[hh, d] * st[hh, 3]
                for r in T.vectorized(CH):
                    sbuf[hh, r] = _exp(sbuf[hh, r] - st[hh, 0])  # 0 past the range's end
                for ln in T.vectorized(8):
                    red[ln] = sbuf[hh, ln]
                for r0 in T.serial(1, CH // 8):
                    for ln in T.vectorized(8):
                        red[ln] = red[ln] + sbuf[hh, r0 * 8 + ln]
                for ln in T.vectorized(8):
                    lsum[hh, ln] = lsum[hh, ln] * st[hh, 3] + red[ln]
                for r in T.serial(T.min(CH, n - c * CH)):
                    slot: T.let[T.int64] = T.if_then_else(
                        wrap, T.floormod(start + c * CH + r, C), start + c * CH + r)
                    for d in T.vectorized(D):
                        acc[hh, d] = acc[hh, d] + sbuf[hh, r] * vb[0, g, slot, d]

    @T.macro
    def attend(q, k, v, k_cache, v_cache, pos, qv, acc, sbuf, part, st, lsum, red, i, g, a, b):
        # Query i's heads of group g over the positions a .. b-1 (a part of what it can see).
        for hh in T.serial(rep):
            for d in T.vectorized(D):
                qv[hh, d] = q[0, g * rep + hh, i, d]
                acc[hh, d] = T.float32(0)
            for ln in T.vectorized(8):
                lsum[hh, ln] = T.float32(0)
            st[hh, 0] = T.float32(_NEG)
        if ring:
            # earlier positions from the ring, the new ones from k and v
            attend_range(k_cache, v_cache, qv, acc, sbuf, part, st, lsum, red, g,
                         a, T.max(T.min(b, pos[0]) - a, T.int64(0)), True)
            attend_range(k, v, qv, acc, sbuf, part, st, lsum, red, g, T.max(a, pos[0]) - pos[0],
                         T.max(b - T.max(a, pos[0]), T.int64(0)), False)
        else:  # already written: all from the cache
            attend_range(k_cache, v_cache, qv, acc, sbuf, part, st, lsum, red, g,
                         a, b - a, False)
        for hh in T.serial(rep):
            for ln in T.vectorized(4):
                lsum[hh, ln] = lsum[hh, ln] + lsum[hh, ln + 4]
            for ln in T.vectorized(2):
                lsum[hh, ln] = lsum[hh, ln] + lsum[hh, ln + 2]
            st[hh, 1] = lsum[hh, 0] + lsum[hh, 1]

    @T.macro
    def write_new(k, v, k_cache, v_cache, pos, t):
        # token i to slot pos[i] (modulo C for a ring, where only the last C tokens stay)
        with T.sblock("write"):
            for g, i in T.grid(KV, t):
                if t - 1 - i < C:
                    for d in T.vectorized(D):
                        k_cache[0, g, T.floormod(pos[i], C), d] = k[0, g, i, d]
                        v_cache[0, g, T.floormod(pos[i], C), d] = v[0, g, i, d]

    @T.macro
    def attend_tokens(q, k, v, k_cache, v_cache, pos, out, t):
        # One task per (token, kv head). The tokens go in the order 0, t-1, 1, t-2, ...: a
        # thread takes a contiguous range of tasks, and a causal query's cost grows with its
        # position, so every range mixes cheap and dear tokens.
        for task in T.parallel(t * KV):
            with T.sblock("attend"):
                # whole buffers: the inferred regions would name the let-bound token index
                T.reads(q[0, 0:H, 0:t, 0:D], k[0, 0:KV, 0:t, 0:D], v[0, 0:KV, 0:t, 0:D],
                        k_cache[0, 0:KV, 0:C, 0:D], v_cache[0, 0:KV, 0:C, 0:D], pos[0:t])
                T.writes(out[0, 0:t, 0:H * D])
                # Default scope on purpose: small buffers become stack allocas that LLVM keeps in
                # registers. scope="local" made each one a TVMBackendAllocWorkspace call per
                # task, 1.1-1.6x slower overall.
                qv = T.sblock_alloc_buffer((rep, D), "float32")
                acc = T.sblock_alloc_buffer((rep, D), "float32")
                sbuf = T.sblock_alloc_buffer((rep, CH), "float32")
                part = T.sblock_alloc_buffer((2, lanes), "float32")
                st = T.sblock_alloc_buffer((rep, 4), "float32")
                lsum = T.sblock_alloc_buffer((rep, 8), "float32")
                red = T.sblock_alloc_buffer((8,), "float32")
                u: T.let[T.int64] = task // KV
                i: T.let[T.int64] = T.if_then_else(u % 2 == 0, u // 2, t - 1 - u // 2)
                g: T.let[T.int64] = task % KV
                lo: T.let[T.int64] = visible_from(pos[i], pos[0])
                attend(q, k, v, k_cache, v_cache, pos, qv, acc, sbuf, part, st, lsum, red,
                       i, g, lo, pos[i] + 1)
                for hh in T.serial(rep):
                    for d in T.vectorized(D):
                        out[0, i, (g * rep + hh) * D + d] = acc[hh, d] / st[hh, 1]

    @T.macro
    def attend_decode(q, k, v, k_cache, v_cache, pos, out, parts):
        # t = 1: one task per (kv head, part of the key range), then the parts merged
        for task in T.parallel(T.int64(KV * S)):
            with T.sblock("attend_part"):
                T.reads(q[0, 0:H, 0, 0:D], k[0, 0:KV, 0, 0:D], v[0, 0:KV, 0, 0:D],
                        k_cache[0, 0:KV, 0:C, 0:D], v_cache[0, 0:KV, 0:C, 0:D], pos[0])
                T.writes(parts[0:KV, 0:S, 0:rep, 0:D + 2])
                qv = T.sblock_alloc_buffer((rep, D), "float32")
                acc = T.sblock_alloc_buffer((rep, D), "float32")
                sbuf = T.sblock_alloc_buffer((rep, CH), "float32")
                part = T.sblock_alloc_buffer((2, lanes), "float32")
                st = T.sblock_alloc_buffer((rep, 4), "float32")
                lsum = T.sblock_alloc_buffer((rep, 8), "float32")
                red = T.sblock_alloc_buffer((8,), "float32")
                g: T.let[T.int64] = task // S
                s: T.let[T.int64] = task % S
                lo: T.let[T.int64] = visible_from(pos[0], pos[0])
                n: T.let[T.int64] = pos[0] + 1 - lo
                attend(q, k, v, k_cache, v_cache, pos, qv, acc, sbuf, part, st, lsum,
                       red, 0, g, lo + n * s // S, lo + n * (s + 1) // S)
                for hh in T.serial(rep):
                    for d in T.vectorized(D):
                        parts[g, s, hh, d] = acc[hh, d]
                    parts[g, s, hh, D] = st[hh, 0]
                    parts[g, s, hh, D + 1] = st[hh, 1]
        with T.sblock("merge"):
            # out = sum_s e_s acc_s / sum_s e_s sum_s, e_s = exp(max_s - max)
            wgt = T.sblock_alloc_buffer((S + 2,), "float32")
            for g, hh in T.grid(KV, rep):
                wgt[S] = T.float32(_NEG)
                for s in T.serial(S):
                    wgt[S] = T.max(wgt[S], parts[g, s, hh, D])
                wgt[S + 1] = T.float32(0)
                for s in T.serial(S):
                    wgt[s] = _exp(parts[g, s, hh, D] - wgt[S])
                    wgt[S + 1] = wgt[S + 1] + wgt[s] * parts[g, s, hh, D + 1]
                for d in T.vectorized(D):
                    out[0, 0, (g * rep + hh) * D + d] = T.float32(0)
                for s in T.serial(S):
                    for d in T.vectorized(D):
                        out[0, 0, (g * rep + hh) * D + d] = (
                            out[0, 0, (g * rep + hh) * D + d] + wgt[s] * parts[g, s, hh, d])
                for d in T.vectorized(D):
                    out[0, 0, (g * rep + hh) * D + d] = (
                        out[0, 0, (g * rep + hh) * D + d] / wgt[S + 1])

    @T.prim_func(private=True, s_tir=True)
    def attention(q_h: T.handle, k_h: T.handle, v_h: T.handle, kc_h: T.handle,
                  vc_h: T.handle, pos_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        t = T.int64()
        q = T.match_buffer(q_h, (1, H, t, D), "float32")
        k = T.match_buffer(k_h, (1, KV, t, D), "float32")
        v = T.match_buffer(v_h, (1, KV, t, D), "float32")
        k_cache = T.match_buffer(kc_h, (1, KV, C, D), "float32")
        v_cache = T.match_buffer(vc_h, (1, KV, C, D), "float32")
        pos = T.match_buffer(pos_h, (t,), "int64")
        out = T.match_buffer(out_h, (1, t, H * D), "float32")
        # a decode step's parts: per (kv head, part, head) the weighted values, max and sum
        parts = T.alloc_buffer((KV, S, rep, D + 2), "float32")
        # one compare per call rather than a write out of bounds
        assert pos[0] >= 0, "attention: a negative position"
        if not ring:
            assert pos[t - 1] < C, "attention: a position past the end of the cache"
            write_new(k, v, k_cache, v_cache, pos, t)
        if S > 1:
            if t == 1:
                attend_decode(q, k, v, k_cache, v_cache, pos, out, parts)
            else:
                attend_tokens(q, k, v, k_cache, v_cache, pos, out, t)
        else:
            attend_tokens(q, k, v, k_cache, v_cache, pos, out, t)
        if ring:
            write_new(k, v, k_cache, v_cache, pos, t)

    return attention
