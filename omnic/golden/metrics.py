"""Comparison metrics between a runtime's logits and a reference's (numpy, torch-free).

All functions take logits shaped [positions, vocab] (one golden case) and work in float64.
The metric names are manifest keys (they outlive a release) and the names `--fail-on` rules use.
"""

from __future__ import annotations

import numpy as np

# Conformance against the quantization-exact reference (tight):
MAX_ABS = "max_abs"  # max |runtime - reference| over every logit of every position
NMSE = "nmse"  # sum (runtime - ref)^2 / sum ref^2 per case, worst case (test-backend-ops' NMSE)
COSINE = "cosine"  # cosine similarity per position, worst position
TOP1 = "top1"  # fraction of positions whose argmax agrees with the reference
GREEDY_MATCH = "greedy_match"  # greedy tokens equal to the reference's, fraction of decode steps
# Quality against the fp32 reference (what quantization costs):
KLD = "kld"  # mean over positions of KL(p_fp32 || p_runtime), nats (llama-perplexity's KLD)
TOP1_FP32 = "top1_fp32"  # argmax agreement with fp32 ("same top p" of llama-perplexity)
GREEDY_MATCH_FP32 = "greedy_match_fp32"
# The reference itself against fp32 (how much of kld is the quantization, not the runtime):
REF_KLD = "ref_kld"
# Text golden prompts only (omnic.golden.inputs): perplexity of the prompts' next tokens, the
# runtime's and the fp32 model's
PERPLEXITY = "perplexity"
PERPLEXITY_FP32 = "perplexity_fp32"

# Quantized artifacts: the KLD of the field's reference quantization of the same recipe
# (omnic.golden.field), the yardstick of the kld budget
FIELD_KLD = "field_kld"
FIELD_TOP1 = "field_top1_fp32"  # its top-1 agreement with fp32, the yardstick of a lowered floor
# Artifacts whose kernels round activations to int8: the exact reference's float64 twin against
# the reference itself (omnic.golden.noise), what the conformance limits are widened to cover
NOISE_MAX_ABS = "ref_noise_max_abs"
NOISE_NMSE = "ref_noise_nmse"
NOISE_COSINE = "ref_noise_cosine"
NOISE_TOP1 = "ref_noise_top1"

ALL = (MAX_ABS, NMSE, COSINE, TOP1, GREEDY_MATCH, KLD, TOP1_FP32, GREEDY_MATCH_FP32, REF_KLD,
       PERPLEXITY, PERPLEXITY_FP32, FIELD_KLD, FIELD_TOP1, NOISE_MAX_ABS, NOISE_NMSE, NOISE_COSINE,
       NOISE_TOP1)
# Whether a bigger value is better: diff reports regressions in the right direction.
HIGHER_IS_BETTER = {COSINE: True, TOP1: True, GREEDY_MATCH: True, TOP1_FP32: True,
                    GREEDY_MATCH_FP32: True, NOISE_COSINE: True, NOISE_TOP1: True,
                    FIELD_TOP1: True}


def abs_err_rows(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """max |a - ref| per position."""
    return np.abs(a.astype(np.float64) - ref.astype(np.float64)).max(axis=-1)


def nmse(a: np.ndarray, ref: np.ndarray) -> float:
    """Normalised mean squared error: sum (a - ref)^2 / sum ref^2.

    ref: https://github.com/ggml-org/llama.cpp/blob/master/tests/test-backend-ops.cpp (nmse)
    """
    a64, r64 = a.astype(np.float64), ref.astype(np.float64)
    den = float((r64 * r64).sum())
    num = float(((a64 - r64) ** 2).sum())
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def cosine_rows(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Cosine similarity per position (1.0 for two zero rows)."""
    a64, r64 = a.astype(np.float64), ref.astype(np.float64)
    dot = (a64 * r64).sum(axis=-1)
    na, nr = np.linalg.norm(a64, axis=-1), np.linalg.norm(r64, axis=-1)
    den = na * nr
    return np.where(den > 0, dot / np.where(den > 0, den, 1.0), np.where(na + nr == 0, 1.0, 0.0))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    m = x64.max(axis=-1, keepdims=True)
    return x64 - m - np.log(np.exp(x64 - m).sum(axis=-1, keepdims=True))


def kld_rows(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(p || q) per position in nats, p the reference (as llama-perplexity: base || quant)."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return np.maximum((np.exp(lp) * (lp - lq)).sum(axis=-1), 0.0)


def nll_rows(logits: np.ndarray, next_ids: np.ndarray) -> np.ndarray:
    """-log p(next token) per position, nats: logits [positions, vocab], next_ids [positions]."""
    lp = log_softmax(logits)
    return -lp[np.arange(len(next_ids)), np.asarray(next_ids, dtype=np.int64)]


def top1_rows(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Whether the argmax agrees, per position (ties break to the lowest id, as np.argmax)."""
    return a.argmax(axis=-1) == ref.argmax(axis=-1)


def prefix_match(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two token sequences."""
    n = min(len(a), len(b))
    diff = np.nonzero(np.asarray(a[:n]) != np.asarray(b[:n]))[0]
    return int(diff[0]) if len(diff) else n
