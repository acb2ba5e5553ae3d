"""The package's layers only point down, no module imports another's private name, no cycles.

Every import statement of every module under omnic/ is read with `ast`: module level, inside
functions, and under `if TYPE_CHECKING:` alike (an import hidden in a function is still a
dependency). Layers, lowest first (DESIGN.md, ARCHITECTURE.md):
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "omnic"

LAYERS = [
    "constants",   # names that outlive a release
    "digest",      # sha256 of files, directories and canonical JSON
    "spec",        # pydantic models of the spec, YAML loading, schema-level checks (torch-free)
    "presets",     # preset store and resolving (torch-free)
    "quant",       # one numpy reference per scheme, scheme selection
    "tokenizer",   # tokenizers from the spec
    "formats",     # file formats read and written alike (GGUF architectures, vocabularies)
    "importers",   # checkpoint files (safetensors, Hugging Face) -> specs and canonical weights
    "model",       # the torch model, built from the spec's weights
    "runtime",     # running a model: torch reference runner, greedy loop, pages, media
    "passes",      # the Program value, the pass runner and model-level passes
    "targets",     # one package per backend
    "golden",      # references, metrics, tolerances, the golden check
    "compiler",    # the pipeline's stages, plan, manifest, diff
    "bench",       # omnic bench: measuring built artifacts
    "farm",        # omnic farm: a matrix of compiles on Ray, and its report
    "tools",       # generators of checked-in files (schemas)
    "cli",         # thin command modules
]

# (importer, imported) edges that may point up, each with its reason. Keep it empty.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every omnic import in the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("omnic")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("omnic"):
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                out.append((sub, "", node.lineno) if sub in MODULES
                           else (module, alias.name, node.lineno))
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # `omnic` itself: the version
        return 0
    return LAYERS.index(parts[1])


EDGES = {name: _imports(name, path) for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    unplaced = sorted({m.split(".")[1] for m in MODULES if "." in m} - set(LAYERS))
    assert not unplaced, f"top-level packages with no layer in LAYERS: {unplaced}"


def test_layers_only_point_down():
    upward = []
    for src, imports in EDGES.items():
        for dst, _, line in imports:
            if _layer(dst) > _layer(src) and (src, dst) not in ALLOWED_UPWARD:
                upward.append(f"{MODULES[src].relative_to(PACKAGE.parent)}:{line} {src} -> {dst}"
                              f" ({LAYERS[_layer(src)]} < {LAYERS[_layer(dst)]})")
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_allowlist_is_used_and_explained():
    edges = {(src, dst) for src, imports in EDGES.items() for dst, _, _ in imports}
    stale = [k for k in ALLOWED_UPWARD if k not in edges]
    assert not stale, f"allowlist entries no import needs any more: {stale}"
    assert all(reason.strip() for reason in ALLOWED_UPWARD.values())


def test_no_private_name_crosses_a_module():
    private = [f"{src}:{line} imports {name} from {dst}"
               for src, imports in EDGES.items() for dst, name, line in imports
               if name.startswith("_") and not name.startswith("__") and dst != src]
    assert not private, "\n".join(private)


def test_no_import_cycles():
    graph = defaultdict(set)
    for src, imports in EDGES.items():
        for dst, _, _ in imports:
            if dst != src and dst in MODULES:
                graph[src].add(dst)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            # a package's __init__ re-exporting its own modules is how a package has a face,
            # not a cycle between modules
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("path", sorted(MODULES.values()), ids=lambda p: str(p.name))
def test_small_files(path):
    lines = path.read_text(encoding="utf-8").count("\n")
    assert lines <= 500, f"{path.relative_to(PACKAGE.parent)} has {lines} lines (limit 500)"
