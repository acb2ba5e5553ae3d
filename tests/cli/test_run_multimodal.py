"""`omnic run BUILD --target onnx|torch --image/--audio/--sensors`: the compiled components in
sequence give the reference's tokens; bad inputs exit 2 with one line and no traceback.

The build is tests/multimodal_build.py's (compiled once per session). Tolerance for actions and
logits: 1e-4, the fp32 row of the ONNX golden check.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")
sf = pytest.importorskip("soundfile")
PIL = pytest.importorskip("PIL")

from omnic.cli.main import main as omnic_main  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    from multimodal_build import multimodal_build

    return multimodal_build(tmp_path_factory)


@pytest.fixture(scope="module")
def media_files(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(root / "img.png")
    t = np.arange(16000) / 16000
    sf.write(root / "a.wav", (0.4 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 16000)
    sf.write(root / "slow.wav", np.zeros(4000, np.float32), 8000)
    (root / "not-image.png").write_text("hello")
    return root


def _run(capsys, *argv):
    code = omnic_main(["run", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("flags", [
    ("--image", "img.png"), ("--audio", "a.wav"),
    ("--image", "img.png", "--audio", "a.wav", "--sensors", "0.5,-1,2,0"),
], ids=["image", "audio", "all"])
def test_onnx_equals_reference(build, media_files, capsys, tmp_path, flags):
    _, build_dir = build
    flags = [f if f.startswith("-") or "," in f else str(media_files / f) for f in flags]
    results = {}
    for target in ("onnx", "torch"):
        logits = tmp_path / f"{target}.npy"
        code, out, err = _run(capsys, build_dir, "--target", target, *flags, "--prompt",
                              "What is this?", "--max-new-tokens", "6", "--ignore-eos", "--json",
                              "--logits-out", logits)
        assert code == 0, err
        results[target] = json.loads(out), np.load(logits)
    (onnx, onnx_logits), (ref, ref_logits) = results["onnx"], results["torch"]
    assert onnx["tokens"] == ref["tokens"] and len(onnx["tokens"]) == 6
    assert onnx["text"] == ref["text"]
    assert onnx_logits.shape == ref_logits.shape and onnx_logits.shape[0] > 16
    assert np.abs(onnx_logits - ref_logits).max() < 1e-4
    np.testing.assert_allclose(onnx["actions"], ref["actions"], atol=1e-4)
    assert np.asarray(onnx["actions"]).shape == (2, 3)


def test_spec_file_is_the_reference(build, media_files, capsys):
    spec, build_dir = build
    common = ["--image", media_files / "img.png", "--prompt", "<image>hi", "--max-new-tokens", "3",
              "--json"]
    code, out, err = _run(capsys, spec, *common)
    assert code == 0, err
    code2, out2, _ = _run(capsys, build_dir, "--target", "torch", *common)
    assert code2 == 0 and json.loads(out) == json.loads(out2)


def test_actions_printed_with_text_only_prompt(build, capsys):
    _, build_dir = build
    code, out, err = _run(capsys, build_dir, "--target", "onnx", "--prompt", "hi",
                          "--max-new-tokens", "2")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[-1].startswith("actions: ")
    assert np.asarray(json.loads(lines[-1][len("actions: "):])).shape == (2, 3)


@pytest.mark.parametrize("args,needle", [
    (["--image", "missing.png"], "missing.png: no such file"),
    (["--image", "not-image.png"], "not an image"),
    (["--audio", "slow.wav"], "sample rate 8000 Hz"),
    (["--audio", "img.png"], "not an audio file"),
    (["--sensors", "1,2"], "has 2 values"),
    (["--image", "img.png", "--prompt", "<audio>?"], "no --audio was given"),
    (["--image", "img.png", "--tokens", "256,259,72"], "holds 1 vision_encoder"),
    (["--image", "img.png", "--image-token", "<pic>"], "no token '<pic>'"),
    (["--image", "img.png", "--target", "gguf"], "onnx or torch"),
])
def test_bad_inputs_exit_2(build, media_files, capsys, args, needle):
    _, build_dir = build
    args = [str(media_files / a) if a.endswith((".png", ".wav")) else a for a in args]
    if "--target" not in args:
        args += ["--target", "onnx"]
    if "--prompt" not in args and "--tokens" not in args:
        args += ["--prompt", "x"]
    code, out, err = _run(capsys, build_dir, *args)
    assert code == 2
    assert needle in err and "Traceback" not in err and out == ""


def test_missing_component_exit_2(build, media_files, capsys, tmp_path):
    _, build_dir = build
    copy = tmp_path / "b"
    shutil.copytree(build_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["artifacts"] = [e for e in manifest["artifacts"] if e["component"] != "audio_encoder"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = _run(capsys, copy, "--target", "onnx", "--audio", media_files / "a.wav",
                        "--prompt", "x")
    assert code == 2 and "no onnx/audio_encoder artifact" in err and "Traceback" not in err


def test_modality_missing_from_spec_exit_2(tiny_spec_file, media_files, capsys):
    spec = tiny_spec_file("text-only")  # no modalities: nothing is built before the check
    code, _, err = _run(capsys, spec, "--image", media_files / "img.png", "--prompt", "x")
    assert code == 2 and "the spec has no vision encoder" in err
