"""llama.cpp's GGUF files as a source: `omnic import model.gguf -o spec.yaml` and
`weights: {source: gguf, path: model.gguf}`.

A GGUF holds everything a spec needs: the architecture and hyper-parameters (`{arch}.*` keys),
the vocabulary (`tokenizer.ggml.*`) and the weights, often quantized. This module reads them with
gguf-py's `GGUFReader` (a memory map; numpy only) and undoes what llama.cpp's converter did:
- names: `blk.{i}.attn_q.weight` -> `layers.{i}.attn.q.weight` (omnic.formats.gguf_arch);
- layout: Q/K rows of "normal"-RoPE architectures are un-interleaved back to rotate-half;
- storage: every tensor dequantized with gguf-py's own `dequantize` (exact: the float32 values
  llama.cpp's kernels see for that block format);
- vocabulary: a byte-level BPE `tokenizer.json` equivalent to llama.cpp's tokenizer (the
  pre-tokenizer named by `tokenizer.ggml.pre`), written beside the spec.

Architectures: llama (Llama, Mistral, SmolLM...), qwen2, qwen3 and qwen3moe, gemma3, smollm3,
phi3 (fused tensors split, partial rotary, LongRoPE), olmo2, granite, lfm2 (short-convolution
layers where head_count_kv is 0), granitehybrid (Granite 4.0-H: Mamba-2 layers where
head_count_kv is 0, A_log = log(-ssm_a)) and qwen35 (Qwen3.5: Gated DeltaNet layers where
attention.recurrent_layers is true, value heads back from the file's tiled order, norms stored
as 1 + w), each read with the keys
and layouts the GGUF target writes (omnic.formats.gguf_families / gguf_hparams). Anything else is
refused with UnsupportedModel, naming what is missing. The file's own quantization
(`source_quantization`) is recorded in the manifest.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnic.formats import gguf_arch
from omnic.formats.gguf_vocab import GgufVocab
from omnic.importers.hf import UnsupportedModel, compact_pattern, relative_path

if TYPE_CHECKING:
    import torch

    from omnic.spec import Model
    from omnic.spec.inventory import TensorInfo

_log = logging.getLogger(__name__)
ARCHITECTURES = ("llama", "qwen2", "qwen3", "qwen3moe", "gemma3", "smollm3", "phi3", "olmo2",
                 "granite", "lfm2", "granitehybrid", "qwen35")
_MISSING = object()


def open_gguf(path: Path | str) -> Any:
    """gguf-py's reader over `path` (memory-mapped).

    Raises:
        UnsupportedModel: not a GGUF file, or gguf-py is not installed.
    """
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UnsupportedModel("reading GGUF needs gguf-py: install omnic[gguf]") from None
    path = Path(path)
    if not path.is_file():
        raise UnsupportedModel(f"{path}: no such file")
    try:
        return GGUFReader(path)
    except (ValueError, OSError) as err:
        raise UnsupportedModel(f"{path}: not a GGUF file ({err})") from None


def field(reader: Any, key: str, default: Any = _MISSING) -> Any:
    """The value of metadata key `key` (a list for arrays), or `default` when it is absent."""
    f = reader.fields.get(key)
    if f is None:
        if default is _MISSING:
            raise UnsupportedModel(f"{reader.data.filename}: no `{key}` key")
        return default
    return f.contents()


def arch_plan(arch: str) -> "gguf_arch.ArchPlan":
    """How a file of architecture `arch` was written (the inverse is read with it)."""
    return gguf_arch.file_layout(arch)


def _real(value: Any) -> float:
    """A float32 key or tensor value as its shortest float32 spelling (1e-05, not 9.99e-06)."""
    import numpy as np

    return float(str(np.float32(value)))


def model_from_gguf(reader: Any) -> tuple[str, dict[str, Any]]:
    """(architecture, the spec's `model:` block) of a GGUF file's metadata and tensor names."""
    arch = field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedModel(f"GGUF architecture {arch!r} is not supported (supported: "
                               f"{', '.join(ARCHITECTURES)})")
    names = {t.name for t in reader.tensors}

    def key(name: str, default: Any = _MISSING) -> Any:
        return field(reader, f"{arch}.{name}", default)

    if "rope_freqs.weight" in names:
        raise UnsupportedModel("rope_freqs (Llama 3.1 frequency scaling) is not imported from "
                               "GGUF yet: import the Hugging Face checkpoint instead")
    if key("expert_count", 0) and arch != "qwen3moe":
        raise UnsupportedModel(f"{arch}: mixture-of-experts GGUF files are not imported yet")
    scaling = key("rope.scaling.type", "none")
    if scaling not in ("none", "linear") and not (
            scaling == "longrope" and "rope_factors_long.weight" in names):
        raise UnsupportedModel(f"{arch}: rope scaling {scaling!r} is not imported from GGUF yet")
    d, heads = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", d // heads))
    tokens = field(reader, "tokenizer.ggml.tokens", [])
    rope: dict[str, Any] = {"theta": _real(key("rope.freq_base", 10000.0))}
    model: dict[str, Any] = {
        "vocab_size": int(key("vocab_size", len(tokens))),
        "d_model": d,
        "n_layers": int(key("block_count")),
        "n_heads": heads,
        "n_kv_heads": _kv_heads(key("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "ffn": {"kind": "swiglu", "hidden": int(key("feed_forward_length"))},
        "norm": {"kind": "rmsnorm", "eps": _real(key("attention.layer_norm_rms_epsilon"))},
        "rope": rope,
        "context_length": int(key("context_length")),
        "tie_embeddings": "output.weight" not in names,
    }
    if scaling == "linear" and key("rope.scaling.factor", None) is not None:  # else factor 1
        rope["scaling"] = {"kind": "linear", "factor": _real(key("rope.scaling.factor"))}
    dims = int(key("rope.dimension_count", head_dim))
    if dims != head_dim:
        rope["rotary_dim"] = dims
    if "rope_factors_long.weight" in names:
        rope["scaling"] = _longrope(reader, key, model["context_length"])
    if "blk.0.attn_q.bias" in names:
        model["qkv_bias"] = True
    if "blk.0.attn_q_norm.weight" in names:
        model["qk_norm"] = True
    if arch in _FAMILY:
        _FAMILY[arch](model, key)
    if arch == "granitehybrid":  # the bias is a tensor llama.cpp's loader does not require
        kv = key("attention.head_count_kv")
        first = next(i for i, n in enumerate(kv) if int(n) == 0)
        model["mamba2"]["conv_bias"] = f"blk.{first}.ssm_conv1d.bias" in names
    return arch, model


def _kv_heads(value: Any) -> int:
    """KV heads from `head_count_kv`: one number, or one per layer (LFM2: 0 on the layers with
    no attention), which must then agree on the others."""
    if not isinstance(value, list):
        return int(value)
    heads = {int(v) for v in value} - {0}
    if len(heads) != 1:
        raise UnsupportedModel(f"head_count_kv differs across layers ({sorted(heads)}); omnic's "
                               "attention layers share one count")
    return heads.pop()


def _longrope(reader: Any, key: Any, context_length: int) -> dict[str, Any]:
    """LongRoPE from phi3's factor tensors and keys (conversion/phi.py): the factor is the
    context over the original, as the converter computes it; the cos/sin scale is kept when it
    differs from that factor's."""
    from omnic.formats.gguf_hparams import longrope_attention_factor
    from omnic.spec.rope import LongRopeScaling

    tensors = {t.name: t for t in reader.tensors}
    factors = {kind: [_real(v) for v in tensors[f"rope_factors_{kind}.weight"].data.tolist()]
               for kind in ("short", "long")}
    original = int(key("rope.scaling.original_context_length"))
    out = {"kind": "longrope", "short_factor": factors["short"], "long_factor": factors["long"],
           "factor": context_length / original, "original_context_length": original}
    attn = _real(key("rope.scaling.attn_factor", 1.0))
    if _real(longrope_attention_factor(LongRopeScaling.model_validate(out))) != attn:
        out["attention_factor"] = attn
    return out


def _kinds_text(kinds: list[str]) -> str | None:
    """A per-layer kind list as the shortest `layer_pattern` ("5 sliding : 1 full ..."); None
    when every layer is full."""
    n = len(kinds)
    if set(kinds) == {"full"}:
        return None
    cycle = next(c for c in range(1, n + 1) if all(kinds[i] == kinds[i % c] for i in range(n)))
    groups: list[list[Any]] = []
    for kind in kinds[:cycle]:
        if groups and groups[-1][1] == kind:
            groups[-1][0] += 1
        else:
            groups.append([1, kind])
    text = " : ".join(f"{count} {kind}" for count, kind in groups)
    return text + (" ..." if n % cycle else "")


def _sliding(model: dict[str, Any], key: Any, default_period: int) -> None:
    """The sliding window and its layers (`sliding_window_pattern`: an array, or llama.cpp's
    default period: all but every period-th layer slide, src/llama-hparams.cpp set_swa_pattern)."""
    window = int(key("attention.sliding_window", 0))
    if window <= 0:
        return
    n = model["n_layers"]
    pattern = key("attention.sliding_window_pattern", None)
    if isinstance(pattern, list):
        slides = [bool(p) for p in pattern][:n]
    else:
        period = int(pattern) if pattern is not None else default_period
        slides = [period == 0 or i % period < period - 1 for i in range(n)]
    model["sliding_window"] = {"size": window}
    text = _kinds_text(["sliding" if s else "full" for s in slides])
    if text is not None and set(slides) != {True}:
        model["layer_pattern"] = text


def _local_rope(model: dict[str, Any], theta: float) -> None:
    """`rope.sliding` (unscaled, base `theta`) when it differs from the global RoPE."""
    rope = model["rope"]
    if "sliding_window" in model and (theta != rope["theta"] or rope.get("scaling")):
        rope["sliding"] = {"theta": theta, "scaling": None}


def _gemma3(model: dict[str, Any], key: Any) -> None:
    # ref: src/models/gemma3.cpp (the layout: omnic.formats.gguf_families)
    from omnic.formats.gguf_families import GEMMA3_SWA_PERIOD

    model["ffn"]["kind"] = "geglu"
    model["norm"]["unit_offset"] = True
    model.update(scale_embeddings=True, post_norms=True)
    if model["n_layers"] == 62:  # the 27B shapes: d_model / n_heads
        model["attn_scale"] = (model["d_model"] / model["n_heads"]) ** -0.5
    cap = key("final_logit_softcapping", None)
    if cap:
        model["final_softcap"] = _real(cap)
    _sliding(model, key, GEMMA3_SWA_PERIOD)
    _local_rope(model, _real(key("rope.freq_base_swa", 10000.0)))


def _olmo2(model: dict[str, Any], key: Any) -> None:
    # ref: src/models/olmo2.cpp - post-norms only, q/k norms over all heads; sliding layers
    # (OLMo 3: default 3 of every 4) use the global base, unscaled
    model.update(pre_norms=False, post_norms=True, qk_norm_width="full")
    _sliding(model, key, 4)
    _local_rope(model, model["rope"]["theta"])


def _smollm3(model: dict[str, Any], key: Any) -> None:
    from omnic.formats.gguf_families import SMOLLM3_NOPE_STEP

    kinds = ["nope" if (i + 1) % SMOLLM3_NOPE_STEP == 0 else "full"
             for i in range(model["n_layers"])]
    text = _kinds_text(kinds)
    if text is not None:
        model["layer_pattern"] = text


def _granite(model: dict[str, Any], key: Any) -> None:
    # ref: src/models/granite.cpp - neutral scales (1, or absent) stay null; a false
    # rope.scaling.finetuned switches RoPE off on every layer
    if not bool(key("rope.scaling.finetuned", True)):
        raise UnsupportedModel("granite: rope.scaling.finetuned = false (no RoPE on any layer) "
                               "is not imported")
    _granite_scales(model, key)


def _granite_scales(model: dict[str, Any], key: Any) -> None:
    """Granite's scales; 0 or absent is llama.cpp's neutral value, and so is 1 for all but the
    attention scale (whose neutral value is 1/sqrt(head_dim): a 1 there is a real scale)."""
    for gguf_key, spec_field in (("embedding_scale", "embedding_multiplier"),
                                 ("residual_scale", "residual_multiplier"),
                                 ("logit_scale", "logits_scaling"),
                                 ("attention.scale", "attn_scale")):
        value = key(gguf_key, None)
        if value and (_real(value) != 1.0 or spec_field == "attn_scale"):
            model[spec_field] = _real(value)


def _qwen3moe(model: dict[str, Any], key: Any) -> None:
    model["ffn"]["hidden"] = int(key("expert_feed_forward_length", model["ffn"]["hidden"]))
    model["moe"] = {"experts": int(key("expert_count")), "top_k": int(key("expert_used_count")),
                    "normalize_top_k": True}


def _phi3(model: dict[str, Any], key: Any) -> None:
    # ref: src/models/phi3.cpp - llama.cpp switches a sliding window off: the model it runs has
    # none (the fused tensors are split by the layout, omnic.formats.gguf_arch.FUSED)
    if int(key("attention.sliding_window", 0)) > 0:
        _log.info("gguf: phi3 sliding_window ignored, as llama.cpp ignores it")


def _lfm2(model: dict[str, Any], key: Any) -> None:
    # ref: src/models/lfm2.cpp: a layer with no KV heads is a short convolution
    model["layer_pattern"] = compact_pattern(["short_conv" if int(n) == 0 else "full"
                                              for n in key("attention.head_count_kv")])
    model["short_conv"] = {"kernel": int(key("shortconv.l_cache"))}
    model["qk_norm"] = True  # per head on every attention layer (blk.0 is a convolution)


def _granitehybrid(model: dict[str, Any], key: Any) -> None:
    # ref: src/models/granite-hybrid.cpp - a layer with no KV heads is a Mamba-2 layer; RoPE on
    # every attention layer or on none (rope.scaling.finetuned, true when absent)
    attention = "full" if bool(key("rope.scaling.finetuned", True)) else "nope"
    kv = key("attention.head_count_kv")
    if not isinstance(kv, list) or 0 not in [int(n) for n in kv]:
        raise UnsupportedModel("granitehybrid: no layer has head_count_kv 0 (no Mamba-2 layer); "
                               "llama.cpp's converter writes such models as granite")
    model["layer_pattern"] = compact_pattern(["mamba2" if int(n) == 0 else attention
                                              for n in kv])
    heads, inner = int(key("ssm.time_step_rank")), int(key("ssm.inner_size"))
    model["mamba2"] = {"heads": heads, "head_dim": inner // heads,
                       "d_state": int(key("ssm.state_size")),
                       "groups": int(key("ssm.group_count")),
                       "kernel": int(key("ssm.conv_kernel"))}
    _granite_scales(model, key)


def _qwen35(model: dict[str, Any], key: Any) -> None:
    # ref: src/models/qwen35.cpp - recurrent_layers (else every full_attention_interval-th layer
    # attends), head_k_dim = head_v_dim = ssm.state_size; attention with the output gate and
    # per-head q/k norms; every norm but ssm_norm stored as 1 + w (conversion/qwen.py)
    from omnic.formats.gguf_hparams import imrope_sections

    mtp = int(key("nextn_predict_layers", 0))  # the converter's default keeps Qwen3.5's MTP
    if mtp:  # block after the trunk: a draft head llama.cpp does not run in the main pass
        model["n_layers"] -= mtp
        _log.info(f"gguf: qwen35's {mtp} multi-token-prediction layer(s) left out")
    n = model["n_layers"]
    recurrent = key("attention.recurrent_layers", None)
    if recurrent is None:
        every = int(key("full_attention_interval", 4))
        recurrent = [(i + 1) % every != 0 for i in range(n)]
    model["layer_pattern"] = compact_pattern(["gated_deltanet" if r else "full"
                                              for r in list(recurrent)[:n]])
    value_heads = int(key("ssm.time_step_rank"))
    model["gated_deltanet"] = {"key_heads": int(key("ssm.group_count")),
                               "value_heads": value_heads, "key_dim": int(key("ssm.state_size")),
                               "value_dim": int(key("ssm.inner_size")) // value_heads,
                               "kernel": int(key("ssm.conv_kernel"))}
    model.update(qk_norm=True, attn_output_gate=True)
    model["norm"]["unit_offset"] = True
    dims = int(key("rope.dimension_count", model["head_dim"]))
    sections = [int(s) for s in key("rope.dimension_sections")]
    if not 0 < sum(sections) <= model["head_dim"] or any(
            _imrope_section(i % sum(sections), sections) == 3 for i in range(dims // 2)):
        raise UnsupportedModel(f"qwen35: rope.dimension_sections {sections} leave rotated dims "
                               "at position 0 for text (the 4th section) or exceed head_dim; "
                               f"omnic imports text M-RoPE only (e.g. {imrope_sections(dims)})")


def _imrope_section(sector: int, sections: list[int]) -> int:
    """The M-RoPE section (0-2: text positions, 3: the extra one) of a sector under interleaved
    M-RoPE. ref: ggml/src/ggml-cpu/ops.cpp ggml_mrope_cache_init (is_imrope)"""
    for k in (1, 2, 0):
        if sector % 3 == k and sector < 3 * sections[k]:
            return k
    return 3


_FAMILY = {"lfm2": _lfm2, "granitehybrid": _granitehybrid, "qwen35": _qwen35, "gemma3": _gemma3,
           "olmo2": _olmo2, "smollm3": _smollm3, "granite": _granite, "qwen3moe": _qwen3moe,
           "phi3": _phi3}


def gguf_weights(path: Path | str, inventory: list["TensorInfo"], model: "Model"
                 ) -> dict[str, "torch.Tensor"]:
    """Every decoder tensor of the GGUF file at `path`, dequantized to float32, in omnic's names
    and layout, checked against the inventory."""
    import torch
    from gguf import GGMLQuantizationType, dequantize

    from omnic.importers.checkpoint import WeightError, check_weights

    reader = open_gguf(path)
    plan = arch_plan(field(reader, "general.architecture"))
    stored = {t.name: t for t in reader.tensors}
    out: dict[str, torch.Tensor] = {}
    for t in gguf_arch.tensor_plan(model, plan):
        rt = stored.get(t.name)
        if rt is None:
            raise WeightError(f"{path}: no tensor {t.name} (omnic's {', '.join(t.sources)})")
        values = dequantize(rt.data, rt.tensor_type)
        fresh = rt.tensor_type != GGMLQuantizationType.F32  # F32 values are the file's pages
        for name, array in gguf_arch.from_gguf(t, values, model, plan, fresh=fresh).items():
            out[name] = torch.from_numpy(array)
    check_weights(out, inventory, str(path))
    return out


def source_quantization(path: Path | str) -> dict[str, Any]:
    """How the file stores its weights: `general.file_type` and the count of each tensor type."""
    from gguf import LlamaFileType

    reader = open_gguf(path)
    ftype = field(reader, "general.file_type", None)
    name = LlamaFileType(ftype).name.removeprefix("MOSTLY_") if ftype is not None else None
    counts = Counter(t.tensor_type.name for t in reader.tensors)
    return {"format": "gguf", "file_type": name, "tensor_types": dict(sorted(counts.items()))}


def read_vocab(reader: Any) -> GgufVocab:
    """The `tokenizer.ggml.*` keys of a GGUF file."""
    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise UnsupportedModel(f"tokenizer model {model!r}: only byte-level BPE ('gpt2') GGUF "
                               "vocabularies are imported (SentencePiece 'llama' is not yet)")

    def ident(name: str) -> int | None:
        value = field(reader, f"tokenizer.ggml.{name}_token_id", None)
        return int(value) if value is not None else None

    template = field(reader, "tokenizer.chat_template", None)
    return GgufVocab(
        model="gpt2", tokens=list(field(reader, "tokenizer.ggml.tokens")),
        types=[int(t) for t in field(reader, "tokenizer.ggml.token_type")], scores=None,
        merges=list(field(reader, "tokenizer.ggml.merges", [])),
        pre=field(reader, "tokenizer.ggml.pre", "default"), bos_id=ident("bos"),
        eos_id=ident("eos"), pad_id=ident("padding"), unk_id=ident("unknown"),
        add_bos=bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        add_eos=bool(field(reader, "tokenizer.ggml.add_eos_token", False)),
        chat_template=template if isinstance(template, str) else None,
    )


def import_gguf(path: Path | str, out: Path | str, context_length: int | None = None,
                name: str | None = None) -> tuple[dict[str, Any], str]:
    """The spec data for the GGUF file at `path`, whose tokenizer is written beside `out`, and
    a description of what was read (for the spec's header).

    The spec itself is written by the caller (`omnic import` picks its device, targets and
    quantization). The tokenizer goes to `<out stem>.tokenizer/` (tokenizer.json and
    tokenizer_config.json, which every runtime reads).

    Raises:
        UnsupportedModel: not a GGUF file, or an architecture, feature or vocabulary omnic cannot
            express.
    """
    from omnic.formats.gguf_vocab import TokenizerError, save_tokenizer

    path, out = Path(path), Path(out)
    reader = open_gguf(path)
    arch, model = model_from_gguf(reader)
    if context_length is not None:
        model["context_length"] = int(context_length)
    tok_dir = out.parent / f"{out.stem}.tokenizer"
    try:  # the tokenizer is converted whole before anything is written
        save_tokenizer(read_vocab(reader), tok_dir)
    except TokenizerError as err:
        raise UnsupportedModel(f"{path}: {err}") from None
    base = name or field(reader, "general.name", None) or path.stem
    spec_name = re.sub(r"[^A-Za-z0-9._-]", "-", str(base)).strip("._-") or "imported"
    return {
        "omnic": 1,
        "name": spec_name[:64],
        "model": model,
        "weights": {"source": "gguf", "path": relative_path(path, out.parent)},
        "tokenizer": {"kind": "huggingface", "path": relative_path(tok_dir, out.parent)},
    }, f"{path.resolve()} ({arch}, {len(reader.tensors)} tensors)"
