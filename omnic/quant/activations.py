"""How a runtime's quantized matmul rounds its input activations to int8 (torch-free).

The integer kernels CPU runtimes use for int4 and int8 weights do not multiply float32
activations: they first round each activation row to int8, then take integer dot products.
That rounding is part of what the artifact computes, so the golden check's quantization-exact
reference applies it too (`omnic.golden.activations`), and its conformance limits can stay tight
on a real model, whose hidden states have large outliers. A target reports, per weight
(canonical name), the `ActivationQuant` its kernel uses in `artifact.activation_quant`.

| runtime, weights (kernel)                 | block along K      | scale          | zero point |
|-------------------------------------------|--------------------|----------------|------------|
| llama.cpp, Q4_0/Q4_1/Q5_x/Q8_0 (Q8_0 acts) | 32                 | max|x|/127 fp16 | none      |
| llama.cpp, K-quants (Q8_K activations)     | 256                | max|x|/127     | none       |
| onnxruntime MatMulNBits, accuracy_level 4  | the weight's block | max|x|/127     | none       |
| XNNPACK qd8 (ExecuTorch 8da4w / 8da8w)     | whole row          | (hi-lo)/255 *  | yes        |

(*) hi = max(x, 0), lo = min(x, 0) over the row (one token).

  ref: https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-quants.c
       (quantize_row_q8_0, quantize_row_q8_K)
  ref: https://github.com/microsoft/onnxruntime/blob/main/onnxruntime/core/mlas/lib/sqnbitgemm_kernel_avx2.cpp
       (QuantizeARow_CompInt8)
  ref: https://github.com/google/XNNPACK/blob/master/src/operators/unary-elementwise-nc.c
       (xnn_f32_qd8_asymmetric_quantization_params)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActivationQuant:
    """One kernel's int8 rounding of a matmul input.

    Args:
        block: consecutive input elements (along K) sharing one scale; None: the whole row.
        symmetric: scale max|x| / 127 and no zero point; else the row's range [min(x,0),
            max(x,0)] over 255 levels with a zero point (XNNPACK's qd8).
        scale_dtype: "float16" when the kernel stores the scale in half precision (llama.cpp's
            Q8_0 blocks) and multiplies by that rounded value.
        order: the input elements in the order the runtime holds them, when its file stores
            the weight's columns permuted (llama.cpp's qwen35 out_proj: value heads tiled):
            blocks are taken over x[..., order]; () keeps omnic's order.
    """

    block: int | None
    symmetric: bool = True
    scale_dtype: str = "float32"
    order: tuple[int, ...] = ()

    def describe(self) -> str:
        where = f"blocks of {self.block}" if self.block else "per token"
        kind = "symmetric" if self.symmetric else "asymmetric"
        half = ", fp16 scales" if self.scale_dtype == "float16" else ""
        moved = ", columns in the file's order" if self.order else ""
        return f"int8 {kind} {where}{half}{moved}"


LLAMA_CPP_Q8_0 = ActivationQuant(block=32, scale_dtype="float16")
LLAMA_CPP_Q8_K = ActivationQuant(block=256)
XNNPACK_QD8 = ActivationQuant(block=None, symmetric=False)


def mlas_int8(block: int) -> ActivationQuant:
    """onnxruntime's MatMulNBits at accuracy_level 4: each block of the weight's block size."""
    return ActivationQuant(block=block)


# llama.cpp's weight types, by the activation type its CPU vec_dot pairs them with
# (ggml-cpu.c type_traits_cpu[...].vec_dot_type).
_LLAMA_CPP_Q8_0_TYPES = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"}
_LLAMA_CPP_Q8_K_TYPES = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"}


def llama_cpp(ggml_type: str) -> ActivationQuant | None:
    """What llama.cpp's CPU backend does to the activations a `ggml_type` weight multiplies;
    None for float types (F32 multiplies float32 activations; F16 weights round them to fp16,
    which the fp16 tolerance row allows for)."""
    if ggml_type in _LLAMA_CPP_Q8_0_TYPES:
        return LLAMA_CPP_Q8_0
    if ggml_type in _LLAMA_CPP_Q8_K_TYPES:
        return LLAMA_CPP_Q8_K
    return None
