"""What a saved .mlpackage is, read back with coremltools alone (no Core ML runtime needed).

An .mlpackage is a directory:
    Manifest.json                              item ids -> paths; rootModelIdentifier
    Data/com.apple.CoreML/model.mlmodel        the Model protobuf (I/O, states, MIL program)
    Data/com.apple.CoreML/weights/weight.bin   every weight blob the program references
    executorch_debug_handle_mapping.json       written by coremltools for torch.export sources
  ref: https://apple.github.io/coremltools/docs-guides/source/convert-to-ml-program.html

Determinism: coremltools gives each Manifest item a random UUID, stamps the conversion date into
the model's metadata and serialises protobuf maps in no fixed order. The target drops the date
and `normalise_package` replaces the UUIDs with name-based ones (uuid5 of the item path) and
re-serialises the protobuf deterministically, so two lowerings of one program are byte-identical.

`structural_check` is the conformance check this host can run (Core ML itself only runs on
macOS): it re-opens the package and compares it with what the spec implies and with what
`lower()` recorded.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnic.constants import Targets
from omnic.spec.layers import short_conv_layers, state_shapes
from omnic.targets.coreml.convert import INPUT_IDS, INPUT_POS, LOGITS, state_names
from omnic.targets.kv_layout import kv_positions

if TYPE_CHECKING:
    from omnic.spec import ResolvedSpec
    from omnic.targets.base import Artifact

MODEL_FILE = "Data/com.apple.CoreML/model.mlmodel"
WEIGHTS_FILE = "Data/com.apple.CoreML/weights/weight.bin"
DATE_KEY = "com.github.apple.coremltools.conversion_date"
META_UNITS = "com.omnic.compute_units"  # load-time setting: not part of a Core ML model
META_PRECISION = "com.omnic.compute_precision"
META_SPEC = "com.omnic.spec_name"
# Model.specificationVersion each deployment target produces (coremltools' AvailableTarget).
SPEC_VERSION = {"iOS16": 7, "iOS17": 8, "macOS14": 8, "iOS18": 9, "macOS15": 9}
_UUID_NS = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")  # RFC 4122 URL namespace
_DTYPES = {"INT32": "int32", "FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "float64",
           "INT8": "int8", "UINT8": "uint8"}


def normalise_package(package: Path) -> None:
    """Make a saved package deterministic: name-based Manifest ids (the layout is unchanged), and
    the protobuf re-serialised with sorted map entries (protobuf's map order is unspecified, so
    coremltools' bytes differ from run to run even when the message is equal)."""
    from coremltools.proto import Model_pb2

    model_path = package / MODEL_FILE
    model = Model_pb2.Model()
    model.ParseFromString(model_path.read_bytes())
    model_path.write_bytes(model.SerializeToString(deterministic=True))
    path = package / "Manifest.json"
    manifest = json.loads(path.read_text())
    remap = {old: str(uuid.uuid5(_UUID_NS, "omnic:" + entry["path"])).upper()
             for old, entry in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {remap[k]: v for k, v in sorted(
        manifest["itemInfoEntries"].items(), key=lambda kv: remap[kv[0]])}
    manifest["rootModelIdentifier"] = remap[manifest["rootModelIdentifier"]]
    path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")


def package_bytes(package: Path) -> int:
    return sum(p.stat().st_size for p in package.rglob("*") if p.is_file())


# -- signature -------------------------------------------------------------------------------


def _array(t: Any) -> dict[str, Any]:
    dtype = _DTYPES.get(type(t).ArrayDataType.Name(t.dataType), str(t.dataType))
    ranges = list(t.shapeRange.sizeRanges) if t.HasField("shapeRange") else []
    if ranges:
        shape = [r.lowerBound if r.lowerBound == r.upperBound else f"{r.lowerBound}..{r.upperBound}"
                 for r in ranges]
    elif t.HasField("enumeratedShapes"):
        shape = [[int(d) for d in s.shape] for s in t.enumeratedShapes.shapes]
    else:
        shape = [int(d) for d in t.shape]
    return {"dtype": dtype, "shape": shape}


def read_signature(spec_pb: Any, program: Any) -> dict[str, Any]:
    """I/O and states of a model protobuf; output shapes from the MIL program's output vars
    (the protobuf leaves flexible output shapes empty), symbolic sizes written "T"."""
    desc = spec_pb.description
    inputs = {i.name: _array(i.type.multiArrayType) for i in desc.input}
    states = {s.name: _array(s.type.stateType.arrayType) for s in desc.state}
    outputs = {}
    fn = program.functions["main"]
    for o in desc.output:
        entry = _array(o.type.multiArrayType)
        var = next((v for v in fn.outputs if v.name == o.name), None)
        if var is not None:
            entry["shape"] = [d if isinstance(d, int) else "T" for d in
                              (int(x) if str(x).isdigit() else x for x in var.shape)]
        outputs[o.name] = entry
    return {"inputs": inputs, "outputs": outputs, "states": states}


def expected_signature(spec: "ResolvedSpec") -> dict[str, Any]:
    """The signature the spec implies (derived from the spec only, never from an artifact)."""
    m = spec.model
    tokens = f"1..{m.context_length}"
    conv = short_conv_layers(m)
    states = {}
    # short_conv: the conv state, no v; mamba2 and gated_deltanet: conv, then recurrent
    fixed = state_shapes(m)
    for i, n in enumerate(kv_positions(spec, Targets.COREML)):
        for slot, dims in zip(("k_cache", "v_cache"),
                              fixed.get(i) or [[1, m.kv_heads, n, m.dim_per_head]] * 2):
            states[f"{slot}_{i}"] = dims
    return {
        "inputs": {INPUT_IDS: {"dtype": "int32", "shape": [1, tokens]},
                   INPUT_POS: {"dtype": "int32", "shape": [tokens]}},
        "outputs": {LOGITS: {"dtype": "float32", "shape": [1, "T", m.vocab_size]}},
        "states": {name: {"dtype": "float16", "shape": states[name]}
                   for name in state_names(m.n_layers, conv)},
    }


def op_histogram(spec_pb: Any) -> dict[str, int]:
    """Op type -> count over every function and nested block of the ML Program protobuf."""
    counts: Counter[str] = Counter()

    def walk(block: Any) -> None:
        for op in block.operations:
            counts[op.type] += 1
            for b in op.blocks:
                walk(b)

    for fn in spec_pb.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            walk(block)
    return dict(sorted(counts.items()))


def state_accesses(spec_pb: Any) -> tuple[list[str], list[str]]:
    """States named by read_state and write_state ops (one entry per op), in program order."""
    reads, writes = [], []
    for fn in spec_pb.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                if op.type in ("read_state", "write_state"):
                    name = op.inputs["input"].arguments[0].name
                    (reads if op.type == "read_state" else writes).append(name)
    return reads, writes


def fp32_compute_ops(program: Any) -> int:
    """linear/matmul ops computing in fp32 (0 in an fp16-compute program)."""
    from coremltools.converters.mil.mil import types

    from omnic.targets.coreml.quant import main_ops

    return sum(1 for op in main_ops(program) if op.op_type in ("linear", "matmul")
               and op.outputs[0].dtype == types.fp32)


# -- the structural conformance check --------------------------------------------------------


def open_package(build_dir: Path, rel: str) -> tuple[Any, Any, list[str]]:
    """(model protobuf, MIL program, failures) of the package at build_dir/rel, read with
    coremltools alone; protobuf and program are None when the package cannot be read."""
    import coremltools as ct

    from omnic.targets.coreml.quant import load_program

    package = build_dir / rel
    if not (package / "Manifest.json").is_file():
        return None, None, [f"{rel}: not an .mlpackage (no Manifest.json)"]
    failures: list[str] = []
    manifest = json.loads((package / "Manifest.json").read_text())
    root = manifest.get("itemInfoEntries", {}).get(manifest.get("rootModelIdentifier", ""))
    if root is None or not (package / "Data" / root["path"]).is_file():
        failures.append("Manifest.json: rootModelIdentifier names no existing model file")
    try:
        return ct.utils.load_spec(str(package)), load_program(package), failures
    except Exception as err:  # noqa: BLE001 - any read failure is a structural failure
        return None, None, failures + [
            f"coremltools cannot read the package: {type(err).__name__}: {err}"]


def structural_check(artifact: "Artifact", build_dir: Path, spec: "ResolvedSpec") -> list[str]:
    """Re-open a lowered .mlpackage and list everything that disagrees with the spec or with
    what `lower()` recorded; [] when the structure conforms.

    Checks: the package opens (Manifest, protobuf, weights); ML Program at the deployment
    target's specification version; I/O names, dtypes and shapes and the KV states as the spec
    implies (and as recorded in `artifact.signature`), one token as the default input shape;
    every state read and written exactly once; the op histogram equals `artifact.op_histogram`;
    every weight the quantization plan compresses is a constexpr op with the plan's dtype, block
    layout and zero point, and no other weight is compressed; linear/matmul compute in the
    spec's precision; the compute units and precision recorded in the model's metadata.

    Args:
        artifact: the Artifact `CoremlTarget.lower` returned (path relative to build_dir).
        build_dir: the build directory.
        spec: the resolved spec the artifact was lowered from.
    """
    from omnic.quant.select import tensor_schemes
    from omnic.targets.coreml.quant import (
        COMPRESSION_OPS, Compression, compression_facts, main_ops, quantized_schemes,
    )

    c = spec.targets.coreml
    spec_pb, program, failures = open_package(Path(build_dir), artifact.path)
    if spec_pb is None:
        return failures

    if spec_pb.WhichOneof("Type") != "mlProgram":
        failures.append(f"model type is {spec_pb.WhichOneof('Type')}, not mlProgram")
    want_version = SPEC_VERSION[c.deployment_target]
    if spec_pb.specificationVersion != want_version:
        failures.append(f"specificationVersion {spec_pb.specificationVersion}, expected "
                        f"{want_version} for {c.deployment_target}")

    signature = read_signature(spec_pb, program)
    for label, want in (("spec", expected_signature(spec)), ("lower()", artifact.signature)):
        for part in ("inputs", "outputs", "states"):
            got, exp = signature.get(part, {}), want.get(part, {})
            if list(got) != list(exp):
                failures.append(f"{part}: names {list(got)}, {label} expects {list(exp)}")
            for name in got:
                if name in exp and got[name] != exp[name]:
                    failures.append(f"{part}.{name}: {got[name]}, {label} expects {exp[name]}")

    # The default shape of the token range is a single token (decode): the shape Core ML can
    # run on the Neural Engine (see convert.py).
    defaults = {i.name: [int(d) for d in i.type.multiArrayType.shape]
                for i in spec_pb.description.input}
    if defaults and defaults != {INPUT_IDS: [1, 1], INPUT_POS: [1]}:
        failures.append(f"default input shapes {defaults}, expected one token")

    histogram = op_histogram(spec_pb)
    if histogram != artifact.op_histogram:
        diff = {k: (histogram.get(k, 0), artifact.op_histogram.get(k, 0))
                for k in sorted(set(histogram) | set(artifact.op_histogram))
                if histogram.get(k, 0) != artifact.op_histogram.get(k, 0)}
        failures.append(f"op histogram differs from lower()'s (saved, recorded): {diff}")
    # Every KV state is read and written exactly once per call. (MIL's coreml_update_state is
    # serialised as write_state, plus a read_state when the updated value is used afterwards.)
    states = state_names(spec.model.n_layers, short_conv_layers(spec.model))
    reads, writes = state_accesses(spec_pb)
    if sorted(writes) != sorted(states):
        failures.append(f"write_state targets {sorted(writes)}, expected each of {sorted(states)} "
                        "once")
    if set(reads) != set(states):
        failures.append(f"read_state targets {sorted(set(reads))}, expected {sorted(states)}")

    plan = quantized_schemes(tensor_schemes(spec))
    weight_ops: dict[str, str] = artifact.details.get("weight_ops", {})
    items = [Compression(n, weight_ops.get(n, "?"), s.scheme, s.group_size, s.symmetric)
             for n, s in plan.items()]
    failures += compression_facts(program, items)
    n_compressed = sum(histogram.get(t, 0) for t in COMPRESSION_OPS)
    if n_compressed != len(plan):
        failures.append(f"{n_compressed} compressed weight ops, the plan quantizes {len(plan)} "
                        "tensors")
    by_name = {op.name: op for op in main_ops(program)}
    for name, op_name in weight_ops.items():
        op = by_name.get(op_name)
        if name not in plan and op is not None and op.op_type != "const":
            failures.append(f"{name}: stored by {op.op_type}, the plan keeps it unquantized")

    n_fp32 = fp32_compute_ops(program)
    if c.compute_precision == "fp16" and n_fp32:
        failures.append(f"{n_fp32} linear/matmul ops compute in fp32, spec says fp16")
    meta = dict(spec_pb.description.metadata.userDefined)
    for key, want in ((META_UNITS, c.compute_units), (META_PRECISION, c.compute_precision)):
        if meta.get(key) != want:
            failures.append(f"metadata {key}={meta.get(key)!r}, spec says {want!r}")
    if DATE_KEY in meta:
        failures.append(f"metadata {DATE_KEY} present: the package is not deterministic")
    return failures
