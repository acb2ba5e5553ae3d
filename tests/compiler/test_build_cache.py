"""The build cache (omnic.compiler.cache): reuse, invalidation per input, corruption, atomicity.

One tiny model with its weights in a safetensors file, built for onnx and gguf. Each test
compiles into a fresh build directory against a cache folder shared by the module, and reads
which targets were rebuilt from the manifest's timings ("<t>: lower" ran, or "<t>: cached").
The files are compared with hashlib here, not with the cache's own digests.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_specs import TINY_SPEC

pytestmark = pytest.mark.slow
TARGETS = {"onnx": {}, "gguf": {}}


def _spec(folder: Path, weights: str, gguf: dict | None = None, file: str = "spec.yaml") -> Path:
    data = {**TINY_SPEC, "name": "cached", "weights": {"source": "safetensors", "path": weights},
            "targets": {"onnx": {}, "gguf": gguf or {}}}
    path = folder / file
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _write_weights(path: Path, seed: int) -> None:
    """The tiny model's weights (omnic tensor names) from seed `seed`, as safetensors."""
    from safetensors.torch import save_file

    from omnic.model import build_model
    from omnic.spec import ResolvedSpec

    spec = ResolvedSpec.model_validate({**TINY_SPEC, "weights": {"source": "random", "seed": seed},
                                        "quantization": {}})
    model = build_model(spec, path.parent)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-world")
    (root / "spec").mkdir()
    _write_weights(root / "spec" / "w.safetensors", seed=0)
    return {"root": root, "cache": root / "cache", "n": 0}


def _compile(world, spec: Path, **kw):
    from omnic.compiler.pipeline import compile

    world["n"] += 1
    out = world["root"] / f"build{world['n']}"
    return compile(spec, out, progress=False, cache=kw.pop("cache", world["cache"]), **kw)


def _stages(result) -> dict[str, set[str]]:
    t = result.manifest.timings
    return {"stages": {s.stage for s in t.stages},
            "cached": {s.stage.split(":")[0] for s in t.targets if s.stage.endswith(": cached")},
            "lowered": {s.stage.split(":")[0] for s in t.targets if s.stage.endswith(": lower")}}


def _without_timings(result) -> dict:
    data = json.loads((result.out_dir / "manifest.json").read_text())
    data.pop("timings")
    return data


def _file_hashes(build: Path) -> dict[str, str]:
    return {p.relative_to(build).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(build.rglob("*")) if p.is_file() and p.name != "manifest.json"}


@pytest.fixture(scope="module")
def first(world):
    spec = _spec(world["root"] / "spec", "w.safetensors")
    result = _compile(world, spec)
    assert result.status == "passed"
    return spec, result


def test_unchanged_recompile_reuses_everything(world, first):
    spec, built = first
    assert _stages(built)["lowered"] == {"onnx", "gguf"}
    again = _compile(world, spec)
    s = _stages(again)
    assert s["cached"] == {"onnx", "gguf"} and not s["lowered"]
    assert not {"build", "passes", "reference"} & s["stages"]  # no model was built
    assert _without_timings(again) == _without_timings(built)
    assert _file_hashes(again.out_dir) == _file_hashes(built.out_dir)
    assert again.manifest.timings.total_seconds < built.manifest.timings.total_seconds


def _shas(result) -> dict[str, str]:
    return {a.path: a.sha256 for a in result.manifest.artifacts}


def test_a_target_option_rebuilds_that_target_only(world, first):
    spec = _spec(world["root"] / "spec", "w.safetensors", gguf={"file_type": "F32"},
                 file="f32.yaml")
    cached = _compile(world, spec)
    s = _stages(cached)
    assert s["lowered"] == {"gguf"} and s["cached"] == {"onnx"}
    # what the cache gave is what a build from scratch makes
    fresh = _compile(world, spec, cache=False)
    assert _file_hashes(fresh.out_dir) == _file_hashes(cached.out_dir)


def test_weights_are_keyed_by_their_bytes_not_their_path(world, first):
    _, built = first
    moved = world["root"] / "moved"
    moved.mkdir()
    shutil.copy(world["root"] / "spec" / "w.safetensors", moved / "renamed.safetensors")
    same = _compile(world, _spec(moved, "renamed.safetensors"))
    assert _stages(same)["cached"] == {"onnx", "gguf"}
    fresh = _compile(world, _spec(moved, "renamed.safetensors"), cache=False)
    assert _file_hashes(fresh.out_dir) == _file_hashes(same.out_dir)
    assert _shas(fresh) == _shas(built)
    changed = world["root"] / "changed"
    changed.mkdir()
    _write_weights(changed / "renamed.safetensors", seed=1)
    other = _compile(world, _spec(changed, "renamed.safetensors"))
    assert _stages(other)["lowered"] == {"onnx", "gguf"}
    onnx = [a.sha256 for r in (built, other) for a in r.manifest.artifacts if a.target == "onnx"]
    assert onnx[0] != onnx[1]  # other weights, another artifact


def test_a_toolchain_version_rebuilds_the_targets_using_it(world, first, monkeypatch):
    from omnic.compiler import cache_keys

    real = cache_keys.toolchain
    monkeypatch.setattr(cache_keys, "toolchain", lambda: {**real(), "gguf": "99.0"})
    s = _stages(_compile(world, first[0]))
    assert s["lowered"] == {"gguf"} and s["cached"] == {"onnx"}


def test_the_omnic_version_rebuilds_everything(world, first, monkeypatch):
    import omnic

    monkeypatch.setattr(omnic, "__version__", omnic.__version__ + "+other")
    s = _stages(_compile(world, first[0]))
    assert s["lowered"] == {"onnx", "gguf"} and not s["cached"]


def test_a_corrupt_entry_is_rebuilt_never_used(world, first, caplog):
    from omnic.compiler.cache import BuildCache

    spec, built = first
    cache = BuildCache(world["cache"])
    onnx = [e for e in cache.entries() if e.label.get("target") == "onnx"
            and e.label.get("spec") == "cached"]
    entry = cache.get(_stages_key(world, spec, "onnx"))
    assert entry is not None and onnx
    victim = next(p for p in (entry.path / "files" / "onnx").rglob("*") if p.is_file())
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    again = _compile(world, spec)
    s = _stages(again)
    assert s["lowered"] == {"onnx"} and s["cached"] == {"gguf"}
    assert "corrupt" in caplog.text
    assert _file_hashes(again.out_dir) == _file_hashes(built.out_dir)  # rebuilt, same bytes
    assert _stages(_compile(world, spec))["cached"] == {"onnx", "gguf"}  # and stored again


def _stages_key(world, spec: Path, target: str) -> str:
    """The key the cache files `target` of `spec` under (as the pipeline computes it)."""
    from omnic.compiler import cache_keys
    from omnic.compiler.validate import load, inline_presets

    v = load(spec)
    inline_presets(v)
    return cache_keys.target_key(v.resolved.model_dump(mode="json"), spec.parent, target, [],
                                 world["cache"])


def test_a_write_that_fails_leaves_no_entry(tmp_path, monkeypatch):
    from omnic.compiler import cache as cache_mod

    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 100)
    store = cache_mod.BuildCache(tmp_path / "c")
    calls = {"n": 0}
    real = shutil.copyfile

    def flaky(a, b):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(a, b)

    monkeypatch.setattr(cache_mod.shutil, "copyfile", flaky)
    store.put("k" * 64, "target", {}, {}, {"t/a.bin": src, "t/b.bin": src})
    assert store.get("k" * 64) is None
    assert not list((tmp_path / "c").rglob("*.bin"))  # nothing half-written stays behind


def test_cli_lists_and_prunes(world, first):
    cache = str(world["cache"])
    run = [sys.executable, "-m", "omnic.cli.main", "cache"]
    ls = subprocess.run([*run, "ls", "--cache-dir", cache, "--json"], capture_output=True,
                        text=True, check=True)
    entries = json.loads(ls.stdout)["entries"]
    kinds = {(e["kind"], e["label"].get("target")) for e in entries}
    assert {("front", None), ("target", "onnx"), ("target", "gguf")} <= kinds
    on_disk = sum(p.stat().st_size for p in Path(cache, "entries").rglob("files/**/*")
                  if p.is_file())
    assert sum(e["bytes"] for e in entries) == on_disk
    bad = subprocess.run([*run, "prune", "--cache-dir", cache, "--max-size", "ten"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--max-size" in bad.stderr
    subprocess.run([*run, "prune", "--cache-dir", cache, "--max-size", "0"], check=True,
                   capture_output=True)
    ls = subprocess.run([*run, "ls", "--cache-dir", cache, "--json"], capture_output=True,
                        text=True, check=True)
    assert json.loads(ls.stdout)["entries"] == []


def test_executorch_with_the_core_ml_delegate_is_keyed_on_core_ml_options(tmp_path):
    from omnic.compiler import cache_keys
    from omnic.spec import ResolvedSpec
    from omnic.targets.base import get_target

    et = get_target("executorch")

    def key(backend: str, precision: str) -> str:
        spec = ResolvedSpec.model_validate({**TINY_SPEC, "quantization": {}, "targets": {
            "executorch": {"backend": backend}, "coreml": {"compute_precision": precision}}})
        return cache_keys.target_key(spec.model_dump(mode="json"), tmp_path, "executorch", [],
                                     None, et.cache_inputs(spec))

    assert key("coreml", "fp16") != key("coreml", "fp32")
    assert key("xnnpack", "fp16") == key("xnnpack", "fp32")


def test_a_rewrite_that_keeps_size_and_mtime_is_still_seen(tmp_path):
    import os

    from omnic.spec.file_digests import with_file_digests

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 64)
    spec = {"weights": {"source": "safetensors", "path": "w.bin"}}
    memo: dict[str, str] = {}
    before = with_file_digests(spec, tmp_path, memo)["weights"]["path"]
    st = f.stat()
    with open(f, "r+b") as h:  # in place, same inode and size (rsync --inplace -t)
        h.write(b"b" * 64)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = with_file_digests(spec, tmp_path, memo)["weights"]["path"]
    assert before["sha256"] == hashlib.sha256(b"a" * 64).hexdigest()
    assert after["sha256"] == hashlib.sha256(b"b" * 64).hexdigest()
