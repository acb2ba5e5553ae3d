"""Reading YAML with locations: every field path of a document maps to FILE:LINE:COL.

`read_yaml(path)` parses one file with `LocLoader` (a `yaml.SafeLoader` that keeps node marks)
and returns a `Document`: the plain data (dicts, lists, scalars) plus a table from field path,
e.g. ("model", "n_kv_heads") or ("quantization", "overrides", 0, "match"), to the position of
that key (or list item) in the file. Validation messages use it to say where a mistake is.

Every spec, extended file and preset is read here, so the input limits live here too: a file
larger than `MAX_FILE_BYTES` is refused before it is parsed, and a document whose aliases would
expand past `MAX_NODES` ("billion laughs") before it is constructed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

FieldPath = tuple[Any, ...]  # str keys and int list indices

# Input limits. The largest spec shipped is 2.5 kB and 300 nodes; these leave room for long
# override lists while refusing, in milliseconds, a file the parser would need minutes and
# gigabytes for (measured before these limits: a 49 MB spec, 81 s and 2.2 GB; nine nested
# aliases of nine items each, 37 s and a MemoryError).
MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000  # YAML nodes after alias expansion: an alias counts its whole value again


@dataclass(frozen=True)
class Location:
    """A position in a file; line and column count from 1, like editors and compilers do."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def format_path(path: Iterable[Any]) -> str:
    """("quantization", "overrides", 0, "scheme") -> "quantization.overrides[0].scheme"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


@dataclass(frozen=True)
class Diagnostic:
    """One finding about a spec: where, which field, what; an error or a warning."""

    location: Location | None
    path: FieldPath
    message: str
    severity: str = "error"  # "error" | "warning"

    @property
    def field(self) -> str:
        return format_path(self.path)

    def __str__(self) -> str:
        where = f"{self.location} " if self.location else ""
        what = f"{self.field}: " if self.path else ""
        tag = "warning: " if self.severity == "warning" else ""
        return f"{where}{what}{tag}{self.message}"


class SpecError(Exception):
    """A spec could not be loaded or resolved; `diagnostics` holds every error found."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


@dataclass
class Document:
    """Plain YAML data with the location of every field path.

    Attributes:
        file: the path as it is displayed in messages.
        data: what `yaml.safe_load` would return.
        locations: field path -> location of its key (mappings) or item (lists); () is the
            document start. Merged documents (extends) keep each key's own file.
    """

    file: str
    data: Any
    locations: dict[FieldPath, Location] = field(default_factory=dict)

    def locate(self, path: Iterable[Any]) -> Location:
        """The location of `path`, or of its nearest ancestor present in the file (a missing
        field is reported where its parent mapping is)."""
        path = tuple(path)
        while path:
            if path in self.locations:
                return self.locations[path]
            path = path[:-1]
        return self.locations.get((), Location(self.file, 1, 1))


class LocLoader(yaml.SafeLoader):
    """A SafeLoader whose composed nodes are walked afterwards to record key and item marks."""


def _loc(file: str, node: yaml.Node) -> Location:
    return Location(file, node.start_mark.line + 1, node.start_mark.column + 1)


def _duplicates(node: yaml.Node, file: str, path: FieldPath, seen: set[int]) -> list[Diagnostic]:
    """Duplicate keys in a mapping (YAML loaders silently keep the last one)."""
    if id(node) in seen:  # aliases may repeat a node
        return []
    seen.add(id(node))
    out: list[Diagnostic] = []
    if isinstance(node, yaml.MappingNode):
        keys: set[Any] = set()
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge":
                continue
            key = knode.value if isinstance(knode, yaml.ScalarNode) else None
            if key is not None and key in keys:
                out.append(Diagnostic(_loc(file, knode), path + (key,),
                                      "duplicate key; the later value would silently win"))
            keys.add(key)
            out += _duplicates(vnode, file, path + (key,), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _duplicates(item, file, path + (i,), seen)
    return out


def _record(loader: LocLoader, node: yaml.Node, file: str, path: FieldPath,
            locations: dict[FieldPath, Location], seen: set[int]) -> None:
    # An aliased collection is walked once: its other uses are located at their own key (this
    # also keeps recursive or exponentially nested aliases, "billion laughs", cheap).
    if isinstance(node, yaml.CollectionNode):
        if id(node) in seen:
            return
        seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for knode, vnode in node.value:  # merge keys (<<) are already flattened in place
            key = loader.construct_object(knode, deep=True)
            if isinstance(key, (list, dict)):
                continue
            locations[path + (key,)] = _loc(file, knode)
            _record(loader, vnode, file, path + (key,), locations, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            locations[path + (i,)] = _loc(file, item)
            _record(loader, item, file, path + (i,), locations, seen)


class _TooLarge(Exception):
    def __init__(self, node: yaml.Node, message: str):
        self.node, self.message = node, message


def _expanded_nodes(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """The node count of `node` with every alias expanded, without expanding anything: each
    distinct node is counted once and its size reused wherever an alias repeats it.

    Raises:
        _TooLarge: the expansion passes MAX_NODES, or a node contains itself through an alias.
    """
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise _TooLarge(node, "recursive alias: this value contains itself")
    open_.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    total = 1
    for child in children:
        total += _expanded_nodes(child, sizes, open_)
        if total > MAX_NODES:
            raise _TooLarge(node, f"aliases expand this value to more than {MAX_NODES:,} YAML "
                            "nodes (a \"billion laughs\"); a spec has a few hundred: write "
                            "the values out or use fewer aliases")
    open_.discard(id(node))
    sizes[id(node)] = total
    return total


def parse_yaml(text: str, file: str) -> tuple[Document | None, list[Diagnostic]]:
    """Parse YAML text; a syntax error becomes a located diagnostic instead of an exception.

    A document larger than MAX_NODES once its aliases are expanded is refused before it is
    constructed (constructing is cheap, aliases share objects, but everything that walks the
    data afterwards, pydantic first, would expand it).
    """
    loader = LocLoader(text)
    loader.name = file
    try:
        node = loader.get_single_node()
        if node is not None:
            _expanded_nodes(node, {}, set())
        # Duplicates first: constructing flattens merge keys (<<) into the mapping in place.
        diagnostics = _duplicates(node, file, (), set()) if node is not None else []
        data = loader.construct_document(node) if node is not None else None
        locations: dict[FieldPath, Location] = {(): Location(file, 1, 1)}
        if node is not None:
            locations[()] = _loc(file, node)
            _record(loader, node, file, (), locations, set())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        what = err.problem or "invalid YAML"
        if err.context:
            what = f"{err.context}, {what}"
        return None, [Diagnostic(where, (), f"YAML syntax error: {what}")]
    except yaml.YAMLError as err:  # e.g. a reader error on bad bytes
        return None, [Diagnostic(Location(file, 1, 1), (), f"YAML error: {err}")]
    except _TooLarge as err:
        return None, [Diagnostic(_loc(file, err.node), (), err.message)]
    except RecursionError:  # the composer recurses once per nesting level
        return None, [Diagnostic(Location(file, 1, 1), (), "YAML nested too deeply (a spec "
                                 "nests a few levels)")]
    finally:
        loader.dispose()
    return Document(file, data, locations), diagnostics


def read_yaml(path: Path | str,
              display: str | None = None) -> tuple[Document | None, list[Diagnostic]]:
    """Read and parse one YAML file (see `parse_yaml`); an unreadable file, or one larger than
    MAX_FILE_BYTES, is a diagnostic."""
    file = display or str(path)
    try:
        with open(path, "rb") as f:  # never more than the limit, whatever stat says (/dev/zero)
            raw = f.read(MAX_FILE_BYTES + 1)
            if len(raw) > MAX_FILE_BYTES:
                size = max(os.fstat(f.fileno()).st_size, len(raw))
                return None, [Diagnostic(None, (), f"{file}: {size:,} bytes, more than the "
                                         f"{MAX_FILE_BYTES:,} a spec file may have (specs are a "
                                         "few kB); not parsed")]
        text = raw.decode("utf-8")
    except FileNotFoundError:
        return None, [Diagnostic(None, (), f"{file}: no such file")]
    except (OSError, UnicodeDecodeError) as err:
        return None, [Diagnostic(None, (), f"{file}: cannot read: {err}")]
    return parse_yaml(text, file)
