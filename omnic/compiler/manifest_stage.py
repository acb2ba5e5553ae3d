"""The manifest stage: the manifest of a build from each target's results (built or cached).

Everything here is a pure function of the spec, the plan, the stored results and the build's
files, so a build from the cache gets the manifest the cached work wrote (omnic.compiler.
cached_stages); only `timings` differ.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omnic.compiler import manifest as mf
from omnic.constants import MANIFEST_FORMAT_VERSION


def manifest(resolved: Any, spec_dir: Path, plan: Any, targets: list[str],
             passes: list[dict[str, Any]], results: list[Any], auto: dict[str, Any] | None,
             calibration: dict[str, Any] | None, fault: str | None, build_dir: Path
             ) -> mf.Manifest:
    """`passes`: the model-level pass records (id, changed, seconds); `results`: each target's
    cached_stages.TargetResult, in build order."""
    spec_data = resolved.model_dump(mode="json")
    entries = [e for r in results for e in r.entries]
    g = resolved.golden
    return mf.Manifest(
        omnic_version=_version(), manifest_format=MANIFEST_FORMAT_VERSION,
        name=resolved.name, status=mf.overall_status(entries), targets=targets,
        test_fault=fault, spec_sha256=mf.spec_sha256(spec_data), spec=spec_data,
        toolchain=mf.toolchain_versions(), memory_plan=mf.jsonable(plan.to_dict()),
        passes=[mf.PassEntry(id=p["id"], changed=p["changed"]) for p in passes] + [
            mf.PassEntry(id=p["id"], changed=p["changed"], target=e.target,
                         component=e.component) for e, ps in _per_artifact(results) for p in ps],
        artifacts=entries, plan_vs_actual=_plan_vs_actual(plan, entries, build_dir),
        quantization_auto=auto, weights_source=_weights_source(resolved, spec_dir),
        calibration=calibration,
        golden=mf.GoldenInfo(cases=g.cases, prompt_tokens=g.prompt_tokens,
                             decode_steps=g.decode_steps, seed=g.seed,
                             files=_golden_files(build_dir)),
    )


def timings(records: dict[str, list[mf.StageTiming]], passes: list[dict[str, Any]],
            results: list[Any], started: float, peak_mb: float) -> mf.Timings:
    return mf.Timings(
        stages=records["stages"], targets=records["targets"],
        passes=[mf.StageTiming(stage=p["id"], seconds=p["seconds"]) for p in passes] + [
            mf.StageTiming(stage=f"{e.target}/{e.component}: {p['id']}", seconds=p["seconds"])
            for e, ps in _per_artifact(results) for p in ps],
        total_seconds=time.perf_counter() - started, peak_rss_mb=peak_mb or None)


def _per_artifact(results: list[Any]) -> list[tuple[mf.ArtifactEntry, list[dict[str, Any]]]]:
    return [(e, ps) for r in results for e, ps in zip(r.entries, r.passes)]


def _golden_files(build_dir: Path) -> dict[str, str]:
    return {p.relative_to(build_dir).as_posix(): mf.file_sha256(p)
            for p in sorted((build_dir / "golden").rglob("*")) if p.is_file()}


def _plan_vs_actual(plan: Any, entries: list[mf.ArtifactEntry], build_dir: Path
                    ) -> list[mf.PlanVsActual]:
    """Each artifact's bytes against the plan: the target's byte model for the decoder
    (omnic.targets.footprint, compiled code excluded), else the component's weight bytes."""
    from omnic.constants import Components
    from omnic.targets.footprint import TOLERANCE, measured_bytes

    models = {a["target"]: a for a in plan.artifacts if a.get("carried")}
    out = []
    for e in entries:
        model = models.get(e.target) if e.component == Components.DECODER else None
        if model is None:
            planned = sum(w.bytes for w in plan.weights if w.component == e.component) or None
            out.append(mf.PlanVsActual(
                target=e.target, component=e.component, path=e.path, planned_bytes=planned,
                actual_bytes=e.bytes, ratio=(e.bytes / planned) if planned else None))
            continue
        kept, skipped = measured_bytes(build_dir / e.path, model["excluded"])
        ratio = kept / model["bytes"]
        out.append(mf.PlanVsActual(
            target=e.target, component=e.component, path=e.path, planned_bytes=model["bytes"],
            actual_bytes=e.bytes, ratio=ratio, basis="target", compared_bytes=kept,
            excluded_bytes=skipped, tolerance=TOLERANCE,
            within_tolerance=abs(ratio - 1) <= TOLERANCE))
    return out


def _weights_source(resolved: Any, spec_dir: Path) -> dict[str, Any] | None:
    """The storage of a quantized weight source (a GGUF file), for the manifest."""
    if resolved.weights.source != "gguf":
        return None
    from omnic.importers.gguf import source_quantization

    return source_quantization(spec_dir / resolved.weights.path)


def _version() -> str:
    import omnic

    return omnic.__version__
