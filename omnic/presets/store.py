"""Where preset files live and how they are read (torch-free).

Presets are data: `presets/devices/*.yaml`, `presets/models/*.yaml`, `presets/quant/*.yaml`, each
with a `# source:` comment. The one copy lives at the repository root; a wheel installs it under
`<prefix>/share/omnic/presets` (pyproject `[tool.setuptools.data-files]`). A source checkout and an
editable install read the repository copy, so there is never a second copy to keep in sync.
"""

from __future__ import annotations

import difflib
import os
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

# Spec field -> preset folder.
KINDS = {"device": "devices", "model": "models", "quantization": "quant"}
# Extra preset folders (os.pathsep-separated), searched before the built-in ones; each holds
# devices/, models/ and/or quant/ like the built-in folder.
ENV_PATH = "OMNIC_PRESET_PATH"


class UnknownPreset(LookupError):
    """A spec names a preset that does not exist."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        self.suggestions = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = (f"; did you mean {' or '.join(map(repr, self.suggestions))}?"
                if self.suggestions else "")
        super().__init__(
            f"unknown {kind} preset {name!r}{hint} (known: {', '.join(known) or 'none'})"
        )


@lru_cache(maxsize=1)
def builtin_dir() -> Path:
    """The built-in presets folder: the repository's `presets/`, else the installed data copy."""
    package_root = Path(__file__).resolve().parents[2]  # <root>/omnic/presets/store.py -> <root>
    candidates = [package_root / "presets"]
    for base in {sysconfig.get_path("data"), sys.prefix, getattr(sys, "base_prefix", sys.prefix)}:
        candidates.append(Path(base) / "share" / "omnic" / "presets")
    for candidate in candidates:
        if (candidate / "devices").is_dir():
            return candidate
    raise FileNotFoundError(
        "omnic presets not found; looked in " + ", ".join(str(c) for c in candidates)
    )


def search_dirs() -> list[Path]:
    """Preset roots in search order: $OMNIC_PRESET_PATH entries, then the built-in folder."""
    extra = [Path(p) for p in os.environ.get(ENV_PATH, "").split(os.pathsep) if p]
    return extra + [builtin_dir()]


def names(kind: str) -> list[str]:
    """Sorted preset names of one kind ("device", "model" or "quantization")."""
    found: set[str] = set()
    for root in search_dirs():
        folder = root / KINDS[kind]
        if folder.is_dir():
            found.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(found)


def path_of(kind: str, name: str) -> Path:
    """The file of a preset; raises UnknownPreset (with did-you-mean suggestions)."""
    for root in search_dirs():
        path = root / KINDS[kind] / f"{name}.yaml"
        if path.is_file():
            return path
    raise UnknownPreset(kind, name, names(kind))


def load_raw(kind: str, name: str) -> dict:
    """The preset's YAML mapping, unvalidated.

    Read by the specs' own loader (`omnic.spec.load.read_yaml`), with its input limits.

    Raises:
        omnic.spec.load.SpecError: the file cannot be read or parsed, or holds duplicate keys.
        ValueError: the file does not hold a mapping.
    """
    from omnic.spec.load import SpecError, read_yaml

    doc, problems = read_yaml(path_of(kind, name))
    if doc is None or problems:
        raise SpecError(problems)
    if not isinstance(doc.data, dict):
        raise ValueError(f"{path_of(kind, name)}: a preset file must hold a mapping")
    return doc.data


def load(kind: str, name: str):
    """The preset as its spec model: Device, Model or Quantization."""
    from omnic.spec import Device, Model, Quantization

    cls = {"device": Device, "model": Model, "quantization": Quantization}[kind]
    return cls.model_validate(load_raw(kind, name))
