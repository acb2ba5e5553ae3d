"""The TVM target's attention kernel (omnic/targets/tvm/kernels/attention.py) in the Relax VM.

Each case compiles the kernel into a one-call Relax module, `relax.call_tir_inplace` exactly as
the lowering calls it (the caches are arguments 3 and 4, written in place), and runs a prefill
followed by decode steps on the SAME cache tensors, so state must persist in place.

References:
- independent: every key and value ever written is kept by absolute position; a query attends
  to the positions p with 0 <= pos - p < window through `scaled_dot_product_attention` (explicit
  softmax for the soft-cap) with a boolean mask built here, in float64. The expected caches are
  rebuilt from that history (slot p, or slot p % C for a ring keeping the latest position). The
  caches start as NaN: a kernel that reads a slot no query may see turns its output NaN.
- omnic's own: `Block.forward` with its static-cache masks (`_static_masks`, `_ring_sources`),
  the projections and the block's tail replaced by identities, stepped on its own cache (zero
  caches, as `Decoder.empty_cache` makes them).

Tolerance 1e-5 (abs and rel) against float64. The kernel computes in float32 but reassociates:
q.k in two chains of 8-lane partial sums added as a tree, a polynomial exp (within 2 ulp of
expf), one softmax rescale per chunk of 32 keys, and a decode step split into parts merged at
the end. Outputs are O(1) averages over at most ~60 keys here, so these differ from an exact
result by a few 1e-7. One key too many or too few moves an output by ~1e-2. Cache contents are
compared exactly, since they are copies.

Cases cover MHA, GQA 2:1, MQA (H=6, KV=1), D 4 / 8 / 12 / 64, the soft-cap, a prefill followed
by decode steps and further multi-token calls, a full layer with and without a window, and rings
with a prefill longer than the ring and decode steps wrapping around it.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("tvm")

from omnic.targets.tvm.kernels.attention import attention_kernel  # noqa: E402

ATOL = RTOL = 1e-5


@functools.lru_cache(maxsize=None)
def _vm(H: int, KV: int, D: int, C: int, ring: bool, window: int | None, scale: float,
        softcap: float | None):
    """The kernel in a Relax function main(q, k, v, k_cache, v_cache, pos) -> out, compiled for
    this CPU, in a VirtualMachine."""
    from tvm import relax

    func = attention_kernel(H, KV, D, C, ring=ring, window=window, scale=scale, softcap=softcap)
    t = tvm.tirx.Var("t", "int64")
    cache = relax.TensorType((1, KV, C, D), "float32")
    params = [relax.Var("q", relax.TensorType((1, H, t, D), "float32")),
              relax.Var("k", relax.TensorType((1, KV, t, D), "float32")),
              relax.Var("v", relax.TensorType((1, KV, t, D), "float32")),
              relax.Var("k_cache", cache), relax.Var("v_cache", cache),
              relax.Var("pos", relax.TensorType((t,), "int64"))]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        gv = bb.add_func(func, "attention")
        with bb.dataflow():
            res = bb.emit(relax.call_tir_inplace(
                gv, params, [3, 4, -1],
                [cache, cache, relax.TensorType((1, t, H * D), "float32")]))
            out = bb.emit_output(relax.TupleGetItem(res, 2))
        bb.emit_func_output(out)
    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    return relax.VirtualMachine(tvm.compile(bb.get(), target), tvm.cpu())


# name: (H, KV, D, C, ring, window, softcap, token counts of the successive calls)
CASES = {
    # MHA, D not a multiple of 8, a second multi-token call after decoding
    "mha_d12": (4, 4, 12, 24, False, None, None, [5, 1, 1, 1, 4, 1]),
    # GQA 2:1, D 64, soft-cap; 30 tokens at once pass the 32-key chunk (two rescaled chunks)
    "gqa_d64_softcap": (4, 2, 64, 40, False, None, 2.0, [5, 1, 1, 30, 1]),
    # 8 kv heads: no decode split; D 4 (4-lane vectors)
    "mha_kv8_d4": (8, 8, 4, 16, False, None, None, [5, 1, 1, 3, 1]),
    # decode from the first position: fewer keys than decode parts (8 for one kv head)
    "mqa_from_first": (2, 1, 8, 16, False, None, None, [1, 1, 1, 2, 1]),
    # a window on a context-long cache (not emitted by omnic, which rings such layers)
    "full_window": (4, 2, 12, 24, False, 6, None, [5, 1, 1, 1, 10, 1]),
    # MQA ring of 8: prefill of 11 (> C), decode wrapping around, a 3-token call across the wrap,
    # a 10-token call (> C) after decoding
    "mqa_ring": (6, 1, 12, 8, True, 8, None, [11, 1, 1, 1, 1, 1, 1, 1, 1, 3, 10, 1]),
    # ring of 40 with D 64: two chunks of old keys, then the new ones
    "gqa_ring_d64": (4, 2, 64, 40, True, 40, 3.0, [45, 1, 1, 37, 1]),
}


def _reference(q, k_hist, v_hist, pos, window, scale, softcap):
    """float64 [t, H*D] attention of q [H, t, D] over the history [KV, P, D] (P = pos[-1] + 1)
    with an explicit mask from positions."""
    H, t, D = q.shape
    rep = H // k_hist.shape[0]
    k = k_hist.repeat_interleave(rep, 0)
    v = v_hist.repeat_interleave(rep, 0)
    diff = pos[:, None] - torch.arange(k.shape[1], dtype=torch.int64)[None, :]
    mask = diff >= 0
    if window is not None:
        mask &= diff < window
    if softcap is None:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                               scale=scale)
    else:
        s = torch.tanh(q @ k.transpose(1, 2) * scale / softcap) * softcap
        out = torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v
    return out.transpose(0, 1).reshape(t, H * D)


def _expected_cache(hist, written, C, ring, init):
    """[KV, C, D]: the initial cache with each written position in its slot (a ring's slot
    keeps the latest position)."""
    cache = init.copy()
    for p in sorted(written):
        if p < C or ring:
            cache[:, p % C] = hist[:, p]
    return cache


@pytest.mark.parametrize("name", list(CASES))
def test_against_history(name: str) -> None:
    H, KV, D, C, ring, window, softcap, steps = CASES[name]
    scale = 0.7 * D**-0.5
    vm = _vm(H, KV, D, C, ring, window, scale, softcap)
    rng = np.random.default_rng(sum(map(ord, name)))
    total = sum(steps)
    k_hist = rng.standard_normal((KV, total, D)).astype(np.float32)
    v_hist = rng.standard_normal((KV, total, D)).astype(np.float32)
    init = np.full((KV, C, D), np.nan, np.float32)  # never read: a read turns outputs NaN
    k_cache = tvm.runtime.tensor(init[None].copy(), tvm.cpu())
    v_cache = tvm.runtime.tensor(init[None].copy(), tvm.cpu())
    start = 0
    for t in steps:
        pos = np.arange(start, start + t, dtype=np.int64)
        q = rng.standard_normal((H, t, D)).astype(np.float32)
        k, v = k_hist[:, pos], v_hist[:, pos]
        out = vm["main"](*(tvm.runtime.tensor(a, tvm.cpu()) for a in (
            q[None], np.ascontiguousarray(k[None]), np.ascontiguousarray(v[None]))),
            k_cache, v_cache, tvm.runtime.tensor(pos, tvm.cpu())).numpy()
        end = start + t
        ref = _reference(torch.from_numpy(q).double(), torch.from_numpy(k_hist[:, :end]).double(),
                         torch.from_numpy(v_hist[:, :end]).double(), torch.from_numpy(pos),
                         window, scale, softcap)
        where = f"{name}: call of {t} at {start}"
        np.testing.assert_allclose(out[0], ref.numpy(), rtol=RTOL, atol=ATOL, err_msg=where)
        written = range(end)
        np.testing.assert_array_equal(k_cache.numpy()[0],
                                      _expected_cache(k_hist, written, C, ring, init), where)
        np.testing.assert_array_equal(v_cache.numpy()[0],
                                      _expected_cache(v_hist, written, C, ring, init), where)
        start = end


@pytest.mark.parametrize("name", ["gqa_d64_softcap", "mqa_ring"])
def test_against_block_forward(name: str) -> None:
    """omnic's own static-cache path: `Block.forward` with `_static_masks`, q/k/v given, the
    pre-norm, the o projection and the block's tail identities; both step on their own caches."""
    from torch import nn

    from omnic.model.config import DecoderConfig
    from omnic.model.modules.decoder import Block, _static_masks

    H, KV, D, C, ring, window, softcap, steps = CASES[name]
    context = 64 if ring else C  # a ring's cache is shorter than the context
    config = DecoderConfig(vocab_size=8, d_model=H * D, n_layers=1, n_heads=H, n_kv_heads=KV,
                           head_dim=D, context_length=context, windows=(window,),
                           attn_softcap=softcap, attn_scale=0.7 * D**-0.5)
    block = Block(config, 0)
    block.attn_norm = None  # x is unused: the projections are replaced
    block.attn.o = nn.Identity()
    block._finish = lambda x, h: h
    vm = _vm(H, KV, D, C, ring, window, config.scale, softcap)
    gen = torch.Generator().manual_seed(7)
    k_ref = torch.zeros(1, KV, C, D)
    v_ref = torch.zeros(1, KV, C, D)
    k_cache = tvm.runtime.tensor(k_ref.numpy(), tvm.cpu())
    v_cache = tvm.runtime.tensor(v_ref.numpy(), tvm.cpu())
    start = 0
    for t in steps:
        pos = torch.arange(start, start + t)
        q, k, v = (torch.randn(1, n, t, D, generator=gen) for n in (H, KV, KV))
        block.attn.project = lambda x, cos, sin, qkv=(q, k, v): qkv
        mask = _static_masks([window], {window: C}, pos, context)[window]
        with torch.no_grad():
            ref, k_ref, v_ref = block(None, None, None, mask, k_ref, v_ref, pos)
        out = vm["main"](*(tvm.runtime.tensor(a.numpy(), tvm.cpu()) for a in (q, k, v)),
                         k_cache, v_cache, tvm.runtime.tensor(pos.numpy(), tvm.cpu())).numpy()
        where = f"{name}: call of {t} at {start}"
        np.testing.assert_allclose(out, ref.numpy(), rtol=RTOL, atol=ATOL, err_msg=where)
        np.testing.assert_array_equal(k_cache.numpy(), k_ref.numpy(), where)
        np.testing.assert_array_equal(v_cache.numpy(), v_ref.numpy(), where)
        start += t


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="does not divide"):
        attention_kernel(6, 4, 8, 16, ring=False, window=None, scale=1.0, softcap=None)
    for window in (8, None):
        with pytest.raises(ValueError, match="needs a window at least as long"):
            attention_kernel(4, 2, 8, 16, ring=True, window=window, scale=1.0, softcap=None)


def test_rejects_positions_outside_the_cache() -> None:
    """A full layer's cache has no slot past its end: the call fails instead of writing there."""
    vm = _vm(4, 4, 12, 24, False, None, 0.7 * 12**-0.5, None)  # mha_d12's module

    def zeros(*shape: int):
        return tvm.runtime.tensor(np.zeros(shape, np.float32), tvm.cpu())

    cache = (zeros(1, 4, 24, 12), zeros(1, 4, 24, 12))
    for pos, message in (([22, 23, 24], "past the end of the cache"), ([-1], "negative")):
        t = len(pos)
        with pytest.raises(Exception, match=message):
            vm["main"](zeros(1, 4, t, 12), zeros(1, 4, t, 12), zeros(1, 4, t, 12), *cache,
                       tvm.runtime.tensor(np.array(pos, np.int64), tvm.cpu()))
