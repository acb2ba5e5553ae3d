"""Manifest hashing, byte-stable JSON, schema freshness; diff and --fail-on rules on synthetic
manifests (torch-free)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnic.compiler import diff as D
from omnic.compiler import manifest as mf
from omnic.constants import ManifestKeys

REPO = Path(__file__).resolve().parents[2]


def _artifact(target="onnx", path="onnx/model.onnx", nbytes=1000, sha="a" * 64, status="passed",
              **metrics) -> mf.ArtifactEntry:
    return mf.ArtifactEntry(
        component="decoder", target=target, path=path, bytes=nbytes, sha256=sha,
        precision="int4_g32", op_histogram={"MatMulNBits": 42, "Add": 7},
        quantization={"block": 32}, golden=mf.GoldenEntry(status=status,
                                                          metrics={"kld": 0.01, **metrics}))


def _manifest(artifacts, **spec_model) -> mf.Manifest:
    return mf.Manifest(
        omnic_version="0.1.0", manifest_format=1, name="x", status="passed", targets=["onnx"],
        spec_sha256="0" * 64, spec={"model": {"d_model": 64, "rope": {"theta": 1e4}, **spec_model},
                                    "targets": {"onnx": {"opset": 21}}},
        toolchain={"onnx": "1.23"}, memory_plan={}, passes=[mf.PassEntry(id="quant::plan",
                                                                          changed=True)],
        artifacts=artifacts, golden=mf.GoldenInfo(cases=1, prompt_tokens=2, decode_steps=1,
                                                  seed=0))


def test_constants_are_manifest_fields():
    keys = {v for k, v in vars(ManifestKeys).items() if not k.startswith("_")}
    assert keys <= set(mf.Manifest.model_fields)


def test_committed_schema_is_fresh():
    from omnic.tools.write_schemas import render

    path = REPO / "schemas" / "omnic-manifest.schema.json"
    assert path.read_text(encoding="utf-8") == render("omnic-manifest"), \
        "stale: run python -m omnic.tools.write_schemas"


def test_dumps_is_byte_stable_and_rounds_floats():
    a = _manifest([_artifact(nmse=1.234567891234e-7, cosine=float("nan"))])
    text = mf.dumps(a)
    assert text == mf.dumps(mf.Manifest.model_validate(json.loads(text)))
    data = json.loads(text)
    assert data["artifacts"][0]["golden"]["metrics"]["nmse"] == 1.23457e-07
    assert data["artifacts"][0]["golden"]["metrics"]["cosine"] is None
    assert list(data) == sorted(data)


def test_directory_digest_covers_names_and_contents(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, order in ((a, ["x.bin", "sub/y.txt"]), (b, ["sub/y.txt", "x.bin"])):
        for name in order:  # written in a different order: same digest
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(name.encode())
    assert mf.path_digest(a) == mf.path_digest(b)
    assert mf.path_digest(a)[0] == len("x.bin") + len("sub/y.txt")
    (b / "x.bin").rename(b / "z.bin")
    assert mf.path_digest(a)[1] != mf.path_digest(b)[1]


def test_flatten_and_spec_changes():
    assert D.flatten({"a": {"b": [1, {"c": 2}]}, "d": []}) == {"a.b[0]": 1, "a.b[1].c": 2,
                                                              "d": []}
    changes = D.dict_changes({"m": {"x": 1, "y": 2}}, {"m": {"x": 1, "y": 3, "z": 4}})
    assert [(c.path, c.old, c.new) for c in changes] == [("m.y", 2, 3), ("m.z", None, 4)]


def test_artifact_pairing_sizes_metrics_and_rules():
    old = _manifest([_artifact(), _artifact("gguf", "m-Q4_0.gguf", 500, "b" * 64),
                     _artifact("tvm", "tvm/lib.so", 10, "c" * 64)])
    new = _manifest([_artifact(nbytes=1100, sha="d" * 64, kld=0.03),
                     _artifact("gguf", "m-Q8_0.gguf", 900, "e" * 64, status="failed"),
                     _artifact("coreml", "coreml/m.mlpackage", 20, "f" * 64)], d_model=96)
    d = D.diff_manifests(old, new)
    assert [(c.path, c.old, c.new) for c in d.spec] == [("model.d_model", 64, 96)]
    by = {a.target: a for a in d.artifacts}
    assert by["onnx"].bytes == (1000, 1100) and by["onnx"].size_delta == (100, 0.1)
    assert by["onnx"].metrics == {"kld": (0.01, 0.03)}
    assert by["gguf"].old_path == "m-Q4_0.gguf" and by["gguf"].golden_status == ("passed", "failed")
    assert by["tvm"].status == "removed" and by["coreml"].status == "added"

    def broken(rules):
        return D.broken_rules(d, new, D.parse_rules(rules))

    assert len(broken("size:+5%")) == 2  # onnx +10 %, gguf +80 %
    assert len(broken("size:+50%")) == 1 and broken("size:-1%") == []
    assert broken("size:+200") == ["size:+200: gguf/decoder m-Q8_0.gguf 500 -> 900 bytes"]
    assert broken("kld:+0.01") == ["kld:+0.01: onnx/decoder onnx/model.onnx kld 0.01 -> 0.03"]
    assert broken("kld:+0.05") == [] and len(broken("kld:+100%")) == 1
    assert len(broken("golden:failed")) == 1 and len(broken("golden:regressed")) == 1
    assert broken("artifacts:removed") == ["artifacts:removed: tvm/decoder tvm/lib.so"]
    assert len(broken("hash:changed")) == 4 and len(broken("spec:changed")) == 1
    assert D.broken_rules(D.diff_manifests(old, old), old, D.parse_rules(
        "hash:changed,spec:changed,size:+0%,ops:changed")) == []


@pytest.mark.parametrize("rule,message", [
    ("size", "expected NAME:VALUE"), ("size:5 percent", "expected an amount"),
    ("golden:broken", "takes one of"), ("speed:+1", "unknown rule"),
])
def test_bad_rules(rule, message):
    with pytest.raises(D.RuleError, match=message):
        D.parse_rules(rule)


def test_verify_diff_and_inspect_do_not_import_torch():
    """`omnic verify` must run on a host with only the target's runtime (e.g. a Mac with
    coremltools), and diff/inspect in CI without torch."""
    import subprocess
    import sys

    code = ("import sys, omnic.cli.verify, omnic.cli.diff, omnic.cli.inspect, "
            "omnic.golden.check, omnic.compiler.artifact_runner; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_list_items_that_changed_alike_are_one_change_per_run():
    from omnic.compiler.diff import dict_changes

    row = lambda theta: {"attention": "full", "rope": {"theta": theta}}  # noqa: E731
    old = {"model": {"rope": {"theta": 1.0}, "layers": [row(1.0)] * 6}}
    new = {"model": {"rope": {"theta": 5.0},
                     "layers": [row(5.0)] * 3 + [row(1.0)] + [row(5.0)] * 2}}
    assert [(c.path, c.old, c.new) for c in dict_changes(old, new)] == [
        ("model.layers[0-2].rope.theta", 1.0, 5.0), ("model.layers[4-5].rope.theta", 1.0, 5.0),
        ("model.rope.theta", 1.0, 5.0)]
    # different values at neighbouring indices stay apart
    assert [c.path for c in dict_changes({"x": [1, 2]}, {"x": [3, 4]})] == ["x[0]", "x[1]"]
