"""`omnic farm` end to end on a real two-node Ray cluster (tests/farm/conftest.py).

One farm of 3 specs x 3 devices runs once for the module:
- specs a (tiny, gguf + onnx) and b (tiny, int8, gguf only) on desktop_cpu and mobile_4gb:
  four real compiles, on whichever node Ray picks; mobile_4gb's cells get a matrix override
  (golden cases 1), which their manifests must show;
- every spec on a device preset with a 32 MiB budget: failed as invalid (does not fit);
- spec `big` (75 M parameters) on the other two: its compile needs more memory than either
  node's 2 GiB, failed as unschedulable before it is submitted.
What the report says is checked against the manifests and files on disk, read here.
"""

from __future__ import annotations

import contextlib
import io
import json
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from farm_params import SMALL_BUDGET_MB, SMALL_DEVICE
from tiny_specs import TINY_SPEC

from omnic.cli.main import main

DEVICES = ["desktop_cpu", "mobile_4gb", SMALL_DEVICE]
GOOD_DEVICES = DEVICES[:2]
SPEC_A = {**TINY_SPEC, "name": "farm-a", "targets": {"gguf": {}, "onnx": {}}}
SPEC_B = {**TINY_SPEC, "name": "farm-b", "targets": {"gguf": {}},
          "quantization": {"weights": {"scheme": "int8"}}}
# 75 M parameters: fits the devices' budgets, but not a 2 GiB node's memory while compiling
SPEC_BIG = {**TINY_SPEC, "name": "farm-big", "targets": {"gguf": {}},
            "model": {"vocab_size": 32000, "d_model": 768, "n_layers": 8, "n_heads": 12,
                      "n_kv_heads": 4, "ffn": {"kind": "swiglu", "hidden": 2048},
                      "context_length": 256, "tie_embeddings": True}}
MATRIX = f"""\
specs: [a.yaml, b.yaml, big.yaml]
devices: [{", ".join(DEVICES)}]
targets: [gguf, onnx]
overrides:
  devices:
    mobile_4gb: {{golden: {{cases: 1}}}}
"""


def _write(folder: Path, name: str, data: dict) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _farm(*args: str) -> SimpleNamespace:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["farm", *args])
    return SimpleNamespace(code=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture(scope="module")
def specs(tmp_path_factory, preset_dir) -> Path:
    folder = tmp_path_factory.mktemp("farm-specs")
    for name, data in (("a.yaml", SPEC_A), ("b.yaml", SPEC_B), ("big.yaml", SPEC_BIG)):
        _write(folder, name, data)
    return folder


@pytest.fixture(scope="module")
def farm(specs, ray_cluster, tmp_path_factory):
    matrix = specs / "matrix.yaml"
    matrix.write_text(MATRIX, encoding="utf-8")
    out = tmp_path_factory.mktemp("farm-out") / "out"
    cache = tmp_path_factory.mktemp("farm-cache")
    run = _farm(str(matrix), "-o", str(out), "--address", ray_cluster.address,
                "--cache-dir", str(cache))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    cells = {(c["spec"], c["device"]): c for c in report["cells"]}
    return SimpleNamespace(**vars(run), out=out, report=report, cells=cells)


def _disk_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_every_cell_is_reported_with_its_status(farm):
    assert farm.code == 1, farm.stderr[-3000:]  # some cells failed on purpose
    assert len(farm.report["cells"]) == 9
    assert set(farm.cells) == {(s, d) for s in ("a.yaml", "b.yaml", "big.yaml") for d in DEVICES}
    for spec in ("a.yaml", "b.yaml"):
        for device in GOOD_DEVICES:
            cell = farm.cells[spec, device]
            assert cell["status"] == "passed", cell["failure"]
    for spec in ("a.yaml", "b.yaml", "big.yaml"):
        assert farm.cells[spec, SMALL_DEVICE]["failure"]["kind"] == "invalid"
    for device in GOOD_DEVICES:
        assert farm.cells["big.yaml", device]["failure"]["kind"] == "unschedulable"
    assert farm.report["summary"] == {"cells": 9, "passed": 4, "failed": 5}
    assert farm.report["cluster"]["nodes"] == 2


def test_passed_cells_match_their_manifests_and_files(farm):
    for spec in ("a.yaml", "b.yaml"):
        for device in GOOD_DEVICES:
            cell = farm.cells[spec, device]
            build = farm.out / cell["build_dir"]
            manifest = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
            assert manifest["status"] == "passed"
            assert manifest["spec"]["device"]["name"] == device
            # the matrix's override for mobile_4gb, and the spec's own value elsewhere
            assert manifest["golden"]["cases"] == (1 if device == "mobile_4gb" else 2)
            expected = ["gguf", "onnx"] if spec == "a.yaml" else ["gguf"]
            assert sorted(manifest["targets"]) == expected == sorted(cell["per_target"])
            for target, row in cell["per_target"].items():
                arts = [a for a in manifest["artifacts"] if a["target"] == target]
                assert row["bytes"] == sum(a["bytes"] for a in arts) > 0
                assert row["bytes"] == sum(_disk_bytes(build / a["path"]) for a in arts)
                decoder = next(a for a in arts if a["component"] == "decoder")
                assert row["kld"] == decoder["golden"]["metrics"]["kld"]
                assert row["golden"] == "passed"
            assert cell["fits"] is True
            assert cell["memory"]["budget_bytes"] == manifest["memory_plan"]["budget_bytes"]
    # int8 weights cost more KL divergence than fp32 ones, and take fewer bytes
    a, b = farm.cells["a.yaml", "desktop_cpu"], farm.cells["b.yaml", "desktop_cpu"]
    assert b["per_target"]["gguf"]["kld"] > a["per_target"]["gguf"]["kld"]
    assert b["per_target"]["gguf"]["bytes"] < a["per_target"]["gguf"]["bytes"]
    assert any("onnx" in note for note in b["notes"])  # the matrix asks for onnx, b has none


def test_a_device_too_small_fails_its_cells_with_the_reason(farm):
    for spec in ("a.yaml", "b.yaml", "big.yaml"):
        cell = farm.cells[spec, SMALL_DEVICE]
        assert cell["status"] == "failed" and cell["fits"] is False
        assert cell["memory"]["budget_bytes"] == SMALL_BUDGET_MB * 2**20
        assert f"{SMALL_BUDGET_MB} MiB" in cell["failure"]["reason"]
        assert cell["build_dir"] is None
        assert not (farm.out / cell["cell_dir"] / "build").exists()


def test_a_cell_larger_than_any_node_is_failed_not_left_waiting(farm):
    for device in GOOD_DEVICES:
        cell = farm.cells["big.yaml", device]
        assert "2.00 GiB" in cell["failure"]["reason"]  # the nodes' memory, set by conftest
        assert cell["compile_peak_bytes"] > 2 * 2**30
        assert not (farm.out / cell["cell_dir"] / "result.json").exists()  # never submitted


def test_cell_specs_extend_the_base_spec(farm, specs):
    cell = farm.cells["a.yaml", "mobile_4gb"]
    data = yaml.safe_load((farm.out / cell["spec_file"]).read_text(encoding="utf-8"))
    assert [Path(p) for p in data["extends"]] == [(specs / "a.yaml").resolve()]
    assert data["device"] == "mobile_4gb" and data["golden"] == {"cases": 1}


def test_one_log_line_per_cell_start_and_finish(farm):
    lines = farm.stderr.splitlines()
    for (spec, device), cell in farm.cells.items():
        started = [line for line in lines if cell["id"] in line and "started" in line]
        finished = [line for line in lines if cell["id"] in line and ("✓" in line or "✗" in line)]
        assert len(started) == (1 if cell["status"] == "passed" else 0), (spec, device)
        assert len(finished) == 1, (spec, device)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_is_self_contained_with_a_chart(farm):
    page = _Page()
    page.feed((farm.out / "report.html").read_text(encoding="utf-8"))
    page.close()
    assert page.tags.count("svg") == 1 and "table" in page.tags
    assert not {"script", "link", "img", "iframe"} & set(page.tags)
    external = [v for k, v in page.attrs if k in ("src", "href") and v]
    assert not external, external
    # a size bar and a KLD bar for each of the 6 targets built (a: 2 x 2, b: 1 x 2)
    assert page.tags.count("rect") >= 12
    text = "".join(page.text)
    for cell in farm.report["cells"]:
        assert cell["id"] in text


def test_markdown_report_lists_every_cell_and_failure(farm):
    md = (farm.out / "report.md").read_text(encoding="utf-8")
    for cell in farm.report["cells"]:
        assert f"| {cell['id']} |" in md
        if cell["failure"]:
            assert f"### {cell['id']}: {cell['failure']['kind']}" in md


def test_an_invalid_override_fails_its_cell_at_the_matrix_line(specs, tmp_path):
    text = "specs: [a.yaml]\ndevices: [desktop_cpu]\noverrides:\n  devices:\n" \
           "    desktop_cpu:\n      golden: {cases: 0}\n"
    matrix = specs / "override.yaml"
    matrix.write_text(text, encoding="utf-8")
    run = _farm(str(matrix), "-o", str(tmp_path / "out"))
    assert run.code == 1, run.stderr
    (cell,) = json.loads((tmp_path / "out" / "report.json").read_text())["cells"]
    assert cell["status"] == "failed" and cell["failure"]["kind"] == "invalid"
    line = text.splitlines().index("      golden: {cases: 0}") + 1
    assert f"{matrix}:{line}:" in cell["failure"]["reason"]
    assert "golden.cases" in cell["failure"]["reason"]


@pytest.mark.parametrize("body, line, words", [
    ("specs: [a.yaml]\ndevices: [desktop_cpu, mobile_3gb]\n", 2, "unknown device preset"),
    ("specs: [a.yaml]\ndevics: [desktop_cpu]\n", 2, "did you mean 'devices'"),
    ("specs: [a.yaml, missing.yaml]\n", 1, "no such file"),
    ("specs: [a.yaml]\ntargets: [onnx, gguff]\n", 2, "gguf"),
    ("specs: [a.yaml]\noverrides:\n  devices: {mobile_4gb: {golden: {cases: 1}}}\n", 3,
     "no `devices:` axis"),
])
def test_matrix_errors_exit_2_with_file_and_line(specs, tmp_path, body, line, words):
    matrix = specs / f"bad-{line}-{abs(hash(body))}.yaml"
    matrix.write_text(body, encoding="utf-8")
    run = _farm(str(matrix), "-o", str(tmp_path / "out"))
    assert run.code == 2
    assert f"{matrix}:{line}:" in run.stderr and words in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_a_compile_that_refuses_its_input_is_an_outcome_not_an_exception(tmp_path):
    """The task body outside Ray: the compile's exit-2 error becomes the cell's reason."""
    from omnic.farm.task import CellRequest, run_cell

    missing = tmp_path / "gone.yaml"
    req = CellRequest(cell_id="gone", spec_file=str(missing), cell_dir=str(tmp_path / "cell"),
                      targets=("gguf",), cache=str(tmp_path / "cache"))
    outcome = run_cell(req)
    assert outcome["status"] == "failed" and outcome["failure"]["kind"] == "invalid"
    assert "no such file" in outcome["failure"]["reason"]
    assert json.loads((tmp_path / "cell" / "result.json").read_text()) == outcome
    assert not (tmp_path / "cell" / "build").exists()


def test_an_unreachable_cluster_fails_every_cell_with_the_reason(specs, tmp_path):
    matrix = specs / "unreachable.yaml"
    matrix.write_text("specs: [a.yaml, b.yaml]\n", encoding="utf-8")
    run = _farm(str(matrix), "-o", str(tmp_path / "out"), "--address", "127.0.0.1:1")
    assert run.code == 1, run.stderr
    cells = json.loads((tmp_path / "out" / "report.json").read_text())["cells"]
    assert [c["spec"] for c in cells] == ["a.yaml", "b.yaml"]
    for cell in cells:
        assert cell["failure"]["kind"] == "error"
        assert "cannot connect to the Ray cluster at 127.0.0.1:1" in cell["failure"]["reason"]
