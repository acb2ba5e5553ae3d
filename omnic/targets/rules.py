"""What each target can carry, as one table of small rules (torch-free).

Each backend keeps its rules in a torch-free module `omnic/targets/<id>/rules.py` that registers
them on import (`@register`). Validation (`omnic.compiler.validate`) runs every rule of every
enabled target on the resolved spec and reports the findings at the field that must change; a
target's pre-flight `Target.check` calls `problems(spec, target_id)`, so both read the same table.

A rule states a hard limit of a toolchain or runtime ("error": the artifact cannot be built or
cannot follow the quantization plan) or something a user should know ("warning": built, but
slower or not deployable to the chosen device).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from omnic.quant.select import TensorScheme
    from omnic.spec import ResolvedSpec
    from omnic.spec.inventory import TensorInfo
    from omnic.targets.base import Problem

FieldPath = tuple


@dataclass(frozen=True)
class Finding:
    path: FieldPath  # the spec field to change, e.g. ("targets", "coreml", "deployment_target")
    message: str
    severity: str = "error"


@dataclass
class Context:
    """What a rule looks at: the resolved spec and the storage scheme of every tensor."""

    spec: "ResolvedSpec"
    tensors: list["TensorInfo"] = field(default_factory=list)
    schemes: dict[str, "TensorScheme"] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: "ResolvedSpec") -> "Context":
        from omnic.quant.select import tensor_schemes
        from omnic.spec.inventory import decoder_tensors

        tensors = decoder_tensors(spec.model)
        return cls(spec, tensors, tensor_schemes(spec, tensors))

    def using(self, scheme: str) -> list[tuple["TensorInfo", "TensorScheme"]]:
        """Tensors stored with `scheme`, with their TensorScheme."""
        return [(t, self.schemes[t.name]) for t in self.tensors
                if self.schemes[t.name].scheme == scheme]

    def source(self, ts: "TensorScheme") -> FieldPath:
        """The spec field that chose `ts`: the override, or the default weight scheme."""
        if ts.override is not None:
            return ("quantization", "overrides", ts.override)
        return ("quantization", "weights")


@dataclass(frozen=True)
class Rule:
    target: str
    id: str
    summary: str
    ref: str
    check: Callable[[Context], Iterable[Finding]]


RULES: list[Rule] = []


def register(target: str, rule_id: str, summary: str, ref: str):
    """Decorator: add a check function `(Context) -> Iterable[Finding]` to the table."""

    def deco(fn: Callable[[Context], Iterable[Finding]]):
        RULES.append(Rule(target, rule_id, summary, ref, fn))
        return fn

    return deco


def first(pairs: list, n: int = 2) -> str:
    """The first `n` tensor names of (TensorInfo, TensorScheme) pairs, for a message."""
    names = [t.name for t, _ in pairs[:n]]
    more = f" and {len(pairs) - n} more" if len(pairs) > n else ""
    return ", ".join(names) + more


# Validation imports the rule module of every enabled target, so `omnic validate` and the
# target's pre-flight `check` see the same table. A target without rules has no such module.
RULE_MODULE = "omnic.targets.{}.rules"


def load_rule_modules(targets: Iterable[str]) -> None:
    """Import `omnic.targets.<id>.rules` for each target that has one (registering its rules)."""
    for target in targets:
        name = RULE_MODULE.format(target)
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise


def findings(spec: "ResolvedSpec", targets: Iterable[str] | None = None,
             context: Context | None = None) -> list[tuple[Rule, Finding]]:
    """Every finding of every rule for the enabled targets (or the `targets` given)."""
    ctx = context or Context.of(spec)
    enabled = set(spec.targets.enabled() if targets is None else targets)
    load_rule_modules(sorted(enabled))
    return [(r, f) for r in RULES if r.target in enabled for f in r.check(ctx)]


def problems(spec: "ResolvedSpec", target_id: str) -> list["Problem"]:
    """The error findings for one target as `Problem`s (for `Target.check`)."""
    from omnic.spec.load import format_path
    from omnic.targets.base import Problem

    return [Problem(target_id, format_path(f.path), f.message)
            for _, f in findings(spec, [target_id]) if f.severity == "error"]
