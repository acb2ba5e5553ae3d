"""Streaming GGUF writer and the read-back of what was stored.

Memory: gguf-py's `GGUFWriter.add_tensor` keeps every array until `write_tensors_to_file`, i.e. a
second copy of the model. Instead the writer is used in its three-phase form (the same calls
gguf-py's `write_tensors_to_file` makes, without the buffering): every tensor's name, shape,
type and byte count are declared first (`add_tensor_info`, computed from shapes alone), then the
header, metadata and tensor table are written, then each tensor is produced, quantized and
appended with `write_tensor_data` one at a time and dropped. At most one tensor (a stacked
expert tensor for MoE) exists beside the model's own float32 weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from omnic.runtime import pages
from omnic.constants import GgufKeys
from omnic.formats.gguf_arch import (
    ArchPlan, GgufTensor, extra_tensors, from_gguf, to_gguf, write_hparams,
)
from omnic.quant.ggml import dequantize, quantize
from omnic.targets.gguf.quant import FileType, stored_nbytes
from omnic.formats.gguf_vocab import GgufVocab, write_vocab

if TYPE_CHECKING:
    import numpy as np

    from omnic.spec import ResolvedSpec

def embedded_spec(spec: "ResolvedSpec", spec_dir: Path, read: bool = True) -> dict[str, Any]:
    """The spec as it reaches this file (`omnic.spec`): the resolved spec with `targets` cut to
    the gguf target's options, and each file it names (weights, tokenizer) as the sha256 of its
    bytes (omnic.spec.file_digests), not its path. Another target's options, or moving a
    checkpoint, change no byte of the GGUF (the build cache relies on it). read=False: the same
    length without reading the files (the byte model, omnic.targets.footprint)."""
    from omnic.spec.file_digests import with_file_digests

    data = with_file_digests(spec.model_dump(mode="json"), spec_dir, read=read)
    data["targets"] = {"gguf": (data.get("targets") or {}).get("gguf")}
    return data


def spec_digest(spec: "ResolvedSpec", spec_dir: Path) -> tuple[str, str]:
    """(canonical JSON, sha256) of `embedded_spec`: `omnic.spec` and `omnic.spec_sha256`."""
    from omnic.digest import canonical_json, spec_sha256

    data = embedded_spec(spec, spec_dir)
    return canonical_json(data), spec_sha256(data)


# llama.cpp keys tokenizer rules on general.name: a name containing "phi3"/"phi-3" makes it look up
# these tokens with unordered_map::at (load fails if one is missing), "modern-bert" warns without
# [MASK]. ref: https://github.com/ggml-org/llama.cpp/blob/master/src/llama-vocab.cpp (load, "set
# attributes by model/tokenizer/architecture name")
_NAME_RULES = {"phi-3": ("</s>", "<unk>", "<s>", "<|endoftext|>"),
               "phi3": ("</s>", "<unk>", "<s>", "<|endoftext|>"),
               "modern-bert": ("[MASK]",)}


def general_name(name: str, tokens: list[str]) -> str:
    """`general.name`: the spec's name, unless it would trigger one of llama.cpp's name-keyed
    vocabulary rules whose tokens this vocabulary lacks (then the trigger is broken with '_')."""
    have = set(tokens)
    out = name
    for trigger, needed in _NAME_RULES.items():
        if trigger in out.lower() and not all(t in have for t in needed):
            i = out.lower().index(trigger)
            seg = out[i:i + len(trigger)]
            seg = seg.replace("-", "_") if "-" in seg else seg[:-1] + "_" + seg[-1]
            out = out[:i] + seg + out[i + len(trigger):]
    return out


def write_gguf(
    path: Path,
    spec: "ResolvedSpec",
    plan: ArchPlan,
    tensors: list[GgufTensor],
    types: dict[str, str],
    file_type: FileType,
    vocab: GgufVocab,
    fetch: Callable[[str], "np.ndarray"],
    spec_dir: Path,
) -> int:
    """Write one GGUF file, tensor by tensor.

    Args:
        types: GGUF tensor name -> ggml type name for every tensor of `tensors`.
        file_type: written as general.file_type (llama.cpp's quantizer rewrites it for K-quants).
        fetch: omnic tensor name -> float32 array (read only; views of the model are fine).
        spec_dir: the spec's folder (the files it names are embedded by content: spec_digest).

    Returns:
        bytes of tensor data written.
    """
    import gguf
    import numpy as np
    import omnic

    model = spec.model
    writer = gguf.GGUFWriter(path, plan.arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(general_name(spec.name, vocab.tokens))
    writer.add_file_type(file_type.llama_ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_hparams(writer, model, plan)
    write_vocab(writer, vocab)
    spec_json, spec_sha = spec_digest(spec, spec_dir)
    writer.add_string(GgufKeys.VERSION, omnic.__version__)
    writer.add_string(GgufKeys.SPEC_SHA256, spec_sha)
    writer.add_string(GgufKeys.SPEC, spec_json)
    writer.add_string(GgufKeys.FILE_TYPE, file_type.name)

    extras = extra_tensors(model, plan)
    order = [(name, tuple(a.shape), "F32") for name, a in extras]
    order += [(t.name, t.shape, types[t.name]) for t in tensors]
    for name, shape, tname in order:
        qtype = gguf.GGMLQuantizationType[tname]
        writer.add_tensor_info(name, shape, np.dtype(np.float32), stored_nbytes(shape, tname),
                               raw_dtype=qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total = 0
    for _, array in extras:
        writer.write_tensor_data(array)
        total += array.nbytes
    for t in tensors:
        data = quantize(to_gguf(t, fetch, model, plan), types[t.name])
        writer.write_tensor_data(data)
        total += data.nbytes
        del data
        pages.release(fetch(s) for s in t.sources)  # a memory-mapped checkpoint's pages: read
    writer.close()
    return total


def read_back(path: Path, spec: "ResolvedSpec", plan: ArchPlan, tensors: list[GgufTensor],
              with_weights: bool) -> tuple[dict[str, Any], dict[str, "np.ndarray"] | None]:
    """What the file stores: facts per tensor type and, optionally, the dequantized weights.

    The weights come back in omnic names and layouts (Q/K rows un-permuted, unit offsets
    removed, experts unstacked): the quantization-exact reference.

    Returns:
        (facts, weights or None) where facts = {"tensor_types": {type: count},
        "bytes_by_type": {type: bytes}, "general.file_type": int, "types": {gguf name: type}}.
    """
    import gguf

    reader = gguf.GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    counts: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    types: dict[str, str] = {}
    for rt in reader.tensors:
        tname = rt.tensor_type.name
        types[rt.name] = tname
        counts[tname] = counts.get(tname, 0) + 1
        nbytes[tname] = nbytes.get(tname, 0) + int(rt.n_bytes)
    ft_field = reader.get_field(gguf.Keys.General.FILE_TYPE)
    facts = {
        "tensor_types": dict(sorted(counts.items())),
        "bytes_by_type": dict(sorted(nbytes.items())),
        "general.file_type": int(ft_field.contents()) if ft_field is not None else None,
        "types": types,
    }
    weights = None
    if with_weights:
        # dequantized when read (omnic.runtime.lazy_weights): the golden check's exact reference
        # then never holds a second fp32 copy of the model
        import numpy as np

        from omnic.runtime.lazy_weights import LazyWeights

        def loader(t: GgufTensor, rt: Any, name: str) -> Any:
            # read from the file at each use, not through the reader's memory map: mapped pages
            # stay resident once touched (the whole file, 0.8 GB at 1B, for the compile's rest)
            where = (rt.data.dtype, rt.data.size, int(rt.data_offset), rt.data.shape)
            qtype = rt.tensor_type

            def read() -> Any:
                dtype, count, offset, shape = where
                data = np.fromfile(path, dtype=dtype, count=count, offset=offset).reshape(shape)
                return from_gguf(t, dequantize(data, qtype), spec.model, plan, fresh=True)[name]
            return read

        loaders, nbytes = {}, 0
        for t in tensors:
            rt = by_name[t.name]
            loaders.update({s: loader(t, rt, s) for s in t.sources})
            nbytes += 4 * int(rt.n_elements)
        weights = LazyWeights(loaders, nbytes)
    del reader
    return facts, weights


def metadata(path: Path, keys: list[str]) -> dict[str, Any]:
    """Selected metadata values of a GGUF file (strings, numbers and arrays as Python values)."""
    import gguf

    reader = gguf.GGUFReader(path)
    out = {}
    for key in keys:
        field = reader.get_field(key)
        if field is not None:
            out[key] = field.contents()
    del reader
    return out


def provenance(path: Path) -> dict[str, Any]:
    """The omnic.* keys of a GGUF file written by omnic (spec parsed back to a dict)."""
    keys = [GgufKeys.VERSION, GgufKeys.SPEC_SHA256, GgufKeys.SPEC, GgufKeys.FILE_TYPE]
    meta = metadata(path, keys)
    if GgufKeys.SPEC in meta:
        meta[GgufKeys.SPEC] = json.loads(meta[GgufKeys.SPEC])
    return meta
