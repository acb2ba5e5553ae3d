"""The build manifest: pydantic models (the source of schemas/omnic-manifest.schema.json), hashing,
and byte-stable JSON.

Everything outside `timings` is a pure function of the spec, the toolchain and the artifacts'
bytes: two compiles of one spec give identical manifests apart from `timings`. JSON is written
with sorted keys, two-space indent and floats rounded to 6 significant digits.
"""

from __future__ import annotations

import json
import math
import platform
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from omnic.constants import MANIFEST_FORMAT_VERSION, GoldenStatus, ManifestKeys
# the manifest's hashes; `mf.file_sha256` and friends stay the manifest's public names
from omnic.digest import canonical_json, file_sha256, path_digest, spec_sha256  # noqa: F401

MANIFEST_FILE = "manifest.json"
FLOAT_DIGITS = 6

# Distributions whose versions are recorded (those installed): the toolchain that made the build.
TOOLCHAIN = (
    "torch", "numpy", "ml-dtypes", "onnx", "onnxscript", "onnx-ir", "onnxruntime",
    "onnxruntime-genai", "gguf",
    "llama-cpp-python", "executorch", "torchao", "coremltools", "apache-tvm", "transformers",
    "tokenizers", "safetensors",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GoldenEntry(_Model):
    status: Literal["passed", "failed", "not_run"] = Field(
        description="passed / failed against the tolerance table, or not_run on this host.")
    reason: str | None = Field(None, description="Why it failed or was not run; null if passed.")
    metrics: dict[str, float | None] = Field(
        default_factory=dict, description="Golden metrics (max_abs, nmse, cosine, top1, kld...).")
    reference: str | None = Field(
        None, description="Build-relative path of the reference outputs it was compared with.")
    limits: dict[str, float] = Field(
        default_factory=dict, description="The tolerance row applied (after spec overrides).")


class ArtifactEntry(_Model):
    component: str = Field(description="Model component, e.g. decoder.")
    target: str = Field(description="Target id.")
    path: str = Field(description="Path relative to the build directory (file or directory).")
    bytes: int = Field(description="Size in bytes (a directory: the sum of its files).")
    sha256: str = Field(
        description="sha256 of the file; of a directory: of its sorted relative paths and the "
        "sha256 of each file.")
    precision: str = Field(description="Tolerance-table precision, e.g. fp32, q4_0, int4_g32.")
    signature: dict[str, Any] = Field(default_factory=dict, description="Inputs and outputs.")
    op_histogram: dict[str, int] = Field(default_factory=dict, description="Op type -> count.")
    quantization: dict[str, Any] = Field(default_factory=dict, description="Quantization summary.")
    details: dict[str, Any] = Field(default_factory=dict, description="Target-specific facts.")
    golden: GoldenEntry = Field(description="Golden conformance of this artifact.")


class PassEntry(_Model):
    id: str = Field(description="Namespaced pass id.")
    changed: bool = Field(description="Whether the pass changed the program.")
    target: str | None = Field(
        None, description="The target whose own pipeline ran the pass (with `component`); "
        "null for the model-level passes every target starts from.")
    component: str | None = Field(None, description="The component the target was lowering.")


class PlanVsActual(_Model):
    target: str = Field(description="Target id.")
    component: str = Field(description="Component.")
    path: str = Field(description="Artifact path.")
    planned_bytes: int | None = Field(
        description="Bytes the memory plan predicted for this artifact: the target's byte model "
        "(memory_plan.artifacts) when it has one, else the component's weight bytes.")
    actual_bytes: int = Field(description="Bytes of the artifact.")
    ratio: float | None = Field(description="compared_bytes / planned_bytes.")
    basis: Literal["target", "weights"] = Field(
        "weights", description="target: planned by the target's byte model; weights: by the "
        "backend-neutral weight bytes.")
    compared_bytes: int | None = Field(
        None, description="actual_bytes minus the excluded files (what ratio compares).")
    excluded_bytes: int = Field(
        0, description="Bytes of files left out of the comparison: compiled code (e.g. TVM's "
        ".so and device .tar).")
    tolerance: float | None = Field(None, description="Allowed |ratio - 1| (0.03).")
    within_tolerance: bool | None = Field(
        None, description="|ratio - 1| <= tolerance; null without a target byte model.")


class GoldenInfo(_Model):
    cases: int = Field(description="Golden prompts.")
    prompt_tokens: int = Field(description="Tokens per prompt.")
    decode_steps: int = Field(description="Greedy steps compared.")
    seed: int = Field(description="Seed of the inputs.")
    files: dict[str, str] = Field(
        default_factory=dict, description="Build-relative golden file -> sha256.")


class StageTiming(_Model):
    stage: str = Field(description="Stage (load, validate, ..., golden:onnx) or pass id.")
    seconds: float = Field(description="Wall-clock seconds.")
    peak_rss_mb: float | None = Field(
        None, description="Peak RSS while it ran, MiB (Linux: its own high-water mark, reset at "
        "its start; elsewhere the process peak so far).")


class Timings(_Model):
    stages: list[StageTiming] = Field(default_factory=list, description="Pipeline stages.")
    passes: list[StageTiming] = Field(default_factory=list, description="Each pass.")
    targets: list[StageTiming] = Field(
        default_factory=list, description="Per target: check, lower, golden.")
    total_seconds: float = Field(0.0, description="Whole compile.")
    peak_rss_mb: float | None = Field(None, description="Peak RSS of the whole compile, MiB.")


class Manifest(_Model):
    """`manifest.json` of a build."""

    omnic_version: str = Field(description="omnic version that wrote the build.")
    manifest_format: int = Field(description="Manifest format version.")
    name: str = Field(description="The spec's name.")
    status: Literal["passed", "failed"] = Field(
        description="failed when any artifact's golden check failed (not_run does not fail).")
    targets: list[str] = Field(description="Targets built, in order.")
    test_fault: str | None = Field(
        None, description="The fault planted by test-only passes (test::...); null normally.")
    spec_sha256: str = Field(description="sha256 of the canonical JSON of the resolved spec.")
    spec: dict[str, Any] = Field(description="The fully resolved spec.")
    toolchain: dict[str, str] = Field(description="Python and library versions.")
    memory_plan: dict[str, Any] = Field(description="The memory plan (omnic plan --json).")
    passes: list[PassEntry] = Field(description="Passes in the order they ran.")
    artifacts: list[ArtifactEntry] = Field(description="Every artifact of every target.")
    plan_vs_actual: list[PlanVsActual] = Field(
        default_factory=list, description="Artifact bytes against the plan's prediction.")
    quantization_auto: dict[str, Any] | None = Field(
        None, description="`quantization: auto`: the chosen preset, every candidate (KLD vs fp32, "
        "top-1, bytes, fit, problems) and the reason; null when the spec names its quantization.")
    weights_source: dict[str, Any] | None = Field(
        None, description="How the weight source stores the weights when it is itself quantized "
        "(a GGUF: its file type and the count of each tensor type); null for random weights and "
        "float checkpoints.")
    calibration: dict[str, Any] | None = Field(
        None, description="Calibrated int4 (`weights.method` gptq/awq): the calibration text, "
        "windows and tokens, the tensors calibrated, AWQ folds, and per int4 grid the targets "
        "on it and the output error on the calibration activations relative to round-to-nearest; "
        "null when every weight is rounded to nearest.")
    golden: GoldenInfo = Field(description="Golden inputs and the saved reference files.")
    timings: Timings = Field(
        default_factory=Timings,
        description="Wall time and memory; the only section that differs between two compiles.")


# -- hashing -----------------------------------------------------------------------------------


def toolchain_versions() -> dict[str, str]:
    from importlib import metadata

    import omnic

    out = {"python": platform.python_version(), "omnic": omnic.__version__}
    for dist in TOOLCHAIN:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def jsonable(value: Any) -> Any:
    """Plain JSON data from pydantic models, dataclasses, numpy scalars, tuples, paths."""
    import dataclasses

    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return value.as_posix()
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return jsonable(value.item())
    return value


def _round(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.{FLOAT_DIGITS}g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def dumps(manifest: Manifest) -> str:
    """Byte-stable JSON of a manifest."""
    data = _round(manifest.model_dump(mode="json"))
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write(manifest: Manifest, build_dir: Path) -> Path:
    path = build_dir / MANIFEST_FILE
    path.write_text(dumps(manifest), encoding="utf-8")
    return path


def manifest_path(path: Path) -> Path:
    """A build directory or a manifest file -> the manifest file."""
    path = Path(path)
    return path / MANIFEST_FILE if path.is_dir() else path


def load(path: Path) -> Manifest:
    """Read and validate a manifest (a build directory or the file itself)."""
    p = manifest_path(path)
    return Manifest.model_validate(json.loads(p.read_text(encoding="utf-8")))


def without_timings(manifest: Manifest) -> dict[str, Any]:
    """The manifest's data minus `timings`: equal for two compiles of the same spec."""
    data = json.loads(dumps(manifest))
    data.pop(ManifestKeys.TIMINGS, None)
    return data


def json_schema() -> dict[str, Any]:
    """The JSON Schema of manifest.json; `python -m omnic.tools.write_schemas` writes it to
    schemas/omnic-manifest.schema.json with its $schema/$id header."""
    return Manifest.model_json_schema()


def overall_status(artifacts: list[ArtifactEntry]) -> str:
    failed = any(a.golden.status == GoldenStatus.FAILED for a in artifacts)
    return GoldenStatus.FAILED if failed else GoldenStatus.PASSED


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window: Linux resets VmHWM when "5" is written to clear_refs.

    Returns False where that is unsupported (peak_rss_mb then stays the process peak so far).
    ref: https://www.kernel.org/doc/html/latest/admin-guide/mm/soft-dirty.html (clear_refs)
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process, MiB: since the last reset_peak_rss() on Linux
    (VmHWM; ru_maxrss keeps the peak of exited threads), else so far (None where unsupported)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


__all__ = [
    "ArtifactEntry", "GoldenEntry", "GoldenInfo", "MANIFEST_FILE", "MANIFEST_FORMAT_VERSION",
    "Manifest", "PassEntry", "PlanVsActual", "StageTiming", "Timings", "dumps", "json_schema",
    "load", "path_digest", "spec_sha256", "toolchain_versions", "without_timings", "write",
]
