"""The malformed-spec corpus: every file must fail `omnic validate` with exit status 2 and report
each expected error at its file, line, column and field.

Each tests/spec/malformed/*.yaml states its expectations in leading comments:

    # expect: LINE:COL FIELD: MESSAGE FRAGMENT
    # expect: OTHER_FILE:LINE:COL FIELD: ...     (a file relative to the spec, for extends)

FIELD is `-` for errors that belong to no field (YAML syntax). Several expects = several errors
that must all be reported by one run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from omnic.cli.main import main

CORPUS = Path(__file__).parent / "malformed"
FILES = sorted(CORPUS.glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (?:(?P<file>[^\s:]+):)?(?P<line>\d+):(?P<col>\d+) "
                    r"(?P<field>\S+): (?P<frag>.+)$")


def expectations(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = EXPECT.match(line)
        if m:
            d = m.groupdict()
            d["file"] = os.path.normpath(path.parent / d["file"]) if d["file"] else str(path)
            out.append(d)
    return out


def test_corpus_is_large_enough():
    assert len(FILES) >= 25
    assert all(expectations(f) for f in FILES), "every malformed spec states what it expects"


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_malformed_spec_is_reported(path: Path, capsys):
    status = main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert status == 2, f"{path.name} validated: {out}{err}"
    assert "Traceback" not in out + err
    lines = err.splitlines()
    for exp in expectations(path):
        prefix = f"{exp['file']}:{exp['line']}:{exp['col']} "
        if exp["field"] != "-":
            prefix += f"{exp['field']}: "
        hits = [line for line in lines if line.startswith(prefix)]
        assert hits, f"no message at {prefix!r}; got:\n{err}"
        assert any(exp["frag"] in line for line in hits), f"{exp['frag']!r} not in {hits}"
