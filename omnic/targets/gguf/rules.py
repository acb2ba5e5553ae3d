"""The GGUF target's pre-flight rules, on the shared table of `omnic.targets.rules` (torch-free).

`omnic validate` imports this module for specs that enable the GGUF target. What llama.cpp cannot
store at all is refused by `GgufTarget.check` (`quant.plan_types`, `arch.plan_arch`); the rules
here are what a user should know about the artifact it does build.
"""

from __future__ import annotations

from omnic.constants import Schemes, Targets
from omnic.formats.gguf_families import LLAMA_CPP_CTX_PAD
from omnic.targets.rules import Context, Finding, first, register

MAX_UBATCH = 512  # the runner's n_ubatch: min(n_ctx, 512)


def kv_cells(context: int, window: int | None) -> int:
    """KV cells llama.cpp allocates for one layer at the runner's settings: pad256(context) for a
    global layer; for a sliding one (swa_full off) pad256(min(pad256(context), window +
    n_ubatch)). ref: src/llama-kv-cache-iswa.cpp (size_swa)"""
    def pad(n: int) -> int:
        return -(-n // LLAMA_CPP_CTX_PAD) * LLAMA_CPP_CTX_PAD

    full = pad(context)
    if window is None or window >= context:
        return full
    return pad(min(full, window + min(context, MAX_UBATCH)))


@register(Targets.GGUF, "gguf.block_32",
          "ggml quantized rows are whole blocks of 32 (Q4_0/Q4_1/Q8_0)",
          "https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-common.h")
def _blocks(ctx: Context):
    odd = [(t, s) for t, s in ctx.using(Schemes.INT4) + ctx.using(Schemes.INT8) if t.shape[-1] % 32]
    if odd:
        yield Finding(("targets", "gguf"),
                      f"input width not a multiple of 32 ({first(odd)}): llama.cpp stores these "
                      "matrices unquantized", "warning")
