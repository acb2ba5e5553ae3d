"""Resolve a spec: inline every preset and make every derived value explicit (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from omnic.presets import store
from omnic.spec import Model, ResolvedSpec, Spec

# `quantization: auto`: resolved fields (quantization still "auto") -> (the spec resolved with
# the placeholder preset, its name) or (None, why no preset is eligible). Choosing reads the
# memory plan and the targets' rules, so the compiler passes it in
# (omnic.compiler.auto_quant.resolve_with_auto).
AutoQuant = Callable[[dict[str, Any]], "tuple[ResolvedSpec | None, str]"]


def explicit_model(model: Model) -> Model:
    """The model with n_kv_heads, head_dim and the per-layer table filled in (nothing left to a
    default rule)."""
    data = model.model_dump()
    data["n_kv_heads"] = model.kv_heads
    data["head_dim"] = model.dim_per_head
    data["layers"] = [row.model_dump() for row in model.table]
    return Model.model_validate(data)


def _merge_extends(spec: Spec, spec_dir: Path) -> Spec:
    from pydantic import ValidationError

    from omnic.spec.extends import merge_data
    from omnic.spec.load import Diagnostic, SpecError

    data, problems = merge_data(spec.model_dump(exclude_unset=True), list(spec.extends), spec_dir)
    if problems:
        raise SpecError(problems)
    try:
        return Spec.model_validate(data)
    except ValidationError as err:
        raise SpecError([Diagnostic(None, tuple(e["loc"]), e["msg"])
                         for e in err.errors()]) from None


def resolve(spec: Spec, spec_dir: Path | str, auto: AutoQuant | None = None) -> ResolvedSpec:
    """Inline presets and fill derived values.

    Args:
        spec: a validated spec as written. When `spec.extends` is not empty (a Spec built in code
            rather than by `omnic.spec.load`), the extended files are merged first, relative to
            `spec_dir`.
        spec_dir: the folder of the spec file; relative paths in the spec are relative to it.
        auto: how `quantization: auto` is planned (`omnic.compiler.validate.resolve` passes
            `omnic.compiler.auto_quant.resolve_with_auto`); a spec with `auto` needs it.

    Returns:
        A ResolvedSpec: device, model and quantization inlined, n_kv_heads and head_dim set,
        extends empty.

    Raises:
        omnic.presets.store.UnknownPreset: a preset name does not exist.
        omnic.spec.load.SpecError: an extended file cannot be read, or the merge is invalid, or
            `quantization: auto` has no eligible preset (or no `auto` was given).
    """
    if isinstance(spec, ResolvedSpec):
        return spec
    if spec.extends:
        spec = _merge_extends(spec, Path(spec_dir))
    device = store.load("device", spec.device) if isinstance(spec.device, str) else spec.device
    model = store.load("model", spec.model) if isinstance(spec.model, str) else spec.model
    quant = spec.quantization
    if isinstance(quant, str) and quant != "auto":
        quant = store.load("quantization", quant)
    fields = {name: getattr(spec, name) for name in Spec.model_fields}
    fields.update(extends=(), device=device, model=explicit_model(model), quantization=quant)
    if quant == "auto":  # planned with the worst case, chosen at compile (auto_quant)
        from omnic.spec.load import Diagnostic, SpecError

        if auto is None:
            raise SpecError([Diagnostic(None, ("quantization",), (
                "quantization auto is decided by the compiler; resolve the spec with "
                "omnic.compiler.validate.resolve"))])
        resolved, why = auto(fields)
        if resolved is None:
            raise SpecError([Diagnostic(None, ("quantization",), why)])
        return resolved
    return ResolvedSpec(**fields)
