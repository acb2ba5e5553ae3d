"""Media decoding against transformers' own processors, and its errors.

Tolerances: images 1e-5 (the same uint8 bicubic resize by Pillow, then float32 arithmetic; in
practice equal), Whisper log-mels 1e-4 (transformers runs its torch float32 STFT when torch is
installed, omnic a float64 numpy one: the difference is float32 rounding of log10 values ~1).
"""

from __future__ import annotations

import numpy as np
import pytest

from omnic.runtime import media
from omnic.spec.modalities import Audio, Vision

PIL = pytest.importorskip("PIL")
sf = pytest.importorskip("soundfile")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402


def _image(mode: str, h: int, w: int, seed: int = 0) -> "Image.Image":
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)


def _vision(kind: str, size: int) -> Vision:
    return Vision(kind=kind, image_size=size, patch_size=8, d_model=32, n_layers=1, n_heads=2)


@pytest.mark.parametrize("mode,h,w", [("RGB", 37, 53), ("RGBA", 64, 30), ("L", 24, 24)])
@pytest.mark.parametrize("size", [32, 48])
def test_siglip_matches_transformers(mode, h, w, size):
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    im = _image(mode, h, w)
    ref = SiglipImageProcessorPil(size={"height": size, "width": size})(im, return_tensors="np")
    ours = media.preprocess_image(im, _vision("siglip", size))
    assert ours.dtype == np.float32 and ours.shape == (1, 3, size, size)
    np.testing.assert_allclose(ours, ref["pixel_values"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode,h,w", [("RGB", 37, 53), ("RGBA", 70, 41), ("RGB", 32, 32)])
def test_clip_matches_transformers(mode, h, w):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    size = 32
    proc = CLIPImageProcessorPil(size={"shortest_edge": size},
                                 crop_size={"height": size, "width": size})
    im = _image(mode, h, w, seed=1)
    ours = media.preprocess_image(im, _vision("clip", size))
    np.testing.assert_allclose(ours, proc(im, return_tensors="np")["pixel_values"], atol=1e-5,
                               rtol=0)


def test_vit_uses_the_spec_statistics():
    """vit: SigLIP's resize with the spec's mean/std (ImageNet's by default, or as written)."""
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    im = _image("RGB", 40, 28, seed=2)
    v = Vision(kind="vit", image_size=32, patch_size=8, d_model=32, n_layers=1, n_heads=2,
               image_mean=(0.1, 0.2, 0.3), image_std=(0.9, 0.8, 0.7))
    ref = SiglipImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.1, 0.2, 0.3],
                                  image_std=[0.9, 0.8, 0.7])(im, return_tensors="np")
    np.testing.assert_allclose(media.preprocess_image(im, v), ref["pixel_values"], atol=1e-5)


@pytest.mark.parametrize("n_mels,seconds,n_frames", [(80, 2, 200), (128, 30, 3000)])
def test_log_mel_matches_whisper_feature_extractor(n_mels, seconds, n_frames):
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(n_mels)
    t = np.arange(int(16000 * seconds * 0.7)) / 16000  # shorter than the window: padded
    wav = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.shape))
    wav = wav.astype(np.float32)
    fe = WhisperFeatureExtractor(feature_size=n_mels, chunk_length=seconds)
    ref = fe(wav, sampling_rate=16000, return_tensors="np")["input_features"]
    ours = media.log_mel(wav, Audio(n_mels=n_mels, n_frames=n_frames, d_model=32, n_layers=1,
                                    n_heads=2))
    assert ours.shape == ref.shape == (1, n_mels, n_frames) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_log_mel_cuts_long_audio():
    from transformers import WhisperFeatureExtractor

    wav = np.random.default_rng(3).standard_normal(16000 * 3).astype(np.float32) * 0.1
    ref = WhisperFeatureExtractor(feature_size=80, chunk_length=1)(
        wav, sampling_rate=16000, return_tensors="np")["input_features"]
    ours = media.log_mel(wav, Audio(n_mels=80, n_frames=100, d_model=32, n_layers=1, n_heads=2))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_mel_filters_match_transformers():
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=0.0,
                          max_frequency=8000.0, sampling_rate=16000, norm="slaney",
                          mel_scale="slaney")
    np.testing.assert_allclose(media.mel_filters(80), ref, atol=1e-9, rtol=1e-6)


# -- files and errors -------------------------------------------------------------------------
def test_load_image_file_equals_preprocessing(tmp_path):
    im = _image("RGB", 30, 45, seed=4)
    path = tmp_path / "x.png"
    im.save(path)
    v = _vision("siglip", 32)
    np.testing.assert_array_equal(media.load_image(path, v), media.preprocess_image(im, v))


def test_load_audio_mono_mix(tmp_path):
    stereo = np.stack([np.linspace(-0.5, 0.5, 1600), np.full(1600, 0.25)], axis=1)
    path = tmp_path / "s.wav"
    sf.write(path, stereo.astype(np.float32), 16000, subtype="FLOAT")
    np.testing.assert_allclose(media.load_audio(path), stereo.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("case,needle", [
    ("missing", "no such file"), ("text", "not an image"), ("dir", "not a file")])
def test_image_errors(tmp_path, case, needle):
    path = {"missing": tmp_path / "nope.png", "text": tmp_path / "t.png", "dir": tmp_path}[case]
    if case == "text":
        path.write_text("not a picture")
    with pytest.raises(media.MediaError, match=needle):
        media.load_image(path, _vision("siglip", 32))


def test_audio_errors(tmp_path):
    slow = tmp_path / "slow.wav"
    sf.write(slow, np.zeros(800, np.float32), 8000)
    with pytest.raises(media.MediaError, match="8000 Hz.*16000 Hz"):
        media.load_audio(slow)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF....nothing")
    with pytest.raises(media.MediaError, match="not an audio file"):
        media.load_audio(junk)
    with pytest.raises(media.MediaError, match="no such file"):
        media.load_audio(tmp_path / "none.wav")


def test_sensors(tmp_path):
    np.testing.assert_array_equal(media.load_sensors("1, 2.5,-3", 3),
                                  np.array([[1, 2.5, -3]], np.float32))
    np.save(tmp_path / "s.npy", np.arange(4, dtype=np.float64))
    out = media.load_sensors(str(tmp_path / "s.npy"), 4)
    assert out.dtype == np.float32 and out.tolist() == [[0, 1, 2, 3]]
    with pytest.raises(media.MediaError, match="has 2 values.*takes 3"):
        media.load_sensors("1,2", 3)
    with pytest.raises(media.MediaError, match="comma-separated"):
        media.load_sensors("1,a", 2)
    with pytest.raises(media.MediaError, match="NaN"):
        media.load_sensors("1,nan", 2)
