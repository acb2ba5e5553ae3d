"""Write the generated JSON Schemas under schemas/ (`python -m omnic.tools.write_schemas`).

The schemas are generated from the pydantic models and never edited by hand; a test fails when a
committed file differs from what this tool writes. To add a schema, add one entry to `SCHEMAS`:
the file stem and a function returning the schema dict (import its models inside the function,
and return None when they do not exist yet: the schema is then skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"


def _spec() -> dict:
    from omnic.spec import Spec

    return Spec.model_json_schema()


def _manifest() -> dict | None:
    # Owned by omnic/compiler/manifest.py, which may not exist yet: skip it then.
    try:
        from omnic.compiler import manifest
    except ModuleNotFoundError as err:
        if err.name in ("omnic.compiler.manifest",):
            return None
        raise
    schema_fn = getattr(manifest, "json_schema", None)  # the owner's header wins
    if callable(schema_fn):
        return schema_fn()
    model = getattr(manifest, "Manifest", None)
    return model.model_json_schema() if hasattr(model, "model_json_schema") else None


def _farm() -> dict:
    from omnic.farm.matrix import Matrix

    return Matrix.model_json_schema()


# file stem -> (title, builder). Order is the order of `omnic schema --help`.
SCHEMAS: dict[str, tuple[str, Callable[[], dict | None]]] = {
    "omnic-spec": ("omnic spec", _spec),
    "omnic-manifest": ("omnic build manifest", _manifest),
    "omnic-farm": ("omnic farm matrix", _farm),
}


def build(name: str) -> dict | None:
    """The schema named `name` with its $schema/$id header, or None when not available."""
    title, builder = SCHEMAS[name]
    body = builder()
    if body is None:
        return None
    header = {"$schema": SCHEMA_DRAFT, "$id": f"https://omnic.dev/schemas/{name}.schema.json"}
    body.setdefault("title", title)
    return {**header, **body}


def render(name: str) -> str:
    """The schema as the exact text written to schemas/<name>.schema.json."""
    return json.dumps(build(name), indent=2, ensure_ascii=False) + "\n"


def available() -> list[str]:
    """Names of the schemas whose models exist."""
    return [name for name in SCHEMAS if build(name) is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail (1) when a file is stale")
    parser.add_argument("--out", type=Path, default=SCHEMAS_DIR, help="output folder")
    args = parser.parse_args(argv)
    stale = []
    for name in available():
        path = args.out / f"{name}.schema.json"
        text = render(name)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print("stale: " + ", ".join(stale) + " (run python -m omnic.tools.write_schemas)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
