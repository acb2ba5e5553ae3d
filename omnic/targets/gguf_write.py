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

from omnic.constants import GgufKeys
from omnic.targets.gguf_arch import ArchPlan, GgufTensor, from_gguf, rope_freq_factors, to_gguf, write_hparams
from omnic.targets.gguf_quant import FileType, quantize, stored_nbytes
from omnic.targets.gguf_tokenizer import GgufVocab, write_vocab

if TYPE_CHECKING:
    import numpy as np

    from omnic.spec import ResolvedSpec

ROPE_FREQS = "rope_freqs.weight"


def spec_digest(spec: "ResolvedSpec") -> tuple[str, str]:
    """(canonical JSON, sha256) of the resolved spec, as the manifest computes them."""
    from omnic.compiler.manifest import canonical_json, spec_sha256

    data = spec.model_dump(mode="json")
    return canonical_json(data), spec_sha256(data)


def write_gguf(
    path: Path,
    spec: "ResolvedSpec",
    plan: ArchPlan,
    tensors: list[GgufTensor],
    types: dict[str, str],
    file_type: FileType,
    vocab: GgufVocab,
    fetch: Callable[[str], "np.ndarray"],
) -> int:
    """Write one GGUF file, tensor by tensor.

    Args:
        types: GGUF tensor name -> ggml type name for every tensor of `tensors`.
        file_type: written as general.file_type (llama.cpp's quantizer rewrites it for K-quants).
        fetch: omnic tensor name -> float32 array (read only; views of the model are fine).

    Returns:
        bytes of tensor data written.
    """
    import gguf
    import numpy as np
    import omnic

    model = spec.model
    writer = gguf.GGUFWriter(path, plan.arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(spec.name)
    writer.add_file_type(file_type.llama_ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_hparams(writer, model, plan)
    write_vocab(writer, vocab)
    spec_json, spec_sha = spec_digest(spec)
    writer.add_string(GgufKeys.VERSION, omnic.__version__)
    writer.add_string(GgufKeys.SPEC_SHA256, spec_sha)
    writer.add_string(GgufKeys.SPEC, spec_json)
    writer.add_string(GgufKeys.FILE_TYPE, file_type.name)

    freqs = rope_freq_factors(model)
    order: list[tuple[str, tuple[int, ...], str]] = []
    if freqs is not None:
        order.append((ROPE_FREQS, tuple(freqs.shape), "F32"))
    order += [(t.name, t.shape, types[t.name]) for t in tensors]
    for name, shape, tname in order:
        qtype = gguf.GGMLQuantizationType[tname]
        writer.add_tensor_info(name, shape, np.dtype(np.float32), stored_nbytes(shape, tname),
                               raw_dtype=qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total = 0
    if freqs is not None:
        writer.write_tensor_data(freqs)
        total += freqs.nbytes
    for t in tensors:
        data = quantize(to_gguf(t, fetch, model, plan), types[t.name])
        writer.write_tensor_data(data)
        total += data.nbytes
        del data
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
        weights = {}
        for t in tensors:
            rt = by_name[t.name]
            values = gguf.quants.dequantize(rt.data, rt.tensor_type)
            weights.update(from_gguf(t, values, spec.model, plan))
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
    meta = metadata(path, [GgufKeys.VERSION, GgufKeys.SPEC_SHA256, GgufKeys.SPEC, GgufKeys.FILE_TYPE])
    if GgufKeys.SPEC in meta:
        meta[GgufKeys.SPEC] = json.loads(meta[GgufKeys.SPEC])
    return meta
