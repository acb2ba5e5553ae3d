"""Dequantize-inside-the-matmul kernels for the TVM target's packed weights (TIR, CPU).

`y[t, j] = sum_k x[t, k] * w[j, k]`, where w is decoded from its stored arrays inside the loop
(quant.py has the layouts) and never materialised as a float matrix: decode reads the packed
bytes once per token, which is what makes a 4-bit weight cheaper than a float one. MLC-LLM does
the same with its q4f16 decode fused into GEMV kernels.
ref: https://github.com/mlc-ai/mlc-llm/blob/main/python/mlc_llm/quantization/group_quantization.py

Schedule (hand-written, CPU): rows in blocks of `rows` are the parallel axis; for each token and
row the reduction runs group by group with `lanes` independent partial sums (a vector
accumulator, so the float adds vectorise without reassociation across lanes); each group's sum is
scaled once, and the lanes are added at the end. int4 bytes hold elements i and i + lanes of a
block of 2 * lanes (quant.nibble_block), so both nibbles meet contiguous activations. The same
kernel serves decode (t = 1, a GEMV) and prefill (any t).

Kernels take x [t, k] float32 and return y [t, n] float32; the caller reshapes around them.
"""
# TVMScript bodies: an index expression split over lines reads worse than a long line.
# ruff: noqa: E501

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tvm

_MAX_LANES = 16  # float32 lanes per step: two 256-bit registers (AVX2), four NEON registers


def _rows(n: int) -> int:
    """Rows computed together in one parallel task (they share the activation reads)."""
    return next(r for r in (4, 2, 1) if n % r == 0)


def _tile(n: int, k: int) -> int:
    """Rows a prefill task decodes into floats at once: at most 64 KiB of them (L2-resident
    while every token of the prompt reads them), and a divisor of n."""
    return next(r for r in (16, 8, 4, 2, 1) if n % r == 0 and (r * k * 4 <= 65536 or r == 1))


def _tile_times_tokens(k: int, tile: int, dot: int) -> Any:
    """The prefill's second half, shared by the int4 and int8 kernels: y[tt, rows of tile jo] =
    x[tt] . w[row] for every token, with `dot` lanes of partial sums."""
    from tvm.script import tirx as T

    @T.macro
    def times_tokens(w: T.Buffer, acc: T.Buffer, x: T.Buffer, y: T.Buffer, jo: T.int64,
                     t: T.int64):
        for tt in range(t):
            for ji in range(tile):
                for lane in T.vectorized(dot):
                    acc[lane] = T.float32(0)
                for c in range(k // dot):
                    for lane in T.vectorized(dot):
                        acc[lane] = acc[lane] + w[ji, c * dot + lane] * x[tt, c * dot + lane]
                y[tt, jo * tile + ji] = T.float32(0)
                for lane in range(dot):
                    y[tt, jo * tile + ji] = y[tt, jo * tile + ji] + acc[lane]

    return times_tokens


def _lanes(width: int) -> int:
    """The widest power of two <= _MAX_LANES dividing `width`."""
    lanes = _MAX_LANES
    while width % lanes:
        lanes //= 2
    return lanes


def int4_kernel(n: int, k: int, group: int, *, symmetric: bool,
                scale_dtype: str) -> "tvm.tirx.PrimFunc":
    """int4 codes, two per byte in nibble blocks of 2 * lanes (quant.nibble_block(group)).

    Parameters: x [t, k] f32, q uint8 [n, k / 2], scale [n, k / group], zero, y [t, n] f32.
    `zero` is uint8 [ceil(n * G / 2)] nibbles (asymmetric; quant.py's layout) or a one-element
    placeholder the kernel does not read (symmetric: the zero point is 8).
    """
    from tvm.script import tirx as T

    from omnic.targets.tvm.quant import nibble_block

    block = nibble_block(group)
    lanes = block // 2
    groups, steps, rows, tile = k // group, group // block, _rows(n), _tile(n, k)
    dot = _lanes(k)  # lanes of the prefill's float dot products
    times_tokens = _tile_times_tokens(k, tile, dot)
    zero_len = (n * groups + 1) // 2 if not symmetric else 1

    def zero(z: Any, row: Any, g: Any) -> Any:
        if symmetric:
            return T.float32(8)
        idx = row * groups + g
        return T.Cast("float32", (z[idx // 2] >> T.Cast("uint8", (idx % 2) * 4)) & T.uint8(15))

    @T.prim_func(private=True, s_tir=True)
    def kernel(var_x: T.handle, q: T.Buffer((n, k // 2), "uint8"),
               s: T.Buffer((n, groups), scale_dtype), z: T.Buffer((zero_len,), "uint8"),
               var_y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        t = T.int64()
        x = T.match_buffer(var_x, (t, k), "float32")
        y = T.match_buffer(var_y, (t, n), "float32")
        if t == 1:  # decode: each packed byte is read once, decoded in registers
            for jo in T.parallel(n // rows):
                for ji in range(rows):
                    with T.sblock("row"):
                        acc = T.sblock_alloc_buffer((lanes,), "float32")
                        part = T.sblock_alloc_buffer((lanes,), "float32")
                        for lane in T.vectorized(lanes):
                            acc[lane] = T.float32(0)
                        for g in range(groups):
                            for lane in T.vectorized(lanes):
                                part[lane] = T.float32(0)
                            for b in range(steps):
                                for lane in T.vectorized(lanes):
                                    part[lane] = part[lane] + (
                                        T.Cast("float32", q[jo * rows + ji, (g * group + b * block) // 2 + lane] & T.uint8(15))
                                        - zero(z, jo * rows + ji, g)
                                    ) * x[0, g * group + b * block + lane] + (
                                        T.Cast("float32", q[jo * rows + ji, (g * group + b * block) // 2 + lane] >> T.uint8(4))
                                        - zero(z, jo * rows + ji, g)
                                    ) * x[0, g * group + b * block + lanes + lane]
                            for lane in T.vectorized(lanes):
                                acc[lane] = acc[lane] + part[lane] * T.Cast("float32", s[jo * rows + ji, g])
                        y[0, jo * rows + ji] = T.float32(0)
                        for lane in range(lanes):
                            y[0, jo * rows + ji] = y[0, jo * rows + ji] + acc[lane]
        else:  # prefill: a tile of rows decoded once into floats, then multiplied by every token
            for jo in T.parallel(n // tile):
                with T.sblock("tile"):
                    w = T.sblock_alloc_buffer((tile, k), "float32")
                    acc = T.sblock_alloc_buffer((dot,), "float32")
                    for ji in range(tile):
                        for g in range(groups):
                            for b in range(steps):
                                for lane in T.vectorized(lanes):
                                    w[ji, g * group + b * block + lane] = (
                                        T.Cast("float32", q[jo * tile + ji, (g * group + b * block) // 2 + lane] & T.uint8(15))
                                        - zero(z, jo * tile + ji, g)
                                    ) * T.Cast("float32", s[jo * tile + ji, g])
                                for lane in T.vectorized(lanes):
                                    w[ji, g * group + b * block + lanes + lane] = (
                                        T.Cast("float32", q[jo * tile + ji, (g * group + b * block) // 2 + lane] >> T.uint8(4))
                                        - zero(z, jo * tile + ji, g)
                                    ) * T.Cast("float32", s[jo * tile + ji, g])
                    times_tokens(w, acc, x, y, jo, t)

    return kernel


def int8_kernel(n: int, k: int, group: int, *, symmetric: bool,
                scale_dtype: str) -> "tvm.tirx.PrimFunc":
    """int8 codes [n, k] (int8 symmetric; uint8 with uint8 zero points [n, G] asymmetric).

    Parameters: x [t, k] f32, q, scale [n, G], zero ([n, G], or a [1] placeholder when
    symmetric), y [t, n] f32.
    """
    from tvm.script import tirx as T

    lanes = _lanes(group)
    groups, steps, rows, tile = k // group, group // lanes, _rows(n), _tile(n, k)
    dot = _lanes(k)  # lanes of the prefill's float dot products
    times_tokens = _tile_times_tokens(k, tile, dot)
    code = "int8" if symmetric else "uint8"
    zero_shape = (1, 1) if symmetric else (n, groups)

    def zero(z: Any, row: Any, g: Any) -> Any:
        return T.float32(0) if symmetric else T.Cast("float32", z[row, g])

    @T.prim_func(private=True, s_tir=True)
    def kernel(var_x: T.handle, q: T.Buffer((n, k), code), s: T.Buffer((n, groups), scale_dtype),
               z: T.Buffer(zero_shape, "uint8"), var_y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        t = T.int64()
        x = T.match_buffer(var_x, (t, k), "float32")
        y = T.match_buffer(var_y, (t, n), "float32")
        if t == 1:  # decode: each code is read once, decoded in registers
            for jo in T.parallel(n // rows):
                for ji in range(rows):
                    with T.sblock("row"):
                        acc = T.sblock_alloc_buffer((lanes,), "float32")
                        part = T.sblock_alloc_buffer((lanes,), "float32")
                        for lane in T.vectorized(lanes):
                            acc[lane] = T.float32(0)
                        for g in range(groups):
                            for lane in T.vectorized(lanes):
                                part[lane] = T.float32(0)
                            for b in range(steps):
                                for lane in T.vectorized(lanes):
                                    part[lane] = part[lane] + (
                                        T.Cast("float32", q[jo * rows + ji, g * group + b * lanes + lane])
                                        - zero(z, jo * rows + ji, g)
                                    ) * x[0, g * group + b * lanes + lane]
                            for lane in T.vectorized(lanes):
                                acc[lane] = acc[lane] + part[lane] * T.Cast("float32", s[jo * rows + ji, g])
                        y[0, jo * rows + ji] = T.float32(0)
                        for lane in range(lanes):
                            y[0, jo * rows + ji] = y[0, jo * rows + ji] + acc[lane]
        else:  # prefill: a tile of rows decoded once into floats, then multiplied by every token
            for jo in T.parallel(n // tile):
                with T.sblock("tile"):
                    w = T.sblock_alloc_buffer((tile, k), "float32")
                    acc = T.sblock_alloc_buffer((dot,), "float32")
                    for ji in range(tile):
                        for g in range(groups):
                            for b in range(steps):
                                for lane in T.vectorized(lanes):
                                    w[ji, g * group + b * lanes + lane] = (
                                        T.Cast("float32", q[jo * tile + ji, g * group + b * lanes + lane])
                                        - zero(z, jo * tile + ji, g)
                                    ) * T.Cast("float32", s[jo * tile + ji, g])
                    times_tokens(w, acc, x, y, jo, t)

    return kernel


def float_kernel(n: int, k: int, dtype: str) -> "tvm.tirx.PrimFunc":
    """Unscaled weights [n, k] in float16 or float32. Parameters: x [t, k] f32, w, y [t, n]."""
    from tvm.script import tirx as T

    lanes = _lanes(k)
    steps, rows = k // lanes, _rows(n)

    @T.prim_func(private=True, s_tir=True)
    def kernel(var_x: T.handle, w: T.Buffer((n, k), dtype), var_y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        t = T.int64()
        x = T.match_buffer(var_x, (t, k), "float32")
        y = T.match_buffer(var_y, (t, n), "float32")
        for jo in T.parallel(n // rows):
            for tt in range(t):
                for ji in range(rows):
                    with T.sblock("row"):
                        acc = T.sblock_alloc_buffer((lanes,), "float32")
                        for lane in T.vectorized(lanes):
                            acc[lane] = T.float32(0)
                        for b in range(steps):
                            for lane in T.vectorized(lanes):
                                acc[lane] = acc[lane] + T.Cast("float32", w[jo * rows + ji, b * lanes + lane]) * x[tt, b * lanes + lane]
                        y[tt, jo * rows + ji] = T.float32(0)
                        for lane in range(lanes):
                            y[tt, jo * rows + ji] = y[tt, jo * rows + ji] + acc[lane]

    return kernel


def gather_kernel(scheme: str, n: int, k: int, group: int, *, symmetric: bool,
                  scale_dtype: str) -> "tvm.tirx.PrimFunc":
    """Rows of a packed [n, k] table (an embedding), decoded: out[t, :] = w[ids[t], :].

    Parameters: ids [t] int64, q, scale, zero (as int4_kernel / int8_kernel take them),
    out [t, k] f32. Ids must be in [0, n): the runner checks them before every call.
    """
    from tvm.script import tirx as T

    from omnic.targets.tvm.quant import nibble_block

    if scheme == "fp16":
        return _float_gather(n, k)
    groups = k // group
    if scheme == "int4":
        block = nibble_block(group)
        lanes = block // 2
        q_shape, code = (n, k // 2), "uint8"
        zero_shape = (1,) if symmetric else ((n * groups + 1) // 2,)
    else:
        lanes = _lanes(group)
        q_shape, code = (n, k), "int8" if symmetric else "uint8"
        zero_shape = (1, 1) if symmetric else (n, groups)

    def zero(z: Any, row: Any, g: Any) -> Any:
        if symmetric:
            return T.float32(8 if scheme == "int4" else 0)
        if scheme == "int8":
            return T.Cast("float32", z[row, g])
        idx = row * groups + g
        return T.Cast("float32", (z[idx // 2] >> T.Cast("uint8", (idx % 2) * 4)) & T.uint8(15))

    def code_at(q: Any, row: Any, col: Any) -> Any:
        """The code of element `col` of `row`, as float32 (before the zero point)."""
        if scheme == "int8":
            return T.Cast("float32", q[row, col])
        block_start = col - col % (2 * lanes)
        byte = q[row, block_start // 2 + col % lanes]
        return T.Cast("float32", T.if_then_else(col % (2 * lanes) < lanes, byte & T.uint8(15),
                                                byte >> T.uint8(4)))

    @T.prim_func(private=True, s_tir=True)
    def kernel(var_ids: T.handle, q: T.Buffer(q_shape, code),
               s: T.Buffer((n, groups), scale_dtype), z: T.Buffer(zero_shape, "uint8"),
               var_out: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        t = T.int64()
        ids = T.match_buffer(var_ids, (t,), "int64")
        out = T.match_buffer(var_out, (t, k), "float32")
        for tt in range(t):
            for col in range(k):
                with T.sblock("row"):
                    out[tt, col] = (code_at(q, ids[tt], col) - zero(z, ids[tt], col // group)) \
                        * T.Cast("float32", s[ids[tt], col // group])

    return kernel


def _float_gather(n: int, k: int) -> "tvm.tirx.PrimFunc":
    """Rows of a float16 [n, k] table as float32. Parameters: ids [t] int64, w, out [t, k]."""
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def kernel(var_ids: T.handle, w: T.Buffer((n, k), "float16"), var_out: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        t = T.int64()
        ids = T.match_buffer(var_ids, (t,), "int64")
        out = T.match_buffer(var_out, (t, k), "float32")
        for tt in range(t):
            for col in range(k):
                with T.sblock("row"):
                    out[tt, col] = T.Cast("float32", w[ids[tt], col])

    return kernel
