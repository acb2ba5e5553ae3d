"""`omnic import`: a spec for a checkpoint that compiles as written.

The importers (omnic.importers.hf, omnic.importers.gguf) translate a checkpoint into the spec's
model, weights and tokenizer. This stage adds what they cannot know: the device, the
quantization, and the targets. Unless the user names them, the targets are every target whose
pre-flight (`Target.check`, the same check `omnic compile` runs) accepts the model on that device
with that quantization; the others are reported with the reason.

Torch-free, like `omnic validate`: nothing is built and no weight is read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from omnic.constants import Targets

_log = logging.getLogger(__name__)


class ImportFailed(ValueError):
    """The source cannot be imported, or an option names something that does not exist."""


@dataclass
class Imported:
    """What `import_spec` wrote."""

    path: Path  # the spec file
    data: dict[str, Any]  # its content
    source: str  # what was read, for the spec's header
    dropped: dict[str, str] = field(default_factory=dict)  # target -> why it is not enabled


def _check_options(device: str, quant: str | None, targets: Sequence[str] | None) -> None:
    from omnic.presets import store
    from omnic.spec.validate import did_you_mean

    for kind, value in (("device", device), ("quantization", quant)):
        if value is not None:
            try:
                store.path_of(kind, value)
            except store.UnknownPreset as err:
                raise ImportFailed(str(err)) from None
    for t in targets or ():
        if t not in Targets.ALL:
            raise ImportFailed(f"unknown target {t!r}{did_you_mean(t, Targets.ALL)}")


def _read(source: Path, out: Path, context_length: int | None, name: str | None
          ) -> tuple[dict[str, Any], str]:
    """(the importer's spec data, a description of the source)."""
    from omnic.importers.hf import UnsupportedModel

    try:
        if source.is_file():
            from omnic.importers.gguf import import_gguf

            return import_gguf(source, out, context_length=context_length, name=name)
        from omnic.importers.hf import import_hf

        return import_hf(source, out, context_length=context_length, name=name)
    except UnsupportedModel as err:
        raise ImportFailed(str(err)) from None


def carrying_targets(data: dict[str, Any], spec_dir: Path) -> tuple[list[str], dict[str, str]]:
    """(the targets whose pre-flight accepts the spec `data`, {target: why not} for the rest)."""
    from omnic.compiler.validate import resolve
    from omnic.spec.spec import Spec
    from omnic.targets.base import get_target

    spec = Spec.model_validate({**data, "targets": {t: {} for t in Targets.ALL}})
    resolved = resolve(spec, spec_dir)
    chosen, dropped = [], {}
    for t in Targets.ALL:
        problems = get_target(t).check(resolved)
        if problems:
            dropped[t] = "; ".join(f"{p.field}: {p.message}" for p in problems)
        else:
            chosen.append(t)
    return chosen, dropped


def import_spec(source: Path, out: Path, *, context_length: int | None = None,
                name: str | None = None, device: str = "desktop_cpu", quant: str | None = None,
                targets: Sequence[str] | None = None) -> Imported:
    """Write the spec for the checkpoint at `source` (a Hugging Face directory or a GGUF file)
    to `out`, and return what was written.

    Raises:
        ImportFailed: an unsupported architecture or feature (named), a source that is not a
            checkpoint, an unknown preset or target. Nothing is written.
    """
    source, out = Path(source), Path(out)
    _check_options(device, quant, targets)
    data, described = _read(source, out, context_length, name)
    data["device"] = device
    if quant is not None:
        data["quantization"] = quant
    dropped: dict[str, str] = {}
    if targets is None:
        targets, dropped = carrying_targets(data, out.parent)
    data["targets"] = {t: {} for t in targets}
    header = (f"# Imported by `omnic import` from {described}.\n"
              f"# Compile with: omnic compile {out.name} -o build/{data['name']}\n")
    if data["tokenizer"]["kind"] == "byte":
        header += "# No tokenizer.json in the checkpoint: the byte tokenizer stands in.\n"
    for t, why in dropped.items():
        header += f"# Not enabled: {t}: {why}\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100,
                          allow_unicode=True)
    out.write_text(header + body, encoding="utf-8")
    return Imported(out, data, described, dropped)
