"""The bytes of each target's artifact, predicted from the spec alone (torch-free).

The memory plan's weight bytes are one backend-neutral count. Each backend stores the same plan
differently, so this module predicts every enabled target's artifact as the manifest measures it
(the file, or the folder the target deploys), line by line:

| target     | weights (omnic.targets.fates)      | other lines                                  |
|------------|------------------------------------|----------------------------------------------|
| gguf       | ggml blocks (Q4_0 18 B / 32,       | header, metadata (vocabulary, spec JSON),    |
|            | Q8_0 34 B / 32, K-quants)          | tensor index, 32-byte alignment              |
| onnx       | MatMulNBits with fp32 scales       | RoPE cos/sin caches, graph + omnic.weights   |
|            | (onnxruntime's dtype)              | records, genai_config.json, tokenizer files  |
| executorch | bf16-scaled qb4w, fp32-scaled      | RoPE tables, flatbuffer program + XNNPACK    |
|            | int8, tied embedding twice         | graphs                                       |
| coreml     | int4/int8 + fp16 scales, floats at | RoPE tables, weight.bin blob headers,        |
|            | compute precision                  | model.mlmodel, Manifest.json                 |
| tvm        | packed codes + fp16 scales         | safetensors header, decoder.json; the        |
|            |                                    | compiled code (decoder.so, the device .tar)  |
|            |                                    | is listed apart and not compared             |

Lines marked "(est.)" are estimates of format overhead, fitted on pocket-chat's builds
(specs/mobile_2gb.yaml, 6 layers, in fp32, fp16, int8 and int4); everything else is computed
from the formats. A target whose byte model fails is reported as not planned (carried=False with
the reason) and the manifest falls back to the backend-neutral weight bytes for it.
The manifest compares each artifact's real bytes (minus the excluded code files) with `bytes`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnic.constants import Targets

if TYPE_CHECKING:
    from omnic.spec import ResolvedSpec

TOLERANCE = 0.03  # issue 7: artifact sizes within 3 % of the plan

# Format overhead per decoder layer and per artifact, fitted on pocket-chat (6 layers); they
# matter only for tiny models (< 1 % of a 100 M parameter artifact).
ONNX_GRAPH_PER_LAYER, ONNX_GRAPH_BASE = 6_200, 4_000
ONNX_RECORD_PER_MATRIX = 266  # one omnic.weights JSON record
ONNX_GENAI_CONFIG = 1_300
ET_PROGRAM_PER_LAYER, ET_PROGRAM_BASE = 24_000, 16_000
COREML_MIL_PER_LAYER, COREML_MIL_BASE = 20_000, 6_000
COREML_MANIFEST_JSON = 617
COREML_DEBUG_MAP_PER_LAYER, COREML_DEBUG_MAP_BASE = 20_000, 2_000
COREML_BLOB_HEADER = 64  # MIL blob storage: a 64-byte header per blob, data aligned to 64
TVM_DESCRIPTOR_PER_LAYER, TVM_DESCRIPTOR_BASE = 3_800, 3_800
SAFETENSORS_ENTRY = 90  # one JSON header entry: name, dtype, shape, offsets
GGUF_ALIGNMENT = 32
GGUF_OTHER_KEYS = 1_400  # general.*, llama.* hyperparameters, tokenizer flags (~30 keys)

# Files that are compiled code, not weights: listed, never compared with the plan.
CODE_SUFFIXES = (".so", ".dylib", ".dll", ".tar", ".o", ".a")


@dataclass(frozen=True)
class ArtifactBytes:
    """The predicted artifact of one target.

    Attributes:
        target: target id.
        lines: what the artifact holds, bytes each ("weights", "rope tables", ...).
        excluded: file suffixes the comparison leaves out (compiled code).
        carried: False when the target cannot take the spec (`reason` says why).
    """

    target: str
    lines: dict[str, int] = field(default_factory=dict)
    excluded: tuple[str, ...] = ()
    carried: bool = True
    reason: str | None = None

    @property
    def bytes(self) -> int:
        return sum(self.lines.values())

    @property
    def weight_bytes(self) -> int:
        return self.lines.get("weights", 0)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bytes"] = self.bytes
        out["excluded"] = list(self.excluded)
        return out


def _rope_pairs(spec: "ResolvedSpec") -> int:
    """Rotated pairs of every RoPE table the decoder holds: one table per distinct row rope of
    the per-layer table (Gemma 3: a local and a global one), context_length x dims / 2 each."""
    distinct = {r.rope.model_dump_json() for r in spec.model.table if r.rope is not None}
    dims = sum(json.loads(r)["dims"] for r in distinct)
    return spec.model.context_length * (dims // 2)


def _layers(spec: "ResolvedSpec") -> int:
    return spec.model.n_layers


# -- GGUF ------------------------------------------------------------------------------------
def _gguf_string(s: str) -> int:
    return 8 + len(s.encode("utf-8"))


def _digits(start: int, stop: int) -> int:
    """The number of decimal digits of all integers in [start, stop), in closed form: n has
    1 + #{k >= 1: n >= 10**k} digits (the plan never loops over a declared vocab_size)."""
    def upto(x: int) -> int:  # digits of 0 .. x-1
        total, power = x, 10
        while power < x:
            total += x - power
            power *= 10
        return total

    return upto(stop) - upto(start) if stop > start else 0


def _gguf_vocab_bytes(spec: "ResolvedSpec", spec_dir: Path | None) -> int:
    """tokenizer.ggml.* arrays: tokens, token types, scores, merges (exact for the byte
    tokenizer, from tokenizer.json for Hugging Face ones)."""
    n = spec.model.vocab_size
    tokens: list[str]
    merges: list[str] = []
    scores = False
    extra, extra_bytes = 0, 0  # tokens counted in closed form: <unused_N> or padding
    if spec.tokenizer.kind == "byte":
        from omnic.formats.gguf_vocab import byte_vocab
        from omnic.tokenizer import BYTE_SPECIALS

        # The vocabulary of the smallest byte tokenizer, then its `<unused_N>` tokens
        # (omnic/tokenizer.py), N from 0: 8 + len("<unused_>") + digits(N) bytes each.
        base = 256 + len(BYTE_SPECIALS)
        small = spec.model_copy(update={"model": spec.model.model_copy(
            update={"vocab_size": min(n, base)})})
        vocab = byte_vocab(small, Path(spec_dir or "."))
        tokens, merges, scores = vocab.tokens, vocab.merges, vocab.scores is not None
        extra = max(0, n - base)
        extra_bytes = extra * (8 + len("<unused_>")) + _digits(0, extra)
    else:
        path = Path(spec.tokenizer.path)
        if not path.is_absolute() and spec_dir is not None:
            path = Path(spec_dir) / path
        try:
            data = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
            model = data["model"]
            tokens = list(model["vocab"]) + [a["content"] for a in data.get("added_tokens", [])]
            merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
            scores = bool(model.get("byte_fallback"))
        except (OSError, KeyError, ValueError):
            tokens = []  # unreadable here: every token counted as ~7 bytes
            extra, extra_bytes = n, n * _gguf_string("x" * 7)
        pad = max(0, n - len(tokens) - extra)
        extra, extra_bytes = extra + pad, extra_bytes + pad * _gguf_string("[PAD]")
    out = 12 + sum(_gguf_string(t) for t in tokens) + extra_bytes + 12 + 4 * n
    if scores:
        out += 12 + 4 * n
    if merges:
        out += 12 + sum(_gguf_string(m) for m in merges)
    return out


def _gguf(spec: "ResolvedSpec", spec_dir: Path | None) -> ArtifactBytes:
    from omnic.digest import canonical_json
    from omnic.targets.gguf.write import embedded_spec
    from omnic.targets import fates
    from omnic.quant.ggml import nbytes
    from omnic.formats.gguf_arch import extra_tensors, plan_arch, tensor_plan

    f = fates.fates(spec, Targets.GGUF)
    arch, _ = plan_arch(spec.model)
    tensors = [(t.name, t.shape, f[t.sources[0]].detail["type"])
               for t in tensor_plan(spec.model, arch)]
    # llama.cpp's own tensors: rope_freqs (llama3), LongRoPE factors, granite_swa's sinks
    tensors += [(name, values.shape, "F32") for name, values in extra_tensors(spec.model, arch)]
    data = sum(nbytes(s, ty) for _, s, ty in tensors)
    padding = sum(-nbytes(s, ty) % GGUF_ALIGNMENT for _, s, ty in tensors)
    index = sum(_gguf_string(n) + 4 + 8 * len(s) + 4 + 8 for n, s, _ in tensors)
    spec_json = canonical_json(embedded_spec(spec, Path(spec_dir or "."), read=False))
    meta = (24 + GGUF_OTHER_KEYS + _gguf_vocab_bytes(spec, spec_dir)
            + _gguf_string(spec_json) + _gguf_string(spec.name) + 2 * _gguf_string("0" * 64))
    head = meta + index
    head += -head % GGUF_ALIGNMENT
    return ArtifactBytes(Targets.GGUF, {
        "weights": data, "alignment": padding,
        "header + metadata + tensor index": head,
    })


# -- ONNX ------------------------------------------------------------------------------------
def byte_tokenizer_json_bytes(vocab_size: int) -> int:
    """Size of the tokenizer.json `ByteTokenizer.save` writes (tokenizers' pretty JSON): a fixed
    part for the 256 bytes and 3 specials, then per `<unused_N>` token one added-token entry and
    one vocab entry, whose size grows with the digits of N and of its id (measured: 6214 B at
    vocab 259, 835141 B at 4096)."""
    unused = max(0, vocab_size - 259)
    return 6214 + 201 * unused + 2 * _digits(0, unused) + 2 * _digits(259, 259 + unused)


def _tokenizer_files(spec: "ResolvedSpec", spec_dir: Path | None) -> int:
    if spec.tokenizer.kind == "byte":
        return byte_tokenizer_json_bytes(spec.model.vocab_size) + 202  # + tokenizer_config.json
    path = Path(spec.tokenizer.path)
    if not path.is_absolute() and spec_dir is not None:
        path = Path(spec_dir) / path
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    return sum((path / n).stat().st_size for n in names if (path / n).is_file())


def _onnx(spec: "ResolvedSpec", spec_dir: Path | None) -> ArtifactBytes:
    from omnic.targets import fates

    f = fates.fates(spec, Targets.ONNX)
    matrices = sum(1 for x in f.values() if x.detail.get("form") != "initializer")
    opts = spec.targets.onnx
    lines = {"weights": sum(x.bytes for x in f.values())}
    if opts is None or opts.fusions:  # RotaryEmbedding's cos/sin caches, float32 [ctx, hd/2]
        lines["rope cos/sin caches"] = 2 * 4 * _rope_pairs(spec)
    lines["graph + weight records (est.)"] = (ONNX_GRAPH_BASE + ONNX_GRAPH_PER_LAYER * _layers(spec)
                                              + ONNX_RECORD_PER_MATRIX * matrices)
    lines["genai_config.json (est.)"] = ONNX_GENAI_CONFIG
    lines["tokenizer files"] = _tokenizer_files(spec, spec_dir)
    return ArtifactBytes(Targets.ONNX, lines)


# -- ExecuTorch ------------------------------------------------------------------------------
def _executorch(spec: "ResolvedSpec", spec_dir: Path | None) -> ArtifactBytes:
    from omnic.targets import fates

    f = fates.fates(spec, Targets.EXECUTORCH)
    dtype_bytes = 2 if any(x.form in ("fp16", "bf16") for x in f.values()) else 4
    return ArtifactBytes(Targets.EXECUTORCH, {
        "weights": sum(x.bytes for x in f.values()),
        "rope tables": 2 * dtype_bytes * 2 * _rope_pairs(spec),  # cos, sin [ctx, head_dim]
        "program + XNNPACK graphs (est.)": ET_PROGRAM_BASE + ET_PROGRAM_PER_LAYER * _layers(spec),
    })


# -- Core ML ---------------------------------------------------------------------------------
def _coreml(spec: "ResolvedSpec", spec_dir: Path | None) -> ArtifactBytes:
    from omnic.targets import fates

    f = fates.fates(spec, Targets.COREML)
    precision = spec.targets.coreml.compute_precision if spec.targets.coreml else "fp16"
    fbytes = 2 if precision == "fp16" else 4
    compressed = sum(1 for x in f.values() if "shift_scale" in x.form)
    blobs = len(f) + 2 * compressed + 2
    lines = {
        "weights": sum(x.bytes for x in f.values()),
        "rope tables": 2 * fbytes * 2 * _rope_pairs(spec),
        "weight.bin blob headers + alignment": 64 + blobs * (COREML_BLOB_HEADER + 32),
        "model.mlmodel (est.)": COREML_MIL_BASE + COREML_MIL_PER_LAYER * _layers(spec),
        "Manifest.json": COREML_MANIFEST_JSON,
    }
    if not compressed:
        # coremltools keeps the torch.export debug-handle map of an uncompressed conversion
        # (linear_quantize_weights returns a model without it); measured 122 kB for 6 layers
        lines["executorch_debug_handle_mapping.json (est.)"] = (
            COREML_DEBUG_MAP_BASE + COREML_DEBUG_MAP_PER_LAYER * _layers(spec))
    return ArtifactBytes(Targets.COREML, lines)


# -- TVM -------------------------------------------------------------------------------------
def _tvm(spec: "ResolvedSpec", spec_dir: Path | None) -> ArtifactBytes:
    from omnic.targets import fates

    f = fates.fates(spec, Targets.TVM)
    arrays = sum(1 if x.form.startswith(("float", "bfloat")) else
                 (3 if "zero points" in x.form else 2) for x in f.values())
    return ArtifactBytes(Targets.TVM, {
        "weights": sum(x.bytes for x in f.values()),
        "safetensors header": 8 + SAFETENSORS_ENTRY * arrays,
        "decoder.json (est.)": TVM_DESCRIPTOR_BASE + TVM_DESCRIPTOR_PER_LAYER * _layers(spec),
    }, excluded=CODE_SUFFIXES)


_MODELS = {Targets.GGUF: _gguf, Targets.ONNX: _onnx, Targets.EXECUTORCH: _executorch,
           Targets.COREML: _coreml, Targets.TVM: _tvm}


def artifact_bytes(spec: "ResolvedSpec", target: str, spec_dir: Path | str | None = None
                   ) -> ArtifactBytes:
    """The predicted artifact of `target` (carried=False with the reason when it cannot be built).

    Args:
        spec: a resolved spec.
        target: target id.
        spec_dir: the spec's folder (to read a Hugging Face tokenizer's files); None: estimate.
    """
    from omnic.targets.fates import NotCarried

    try:
        return _MODELS[target](spec, None if spec_dir is None else Path(spec_dir))
    except NotCarried as why:
        return ArtifactBytes(target, carried=False, reason=str(why))
    except Exception as err:  # noqa: BLE001 - a planning gap must never stop a compile
        return ArtifactBytes(target, carried=False,
                             reason=f"no byte model for this spec: {type(err).__name__}: {err}")


def plan_artifacts(spec: "ResolvedSpec", spec_dir: Path | str | None = None,
                   targets: list[str] | None = None) -> list[ArtifactBytes]:
    """`artifact_bytes` of every enabled target (or of `targets`), in target order."""
    ids = spec.targets.enabled() if targets is None else targets
    return [artifact_bytes(spec, t, spec_dir) for t in ids if t in _MODELS]


def measured_bytes(path: Path, excluded: tuple[str, ...] | list[str]) -> tuple[int, int]:
    """(compared bytes, excluded bytes) of an artifact file or folder."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    kept = skipped = 0
    for p in files:
        if p.name.endswith(tuple(excluded)):
            skipped += p.stat().st_size
        else:
            kept += p.stat().st_size
    return kept, skipped
