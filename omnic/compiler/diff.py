"""Compare two builds' manifests, and judge the difference against `--fail-on` rules.

`diff_manifests(old, new)` explains what changed: the spec by field path, the toolchain, the
passes, artifacts added or removed, and per artifact its size, hash, precision, op histogram,
quantization and golden status and metrics. `timings` are never compared (they always differ).

Rules (comma-separated, `--fail-on size:+5%,kld:+0.01,golden:failed`):
    size:+5%        an artifact grew by more than 5 % (size:+1000000 for bytes; - for shrinking;
                    no sign: either way)
    <metric>:+X     a golden metric (kld, nmse, max_abs, top1, ...) rose by more than X
                    (absolute, or X% relative); top1:-0.02 fails when it dropped by > 0.02
    golden:failed   an artifact of NEW failed its golden check (also golden:not_run,
                    golden:regressed = passed before and not now)
    hash:changed    any artifact's bytes changed, or one was added or removed
    ops:changed     an op histogram changed
    artifacts:added / artifacts:removed
    spec:changed    the resolved spec changed
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from omnic.golden import metrics as M
from omnic.compiler.manifest import ArtifactEntry, Manifest


@dataclass
class Change:
    path: str
    old: Any
    new: Any


@dataclass
class ArtifactDiff:
    target: str
    component: str
    path: str  # NEW's path (OLD's for a removed artifact)
    status: str  # added | removed | changed | same
    old_path: str | None = None
    bytes: tuple[int, int] | None = None
    sha256_changed: bool = False
    precision: tuple[str, str] | None = None
    op_histogram: dict[str, tuple[int, int]] = field(default_factory=dict)
    quantization: list[Change] = field(default_factory=list)
    golden_status: tuple[str, str] | None = None
    metrics: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    @property
    def size_delta(self) -> tuple[int, float | None] | None:
        if self.bytes is None:
            return None
        old, new = self.bytes
        return new - old, ((new - old) / old if old else None)


@dataclass
class ManifestDiff:
    old_name: str
    new_name: str
    spec: list[Change]
    toolchain: list[Change]
    passes: list[Change]
    status: tuple[str, str]
    artifacts: list[ArtifactDiff]

    @property
    def identical(self) -> bool:
        return not (self.spec or self.toolchain or self.passes
                    or any(a.status != "same" for a in self.artifacts))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": [1, 2]}} -> {"a.b[0]": 1, "a.b[1]": 2}; empty containers are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k in sorted(value):
            out.update(flatten(value[k], f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def dict_changes(old: Any, new: Any) -> list[Change]:
    """Changed leaves by path; list items that changed alike in consecutive places are one change
    (`model.layers[0-5].rope.theta`: the per-layer table follows `model.rope.theta`)."""
    a, b = flatten(old), flatten(new)
    changes = [Change(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
               if a.get(k) != b.get(k)]
    runs: dict[tuple, list[int]] = {}
    order: list[tuple] = []
    for c in changes:
        m = _INDEX.search(c.path)
        key = ((c.path[:m.start()], c.path[m.end():], repr(c.old), repr(c.new)) if m
               else (c.path, "", "", ""))
        if key not in runs:
            order.append(key)
            runs[key] = []
        if m:
            runs[key].append(int(m.group(1)))
    out = []
    by_path = {c.path: c for c in changes}
    for key in order:
        head, tail = key[0], key[1]
        if not runs[key]:
            out.append(by_path[head])
            continue
        idx = sorted(runs[key])
        first = by_path[f"{head}[{idx[0]}]{tail}"]
        spans, start = [], idx[0]
        for prev, cur in zip(idx, idx[1:] + [None]):
            if cur != prev + 1:
                spans.append(f"{head}[{start}]{tail}" if start == prev
                             else f"{head}[{start}-{prev}]{tail}")
                start = cur
        out += [Change(path, first.old, first.new) for path in spans]
    return sorted(out, key=lambda c: c.path)


_INDEX = re.compile(r"\[(\d+)\]")


def _pair(old: list[ArtifactEntry], new: list[ArtifactEntry]
          ) -> list[tuple[ArtifactEntry | None, ArtifactEntry | None]]:
    """Match artifacts by (target, component, path); then by (target, component) when that is
    unique on both sides (a renamed file, e.g. model-Q4_0.gguf -> model-Q8_0.gguf)."""
    key = lambda a: (a.target, a.component, a.path)  # noqa: E731
    old_by, new_by = {key(a): a for a in old}, {key(a): a for a in new}
    pairs = [(old_by[k], new_by[k]) for k in new_by if k in old_by]
    rest_old = [a for k, a in old_by.items() if k not in new_by]
    rest_new = [a for k, a in new_by.items() if k not in old_by]
    for n in list(rest_new):
        same = [o for o in rest_old if (o.target, o.component) == (n.target, n.component)]
        others = [m for m in rest_new if (m.target, m.component) == (n.target, n.component)]
        if len(same) == 1 and len(others) == 1:
            pairs.append((same[0], n))
            rest_old.remove(same[0])
            rest_new.remove(n)
    pairs += [(o, None) for o in rest_old] + [(None, n) for n in rest_new]
    return pairs


def _artifact_diff(o: ArtifactEntry | None, n: ArtifactEntry | None) -> ArtifactDiff:
    if o is None:
        return ArtifactDiff(n.target, n.component, n.path, "added")
    if n is None:
        return ArtifactDiff(o.target, o.component, o.path, "removed")
    d = ArtifactDiff(n.target, n.component, n.path, "same",
                     old_path=o.path if o.path != n.path else None)
    if o.bytes != n.bytes:
        d.bytes = (o.bytes, n.bytes)
    d.sha256_changed = o.sha256 != n.sha256
    if o.precision != n.precision:
        d.precision = (o.precision, n.precision)
    for op in sorted(set(o.op_histogram) | set(n.op_histogram)):
        a, b = o.op_histogram.get(op, 0), n.op_histogram.get(op, 0)
        if a != b:
            d.op_histogram[op] = (a, b)
    d.quantization = dict_changes(o.quantization, n.quantization)
    if o.golden.status != n.golden.status:
        d.golden_status = (o.golden.status, n.golden.status)
    for m in sorted(set(o.golden.metrics) | set(n.golden.metrics)):
        a, b = o.golden.metrics.get(m), n.golden.metrics.get(m)
        if a != b:
            d.metrics[m] = (a, b)
    if (d.bytes or d.sha256_changed or d.precision or d.op_histogram or d.quantization
            or d.golden_status or d.metrics or d.old_path):
        d.status = "changed"
    return d


def diff_manifests(old: Manifest, new: Manifest) -> ManifestDiff:
    """What changed from OLD to NEW (timings excluded)."""
    return ManifestDiff(
        old_name=old.name, new_name=new.name,
        spec=dict_changes(old.spec, new.spec),
        toolchain=dict_changes(old.toolchain, new.toolchain),
        passes=dict_changes([p.model_dump() for p in old.passes],
                            [p.model_dump() for p in new.passes]),
        status=(old.status, new.status),
        artifacts=[_artifact_diff(o, n) for o, n in _pair(old.artifacts, new.artifacts)],
    )


# -- rules ---------------------------------------------------------------------------------------

_RULE = re.compile(r"^(?P<name>[a-z0-9_]+):(?P<value>.+)$")
_AMOUNT = re.compile(r"^(?P<sign>[+-]?)(?P<num>\d+(\.\d*)?([eE][-+]?\d+)?|\.\d+)(?P<pct>%?)$")
_KEYWORDS = {
    "golden": ("failed", "not_run", "regressed"),
    "hash": ("changed",),
    "ops": ("changed",),
    "artifacts": ("added", "removed"),
    "spec": ("changed",),
}


class RuleError(ValueError):
    """A --fail-on rule that cannot be parsed."""


@dataclass(frozen=True)
class Rule:
    name: str  # size, a metric name, or a keyword rule
    value: str
    sign: str = ""  # "+", "-" or "" (either way)
    amount: float = 0.0
    relative: bool = False

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"


def parse_rules(text: str) -> list[Rule]:
    """Parse `size:+5%,kld:+0.01,golden:failed`."""
    rules = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = _RULE.match(part)
        if not m:
            raise RuleError(f"--fail-on {part!r}: expected NAME:VALUE")
        name, value = m["name"], m["value"].strip()
        if name in _KEYWORDS:
            if value not in _KEYWORDS[name]:
                raise RuleError(f"--fail-on {part!r}: {name} takes one of {_KEYWORDS[name]}")
            rules.append(Rule(name, value))
            continue
        if name != "size" and name not in M.ALL:
            raise RuleError(f"--fail-on {part!r}: unknown rule {name!r}; use size, a golden "
                            f"metric ({', '.join(M.ALL)}) or {', '.join(_KEYWORDS)}")
        a = _AMOUNT.match(value)
        if not a:
            raise RuleError(f"--fail-on {part!r}: expected an amount like +5% or +0.01")
        rules.append(Rule(name, value, a["sign"], float(a["num"]), bool(a["pct"])))
    return rules


def _exceeds(rule: Rule, old: float, new: float) -> bool:
    delta = new - old
    if rule.relative:
        if old == 0:
            return delta != 0
        delta = delta / abs(old) * 100.0
    if rule.sign == "+":
        return delta > rule.amount
    if rule.sign == "-":
        return -delta > rule.amount
    return abs(delta) > rule.amount


def broken_rules(d: ManifestDiff, new: Manifest, rules: list[Rule]) -> list[str]:
    """One message per broken rule and offending artifact; empty when every rule holds."""
    out = []
    for rule in rules:
        for a in d.artifacts:
            label = f"{a.target}/{a.component} {a.path}"
            if rule.name == "size" and a.bytes and _exceeds(rule, *a.bytes):
                out.append(f"{rule}: {label} {a.bytes[0]} -> {a.bytes[1]} bytes")
            elif rule.name in M.ALL and rule.name in a.metrics:
                old, new_v = a.metrics[rule.name]
                if old is not None and new_v is not None and _exceeds(rule, old, new_v):
                    out.append(f"{rule}: {label} {rule.name} {old:.4g} -> {new_v:.4g}")
            elif rule.name == "hash" and (a.sha256_changed or a.status in ("added", "removed")):
                what = a.status if a.status in ("added", "removed") else "bytes changed"
                out.append(f"{rule}: {label} {what}")
            elif rule.name == "ops" and a.op_histogram:
                ops = ", ".join(f"{k} {v[0]}->{v[1]}" for k, v in list(a.op_histogram.items())[:5])
                out.append(f"{rule}: {label} {ops}")
            elif rule.name == "artifacts" and a.status == rule.value:
                out.append(f"{rule}: {label}")
            elif rule.name == "golden" and rule.value == "regressed" and a.golden_status \
                    and a.golden_status[0] == "passed":
                out.append(f"{rule}: {label} {a.golden_status[0]} -> {a.golden_status[1]}")
        if rule.name == "golden" and rule.value in ("failed", "not_run"):
            for e in new.artifacts:
                if e.golden.status == rule.value:
                    out.append(f"{rule}: {e.target}/{e.component} {e.path}: {e.golden.reason}")
        if rule.name == "spec" and d.spec:
            out.append(f"{rule}: " + ", ".join(c.path for c in d.spec[:8]))
    return out
