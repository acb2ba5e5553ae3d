"""The Relax side of llm_graph.py: each `omnic_tvm::` op of the exported program becomes a call
of its TIR kernel (kernels/), through `from_exported_program`'s custom_convert_map.

    packed_linear     call_tir of kernels.packed_matmul (x flattened to [tokens, width])
    packed_embedding  call_tir of kernels.packed_matmul.gather_kernel
    attention         call_tir_inplace of kernels.attention: outputs 0 and 1 are the k and v
                      caches (function parameters, written in place), output 2 the attention
    short_conv        call_tir_inplace of kernels.short_conv: output 0 is the layer's state
                      (written in place), output 1 the convolution
    mamba2_scan       two call_tir_inplace of kernels.mamba2: the convolution (output 0 the
                      convolution state, written in place, output 1 SiLU(conv)), then the scan
                      (output 0 the recurrent state, written in place, output 1 y)
    gated_deltanet    two call_tir_inplace: kernels.mamba2's convolution with a zero bias
                      (output 0 the convolution state, written in place, output 1 SiLU(conv)),
                      then kernels.deltanet's rule (output 0 the recurrent state, written in
                      place, output 1 o)

A kernel is added to the module once per distinct shape and kind (`Kernels`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import tvm


class Kernels:
    """The PrimFuncs added to one import, by what they compute; `counts` says how many calls
    each kind of op got (the artifact's details)."""

    def __init__(self) -> None:
        self._gvars: dict[tuple, Any] = {}
        self.counts: dict[str, int] = {}

    def add(self, bb: Any, key: tuple, make: Callable[[], Any]) -> Any:
        """The GlobalVar of the kernel `key` names, added to the module by `make` once."""
        self.counts[key[0]] = self.counts.get(key[0], 0) + 1
        if key not in self._gvars:
            name = "_".join(str(part) for part in key).replace(".", "p").replace("-", "m")
            self._gvars[key] = bb.add_func(make(), name)
        return self._gvars[key]

    def convert_map(self) -> dict[str, Callable]:
        """from_exported_program's custom_convert_map for the omnic_tvm ops."""
        return {"packed_linear.default": self._linear,
                "packed_embedding.default": self._embedding,
                "attention.default": self._attention,
                "short_conv.default": self._short_conv,
                "mamba2_scan.default": self._mamba2,
                "gated_deltanet.default": self._deltanet}

    def _linear(self, node: Any, importer: Any) -> Any:
        from tvm import relax

        from omnic.targets.tvm.kernels import packed_matmul as K

        bb = importer.block_builder
        x, q, scale, zero, kind, group, width = importer.retrieve_args(node)
        n = int(importer.shape_of(q)[0])
        lead = list(importer.shape_of(x))[:-1]
        tokens = _product(lead)
        flat = bb.emit(relax.op.reshape(x, [tokens, width]))
        scheme, symmetric = kind.removesuffix("_asym"), not kind.endswith("_asym")
        scale_dtype = str(scale.ty.dtype)
        if scheme == "fp16":
            gv = self.add(bb, ("linear", kind, n, width),
                          lambda: K.float_kernel(n, width, "float16"))
            args = [flat, q]
        else:
            make = K.int4_kernel if scheme == "int4" else K.int8_kernel
            gv = self.add(bb, ("linear", kind, n, width, group, scale_dtype),
                          lambda: make(n, width, group, symmetric=symmetric,
                                       scale_dtype=scale_dtype))
            args = [flat, q, scale, zero]
        y = bb.emit(relax.call_tir(gv, args, relax.TensorType([tokens, n], "float32")))
        return bb.emit(relax.op.reshape(y, [*lead, n]))

    def _embedding(self, node: Any, importer: Any) -> Any:
        from tvm import relax

        from omnic.targets.tvm.kernels import packed_matmul as K

        bb = importer.block_builder
        ids, q, scale, zero, kind, group, width = importer.retrieve_args(node)
        n = int(importer.shape_of(q)[0])
        lead = list(importer.shape_of(ids))
        tokens = _product(lead)
        flat = bb.emit(relax.op.reshape(ids, [tokens]))
        scheme, symmetric = kind.removesuffix("_asym"), not kind.endswith("_asym")
        scale_dtype = str(scale.ty.dtype)
        gv = self.add(bb, ("gather", kind, n, width, group, scale_dtype),
                      lambda: K.gather_kernel(scheme, n, width, group, symmetric=symmetric,
                                              scale_dtype=scale_dtype))
        args = [flat, q] if scheme == "fp16" else [flat, q, scale, zero]
        rows = bb.emit(relax.call_tir(gv, args, relax.TensorType([tokens, width], "float32")))
        return bb.emit(relax.op.reshape(rows, [*lead, width]))

    def _attention(self, node: Any, importer: Any) -> Any:
        from tvm import relax

        from omnic.targets.tvm.kernels.attention import attention_kernel

        bb = importer.block_builder
        q, k, v, k_cache, v_cache, pos, ring, window, scale, softcap = importer.retrieve_args(node)
        _, h, t, d = importer.shape_of(q)
        kv, c = int(importer.shape_of(k)[1]), int(importer.shape_of(k_cache)[2])
        h, d = int(h), int(d)
        key = ("attention", h, kv, d, c, bool(ring), int(window), float(scale), float(softcap))
        gv = self.add(bb, key, lambda: attention_kernel(
            h, kv, d, c, ring=bool(ring), window=int(window) if window > 0 else None,
            scale=float(scale), softcap=float(softcap) if softcap > 0 else None))
        cache_ty = relax.TensorType([1, kv, c, d], "float32")
        out = bb.emit(relax.call_tir_inplace(
            gv, [q, k, v, k_cache, v_cache, pos], [3, 4, -1],
            [cache_ty, cache_ty, relax.TensorType([1, t, h * d], "float32")]))
        return bb.emit(relax.TupleGetItem(out, 2))


    def _short_conv(self, node: Any, importer: Any) -> Any:
        from tvm import relax

        from omnic.targets.tvm.kernels.short_conv import short_conv_kernel

        bb = importer.block_builder
        bx, state, weight = importer.retrieve_args(node)
        _, t, d = importer.shape_of(bx)
        d, k = int(d), int(importer.shape_of(weight)[2])
        gv = self.add(bb, ("short_conv", d, k), lambda: short_conv_kernel(d, k))
        out = bb.emit(relax.call_tir_inplace(
            gv, [bx, state, weight], [1, -1],
            [relax.TensorType([1, d, k - 1], "float32"), relax.TensorType([1, t, d], "float32")]))
        return bb.emit(relax.TupleGetItem(out, 1))

    def _mamba2(self, node: Any, importer: Any) -> Any:
        from omnic.targets.tvm.kernels import mamba2 as K

        xbc, dt, weight, bias, a_log, d, dt_bias, conv_state, ssm_state = (
            importer.retrieve_args(node))
        width = int(importer.shape_of(xbc)[2])
        _, heads, head_dim, d_state = (int(n) for n in importer.shape_of(ssm_state))
        groups = (width - heads * head_dim) // (2 * d_state)
        return self._conv_then_mixer(
            importer, "mamba2", xbc, conv_state, weight, bias,
            ("mamba2_scan", heads, head_dim, d_state, groups),
            lambda: K.scan_kernel(heads, head_dim, d_state, groups),
            [dt, a_log, d, dt_bias, ssm_state], [1, heads, head_dim, d_state], heads * head_dim)

    def _deltanet(self, node: Any, importer: Any) -> Any:
        from omnic.targets.tvm.kernels import deltanet

        qkv, a, b, weight, a_log, dt_bias, conv_state, state = importer.retrieve_args(node)
        width = int(importer.shape_of(qkv)[2])
        _, heads, key_dim, value_dim = (int(n) for n in importer.shape_of(state))
        key_heads = (width - heads * value_dim) // (2 * key_dim)
        return self._conv_then_mixer(
            importer, "deltanet", qkv, conv_state, weight, None,
            ("deltanet_rule", key_heads, heads, key_dim, value_dim),
            lambda: deltanet.rule_kernel(key_heads, heads, key_dim, value_dim),
            [a, b, a_log, dt_bias, state], [1, heads, key_dim, value_dim], heads * value_dim)

    def _conv_then_mixer(self, importer: Any, kind: str, x: Any, conv_state: Any, weight: Any,
                         bias: Any, mixer: tuple, make_mixer: Callable[[], Any],
                         mixer_args: list, state_shape: list[int], out_width: int) -> Any:
        """The output [1, t, out_width] of a layer with a convolution state and a mixer state:
        mamba2.py's convolution kernel (`kind`_conv) in place on conv_state over x [1, t, width]
        (bias None: zeros), then the kernel `mixer` names (made by make_mixer) on (the convolved
        channels, *mixer_args), in place on the last of mixer_args: its state of state_shape."""
        import numpy as np
        from tvm import relax

        from omnic.targets.tvm.kernels import mamba2

        bb = importer.block_builder
        t, width = importer.shape_of(x)[1], int(importer.shape_of(x)[2])
        k = int(importer.shape_of(weight)[2])
        conv = self.add(bb, (f"{kind}_conv", width, k), lambda: mamba2.conv_kernel(width, k))
        if bias is None:
            bias = relax.const(np.zeros(width, dtype="float32"))
        out = bb.emit(relax.call_tir_inplace(
            conv, [x, conv_state, weight, bias], [1, -1],
            [relax.TensorType([1, width, k - 1], "float32"),
             relax.TensorType([1, t, width], "float32")]))
        xc = bb.emit(relax.TupleGetItem(out, 1))
        gv = self.add(bb, mixer, make_mixer)
        out = bb.emit(relax.call_tir_inplace(
            gv, [xc, *mixer_args], [len(mixer_args), -1],
            [relax.TensorType(state_shape, "float32"),
             relax.TensorType([1, t, out_width], "float32")]))
        return bb.emit(relax.TupleGetItem(out, 1))


def _product(dims: list[Any]) -> Any:
    out = dims[0]
    for dim in dims[1:]:
        out = out * dim
    return out


def to_relax(ep: "Any") -> tuple["tvm.IRModule", int, dict[str, int]]:
    """The Relax module of the fast decoder's exported program, weights as trailing inputs.

    Returns:
        The module, the number of user inputs of `main`, and the kernel call counts.
    """
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.torch import from_exported_program

    from omnic.targets.tvm.lowering import quiet_stderr

    kernels = Kernels()
    with quiet_stderr():
        mod = from_exported_program(ep, keep_params_as_input=True,
                                    unwrap_unit_return_tuple=True,  # main returns the logits
                                    custom_convert_map=kernels.convert_map())
    mod, _ = detach_params(mod)
    return mod, int(mod["main"].attrs["num_input"]), kernels.counts
