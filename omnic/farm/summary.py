"""What the farm reports of one build, read from its manifest (and of its bench run).

Per target: the bytes of its artifacts, its golden status (failed over not_run over passed), the
decoder's KL divergence against fp32 (`golden.metrics.kld`) and, with --bench, decode tokens/s.
"""

from __future__ import annotations

from typing import Any

from omnic.constants import Components, GoldenStatus

# A target's golden status is its worst artifact's.
_WORST = (GoldenStatus.FAILED, GoldenStatus.NOT_RUN, GoldenStatus.PASSED)


def golden_of(statuses: list[str]) -> str | None:
    """The worst of artifact golden statuses (None for no artifact)."""
    return next((s for s in _WORST if s in statuses), None)


def manifest_summary(manifest: Any) -> dict[str, Any]:
    """The farm's view of one build: status, memory fit, and per target bytes, golden, KLD.

    Args:
        manifest: an `omnic.compiler.manifest.Manifest`.
    """
    plan = manifest.memory_plan or {}
    targets: dict[str, Any] = {}
    for t in manifest.targets:
        arts = [a for a in manifest.artifacts if a.target == t]
        decoder = next((a for a in arts if a.component == Components.DECODER), None)
        targets[t] = {
            "bytes": sum(a.bytes for a in arts),
            "golden": golden_of([a.golden.status for a in arts]),
            "kld": decoder.golden.metrics.get("kld") if decoder is not None else None,
            "artifacts": [{"component": a.component, "path": a.path, "bytes": a.bytes,
                           "precision": a.precision, "golden": a.golden.status,
                           "reason": a.golden.reason} for a in arts],
        }
    return {
        "name": manifest.name, "status": manifest.status, "spec_sha256": manifest.spec_sha256,
        "memory": memory_of(plan), "targets": targets,
        "seconds": manifest.timings.total_seconds,
        "peak_rss_mb": manifest.timings.peak_rss_mb,
    }


def memory_of(plan: dict[str, Any]) -> dict[str, Any]:
    """The device fit of a memory plan (`MemoryPlan.to_dict()` or a manifest's memory_plan)."""
    return {k: plan.get(k) for k in ("device", "fits", "total_bytes", "budget_bytes",
                                     "headroom_bytes")}


def golden_failures(summary: dict[str, Any]) -> list[str]:
    """`target/component: reason` of every artifact whose golden check failed."""
    return [f"{t}/{a['component']}: {a['reason'] or 'failed'}"
            for t, row in summary["targets"].items() for a in row["artifacts"]
            if a["golden"] == GoldenStatus.FAILED]


def bench_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Per target of an `omnic.bench.bench_build` report: status, reason, decode tokens/s
    (the median of its runs)."""
    rows = {}
    for r in report.get("rows", []):
        decode = r.get("decode_tokens_per_s") or {}
        rows[r["target"]] = {"status": r["status"], "reason": r.get("reason"),
                             "decode_tokens_per_s": decode.get("median")}
    return {"targets": rows, "settings": report.get("settings"),
            "bandwidth_gbps": (report.get("bandwidth") or {}).get("gbps")}
