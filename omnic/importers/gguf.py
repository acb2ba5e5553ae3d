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

Architectures: llama (Llama, Mistral, SmolLM...), qwen2 and qwen3, dense. Anything else is refused
with UnsupportedModel, naming what is missing. The file's own quantization (`source_quantization`)
is recorded in the manifest.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnic.formats import gguf_arch
from omnic.formats.gguf_vocab import GgufVocab
from omnic.importers.hf import UnsupportedModel, relative_path

if TYPE_CHECKING:
    import torch

    from omnic.spec import Model
    from omnic.spec.inventory import TensorInfo

ARCHITECTURES = ("llama", "qwen2", "qwen3")
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
    return gguf_arch.ArchPlan(arch, arch in gguf_arch.NORM_ROPE_ARCHS, 0.0, None)


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
    if key("expert_count", 0):
        raise UnsupportedModel(f"{arch}: mixture-of-experts GGUF files are not imported yet")
    scaling = key("rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise UnsupportedModel(f"{arch}: rope scaling {scaling!r} is not imported from GGUF yet")
    def real(value: Any) -> float:  # a float32 key, as its shortest float32 spelling (1e-05)
        import numpy as np

        return float(str(np.float32(value)))

    d, heads = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", d // heads))
    tokens = field(reader, "tokenizer.ggml.tokens", [])
    model: dict[str, Any] = {
        "vocab_size": int(key("vocab_size", len(tokens))),
        "d_model": d,
        "n_layers": int(key("block_count")),
        "n_heads": heads,
        "n_kv_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "ffn": {"kind": "swiglu", "hidden": int(key("feed_forward_length"))},
        "norm": {"kind": "rmsnorm", "eps": real(key("attention.layer_norm_rms_epsilon"))},
        "rope": {"theta": real(key("rope.freq_base", 10000.0))},
        "context_length": int(key("context_length")),
        "tie_embeddings": "output.weight" not in names,
    }
    if scaling == "linear":
        model["rope"]["scaling"] = {"kind": "linear", "factor": real(key("rope.scaling.factor"))}
    if "blk.0.attn_q.bias" in names:
        model["qkv_bias"] = True
    if "blk.0.attn_q_norm.weight" in names:
        model["qk_norm"] = True
    return arch, model


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
