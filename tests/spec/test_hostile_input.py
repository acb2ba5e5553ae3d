"""Hostile and broken input (issue 22, items 1 and 2): refused before any work, exit status 2, a
message naming the file, line (where there is one) and field, no traceback, nothing written.

Each class goes through the real CLI (`omnic.cli.main.main`), and `compile` where it shares the
check, to show that validate, plan and compile refuse alike. Inputs that used to cost minutes and
gigabytes run in a child process bounded in time and memory (`bounded`), so that a regression
fails instead of hanging the suite. Weights are written with numpy and safetensors (no torch):
the whole file runs in a few seconds.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from omnic.cli.main import main
from omnic.spec import Model
from omnic.spec.inventory import decoder_tensors

from tiny_specs import TINY_SPEC

K_WEIGHT = "layers.1.attn.k.weight"


def omnic(capsys, *argv: str) -> tuple[int, str]:
    """(exit status, everything printed) of one `omnic` command run in-process."""
    status = main(list(argv))
    printed = capsys.readouterr()
    return status, printed.out + printed.err


def refused(capsys, *argv: str) -> str:
    """The output of a command that must exit 2 without a traceback."""
    status, printed = omnic(capsys, *argv)
    assert status == 2, printed
    assert "Traceback" not in printed
    return printed


def run_bounded(*argv: str, seconds: float = 60) -> subprocess.CompletedProcess:
    """`python ARGV` in a child process limited to `seconds` and 2 GiB."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    return subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                          timeout=seconds, preexec_fn=limit)


def bounded(*argv: str) -> str:
    """The output of `omnic ARGV` run by `run_bounded`, which must exit 2 without a traceback."""
    run = run_bounded("-m", "omnic.cli.main", *argv)
    printed = run.stdout + run.stderr
    assert run.returncode == 2, printed[-2000:]
    assert "Traceback" not in printed
    return printed


def refused_everywhere(capsys, spec: Path, needle: str) -> None:
    """`validate`, `plan` and `compile` all exit 2 naming the problem; compile writes nothing."""
    for command in ("validate", "plan"):
        assert needle in refused(capsys, command, str(spec))
    compile_refused(capsys, spec, needle)


def compile_refused(capsys, spec: Path, needle: str) -> None:
    """`omnic compile` exits 2 naming the problem and writes nothing."""
    out = spec.parent / "build"
    printed = refused(capsys, "compile", str(spec), "-o", str(out), "-q")
    assert needle in printed
    assert not list(spec.parent.glob("build*")), "compile wrote something"


def write_spec(folder: Path, name: str = "spec", **top) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPEC, **top}, sort_keys=False), encoding="utf-8")
    return path


def tiny_tensors(dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {t.name: (rng.standard_normal(t.shape) * 0.02).astype(dtype)
            for t in decoder_tensors(Model.model_validate(TINY_SPEC["model"]))}


def safetensors_spec(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "w.safetensors")
    return write_spec(folder, weights={"source": "safetensors", "path": "w.safetensors"})


# --- 1. input limits ---------------------------------------------------------------------------
def billion_laughs(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nmodel: *a{levels - 1}\n"


def test_alias_bomb_is_refused_by_validate_plan_and_compile(tmp_path):
    # 9**9 items once expanded: 37 s and a MemoryError before the limit
    spec = tmp_path / "bomb.yaml"
    spec.write_text("omnic: 1\nname: bomb\n" + billion_laughs(), encoding="utf-8")
    started = time.perf_counter()
    for command in ("validate", "plan", "compile"):
        extra = ("-o", str(tmp_path / "build")) if command == "compile" else ()
        printed = bounded(command, str(spec), *extra)
        # a5 (line 8) is the first value that expands past 100,000 nodes
        assert (f"{spec}:8:5 aliases expand this value to more than 100,000 YAML nodes "
                '(a "billion laughs")') in printed
    assert not list(tmp_path.glob("build*")), "compile wrote something"
    assert time.perf_counter() - started < 20


def test_alias_bomb_in_a_preset_is_refused_by_the_same_loader(tmp_path, monkeypatch):
    from omnic.presets import store

    (tmp_path / "presets" / "devices").mkdir(parents=True)
    bomb = tmp_path / "presets" / "devices" / "bomb.yaml"
    bomb.write_text("name: bomb\n" + billion_laughs(), encoding="utf-8")
    monkeypatch.setenv(store.ENV_PATH, str(tmp_path / "presets"))
    spec = write_spec(tmp_path / "spec", device="bomb")
    assert f"{bomb}:7:5 aliases expand this value" in bounded("validate", str(spec))
    # the store's own reader (omnic.presets.resolve, auto quantization, device suggestions)
    run = run_bounded("-c", "from omnic.presets import store; store.load('device', 'bomb')")
    assert "SpecError" in run.stderr and "billion laughs" in run.stderr, run.stderr[-2000:]


def test_recursive_alias_is_refused(tmp_path, capsys):
    spec = tmp_path / "loop.yaml"
    spec.write_text("omnic: 1\nmodel: &m {inner: *m}\n", encoding="utf-8")
    assert f"{spec}:2:8 recursive alias: this value contains itself" in \
        refused(capsys, "validate", str(spec))


def test_huge_spec_file_is_refused_before_parsing(tmp_path, capsys):
    spec = write_spec(tmp_path)
    with spec.open("a", encoding="utf-8") as f:  # 1.2 MB of comments (a 49 MB one took 81 s)
        f.write(("# " + "x" * 98 + "\n") * 12_000)
    size = spec.stat().st_size
    refused_everywhere(capsys, spec, f"{spec}: {size:,} bytes, more than the 1,048,576 a spec "
                       "file may have (specs are a few kB); not parsed")


def test_absurd_vocab_size_is_refused_by_plan_as_by_validate(tmp_path, capsys):
    model = {**TINY_SPEC["model"], "vocab_size": 10**12}
    spec = write_spec(tmp_path, model=model,
                      targets={t: {} for t in ("onnx", "gguf", "executorch", "coreml", "tvm")})
    printed = refused(capsys, "validate", str(spec))
    (error,) = [line for line in printed.splitlines() if "device: needs" in line]
    assert error.startswith(f"{spec}:3:1 device: needs ")
    needs = int(re.search(r"needs (\d+) MiB", error).group(1))
    assert needs >= 10**12 * 64 * 4 // 2**20  # at least the fp32 embedding of 1e12 x 64
    # the plan's byte model spun forever in a per-token loop; so would compile's plan stage
    assert error in bounded("plan", str(spec), "--json").splitlines()
    assert error in bounded("compile", str(spec), "-o", str(tmp_path / "build")).splitlines()[-1]
    assert not list(tmp_path.glob("build*")), "compile wrote something"


def test_absurd_layer_count_is_refused_before_any_tensor_is_listed(tmp_path):
    spec = write_spec(tmp_path, model={**TINY_SPEC["model"], "n_layers": 10**9})
    for command in ("validate", "plan"):
        printed = bounded(command, str(spec))
        found = re.search(r"(\S+) model.n_layers: 1,000,000,000 layers make about ([\d,]+) "
                          r"tensors, more than the 1,000,000 omnic plans one by one", printed)
        assert found and found.group(1) == f"{spec}:11:3"
        # at least q, k, v, o, three FFN matrices and two norms per layer
        assert int(found.group(2).replace(",", "")) >= 9 * 10**9


@pytest.mark.parametrize("n_layers, pattern, needle", [
    # a layer pattern is checked by arithmetic: the tensor-count guard still speaks first
    (10**9, "5 sliding : 1 full ...", "1,000,000,000 layers make about"),
    (12, "300000000 sliding : 1 full", "model.layer_pattern: one repeat is 300,000,001 layers, "
                                       "more than n_layers=12"),
])
def test_absurd_layer_patterns_are_refused_at_once(tmp_path, n_layers, pattern, needle):
    spec = write_spec(tmp_path, model={**TINY_SPEC["model"], "n_layers": n_layers,
                                       "layer_pattern": pattern, "sliding_window": {"size": 8}})
    for command in ("validate", "plan"):
        assert needle in bounded(command, str(spec))


# --- 2. checkpoints validated as input ---------------------------------------------------------
def _cut(path: Path, keep) -> None:
    data = path.read_bytes()
    path.write_bytes(keep(data))


@pytest.mark.parametrize("damage, needle", [
    (lambda d: d[: len(d) // 2], "w.safetensors: truncated: 189,932 bytes, fewer than its "
                                 "header describes"),
    (lambda d: b"", "w.safetensors: empty file (0 bytes), not a safetensors file"),
    (lambda d: b"this is not a checkpoint at all",
     "w.safetensors: not a safetensors file (header too large)"),
    (lambda d: d[:200], "w.safetensors: truncated inside its header (200 bytes)"),
], ids=["half", "zero-bytes", "not-safetensors", "inside-header"])
def test_broken_safetensors_file_is_refused(tmp_path, capsys, damage, needle):
    spec = safetensors_spec(tmp_path, tiny_tensors())
    _cut(tmp_path / "w.safetensors", damage)
    for command in ("validate", "plan"):
        printed = refused(capsys, command, str(spec))
        assert f"{spec}:21:3 weights.path: {tmp_path}/{needle}" in printed
    compile_refused(capsys, spec, needle)


@pytest.mark.parametrize("dtype, value, kind", [(np.float32, np.nan, "NaN"),
                                                (np.float16, -np.inf, "Inf")])
def test_nan_or_inf_in_weights_is_refused_naming_the_tensor(tmp_path, capsys, dtype, value, kind):
    tensors = tiny_tensors(dtype)
    tensors[K_WEIGHT][3, 5] = value
    spec = safetensors_spec(tmp_path, tensors)
    for command in ("validate", "run"):  # run printed NUL bytes on such weights, exit 0
        printed = refused(capsys, command, str(spec), *(["--prompt", "hi"] * (command == "run")))
        assert f"weights.path: {tmp_path}/w.safetensors: {kind} at {K_WEIGHT}[3, 5]" in printed
    compile_refused(capsys, spec, f"{kind} at {K_WEIGHT}[3, 5]")


def test_missing_tensor_is_refused(tmp_path, capsys):
    tensors = tiny_tensors()
    del tensors["layers.0.ffn.down.weight"]
    spec = safetensors_spec(tmp_path, tensors)
    printed = refused(capsys, "validate", str(spec))
    assert (f"{spec}:21:3 weights.path: {tmp_path}/w.safetensors: weights do not match the "
            "spec's model: missing 1: layers.0.ffn.down.weight") in printed
    compile_refused(capsys, spec, "missing 1: layers.0.ffn.down.weight")


def test_integer_tensor_is_refused(tmp_path, capsys):
    tensors = tiny_tensors()
    tensors[K_WEIGHT] = np.zeros(tensors[K_WEIGHT].shape, np.int32)
    printed = refused(capsys, "validate", str(safetensors_spec(tmp_path, tensors)))
    assert f"1 tensors are not floating point (F32, F16, BF16, F64): {K_WEIGHT} (I32)" in printed


# Hugging Face names of the tiny llama (omnic.importers.hf_weights renames them back)
_HF = {"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight":
       "post_attention_layernorm.weight", **{f"attn.{p}.weight": f"self_attn.{p}_proj.weight"
                                             for p in "qkvo"},
       **{f"ffn.{p}.weight": f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")}}


def hf_sharded_spec(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    import json

    from safetensors.numpy import save_file

    def hf(name: str) -> str:
        if name == "embed.weight":
            return "model.embed_tokens.weight"
        if name == "norm.weight":
            return "model.norm.weight"
        _, i, rest = name.split(".", 2)
        return f"model.layers.{i}.{_HF[rest]}"

    ckpt = folder / "ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    names = sorted(tensors)
    weight_map = {}
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        shard = f"model-0000{k + 1}-of-00002.safetensors"
        save_file({hf(n): tensors[n] for n in part}, ckpt / shard)
        weight_map.update({hf(n): shard for n in part})
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return write_spec(folder, weights={"source": "huggingface", "path": "ckpt"})


def test_sharded_checkpoint_every_shard_and_the_index_are_checked(tmp_path, capsys):
    tensors = tiny_tensors()
    tensors[K_WEIGHT][0, 1] = np.inf
    spec = hf_sharded_spec(tmp_path, tensors)
    ckpt = tmp_path / "ckpt"
    printed = refused(capsys, "validate", str(spec))
    assert (f"{ckpt}/model-00002-of-00002.safetensors: Inf at "
            f"model.layers.1.self_attn.k_proj.weight[0, 1] ({K_WEIGHT})") in printed
    _cut(ckpt / "model-00001-of-00002.safetensors", lambda d: d[:-1000])
    printed = refused(capsys, "validate", str(spec))
    assert f"{ckpt}/model-00001-of-00002.safetensors: truncated: " in printed
    (ckpt / "model-00001-of-00002.safetensors").unlink()
    printed = refused(capsys, "validate", str(spec))
    assert f"{ckpt}/model-00001-of-00002.safetensors: shard listed in the index is missing" \
        in printed
    (ckpt / "model.safetensors.index.json").write_text("{not json")
    printed = refused(capsys, "validate", str(spec))
    assert f"{ckpt}/model.safetensors.index.json: not valid JSON (" in printed


def tiny_gguf(path: Path, poison: bool = False) -> None:
    gguf = pytest.importorskip("gguf")
    from omnic.formats.gguf_arch import tensor_plan
    from omnic.importers.gguf import arch_plan

    writer = gguf.GGUFWriter(str(path), "llama")
    rng = np.random.default_rng(0)
    for t in tensor_plan(Model.model_validate(TINY_SPEC["model"]), arch_plan("llama")):
        values = (rng.standard_normal(t.shape) * 0.02).astype(np.float32)
        if poison and t.name == "blk.1.attn_k.weight":
            values[3, 5] = np.nan
        writer.add_tensor(t.name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_truncated_gguf_is_refused(tmp_path, capsys):
    tiny_gguf(tmp_path / "m.gguf")
    spec = write_spec(tmp_path, weights={"source": "gguf", "path": "m.gguf"})
    assert omnic(capsys, "validate", str(spec))[0] == 0
    _cut(tmp_path / "m.gguf", lambda d: d[: len(d) // 2])
    size = (tmp_path / "m.gguf").stat().st_size
    refused_everywhere(capsys, spec, f"weights.path: {tmp_path}/m.gguf: truncated or damaged "
                       f"GGUF file ({size:,} bytes; gguf-py: cannot reshape")


def test_nan_in_gguf_is_refused_with_both_names(tmp_path, capsys):
    tiny_gguf(tmp_path / "m.gguf", poison=True)
    spec = write_spec(tmp_path, weights={"source": "gguf", "path": "m.gguf"})
    assert f"m.gguf: NaN at blk.1.attn_k.weight[3, 5] ({K_WEIGHT})" in \
        refused(capsys, "validate", str(spec))


def test_scan_stops_at_its_time_bound_with_a_warning(tmp_path, capsys, monkeypatch):
    from omnic.importers import checkpoint_checks

    monkeypatch.setattr(checkpoint_checks, "SCAN_SECONDS", 0.0)
    spec = safetensors_spec(tmp_path, tiny_tensors())
    status, printed = omnic(capsys, "validate", str(spec))
    assert status == 0 and "warning: " in printed
    assert "NaN/Inf scan stopped after 0 s; 20 tensors from embed.weight on are unchecked" \
        in printed


# --- paths -------------------------------------------------------------------------------------
def test_path_leaving_the_spec_folder_is_refused(tmp_path, capsys):
    spec = write_spec(tmp_path / "a" / "b",
                      weights={"source": "safetensors", "path": "../../../../etc/passwd"})
    for command in ("validate", "plan"):
        printed = refused(capsys, command, str(spec))
        assert (f"{spec}:21:3 weights.path: '../../../../etc/passwd' leads out of the spec's "
                "folder (..); a file outside it must be named by its absolute path") in printed
        assert "header" not in printed and "no such file" not in printed  # not looked for
    compile_refused(capsys, spec, "leads out of the spec's folder")


def test_absolute_paths_and_paths_of_extended_files_are_accepted(tmp_path, capsys):
    from omnic.compiler.validate import validate_file

    safetensors_spec(tmp_path / "shared", tiny_tensors())
    weights = tmp_path / "shared" / "w.safetensors"
    spec = write_spec(tmp_path / "specs", weights={"source": "safetensors",
                                                   "path": str(weights)})
    result = validate_file(spec)
    assert result.ok, result.errors
    assert result.inputs["weights.path"] == weights.resolve()  # the real path, as checked
    # written inside ../shared/spec.yaml, relative to it: rebased, not refused
    child = tmp_path / "specs" / "child.yaml"
    child.write_text("extends: [../shared/spec.yaml]\nname: child\n", encoding="utf-8")
    assert omnic(capsys, "validate", str(child))[0] == 0
