"""Decode media files into encoder inputs: images with Pillow, audio with soundfile + numpy.

    load_image(path, vision)  -> float32 [1, C, H, W]        the vision encoder's `pixel_values`
    load_audio(path)          -> float32 [n_samples], 16 kHz mono
    log_mel(waveform, audio)  -> float32 [1, n_mels, n_frames] the audio encoder's `input_features`
    load_sensors(text|.npy, d) -> float32 [1, dim]            the sensor projector's `sensor_values`

Each function reproduces the preprocessing of the Hugging Face processor of the encoder family,
so an imported SigLIP / CLIP / Whisper tower sees what it saw in training (tested against
transformers' SiglipImageProcessor, CLIPImageProcessor and WhisperFeatureExtractor):
- siglip, vit: RGB (alpha composited on white), bicubic resize to image_size x image_size,
  x / 255, (x - mean) / std (`modalities.vision.mean/std`: SigLIP 0.5, ViT ImageNet's).
- clip: RGB, bicubic resize of the shortest edge to image_size, center crop, x / 255,
  normalised with OpenAI's CLIP mean and std.
- whisper: 16 kHz mono, padded with zeros or cut to n_frames * 160 samples, periodic Hann STFT
  (n_fft 400, hop 160, centred with reflect padding), |X|^2, Slaney mel filters (0-8 kHz),
  log10 (floor 1e-10), last frame dropped, clamp at max - 8, (x + 4) / 4.
Bad input (missing file, not an image or audio file, wrong sample rate, wrong sensor width) is a
`MediaError` with one readable line; nothing is resampled behind the user's back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from omnic.spec.modalities import Audio, Vision

# Whisper's front end. ref: https://github.com/openai/whisper/blob/main/whisper/audio.py
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160


class MediaError(ValueError):
    """A media file or value that cannot become an encoder input (one readable line)."""


def _existing(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{what} {p}: no such file")
    if not p.is_file():
        raise MediaError(f"{what} {p}: not a file")
    return p


# -- images -----------------------------------------------------------------------------------
def _rgb(image: Any) -> Any:
    """RGB, transparency composited onto white (as transformers' convert_to_rgb does)."""
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess_image(image: Any, vision: "Vision") -> np.ndarray:
    """A PIL image as the vision encoder's `pixel_values`, float32 [1, C, H, W].

    Args:
        image: a PIL.Image in any mode.
        vision: the spec's `modalities.vision` (kind, image_size, channels).
    """
    from PIL import Image

    size = vision.image_size
    image = _rgb(image)
    if vision.kind == "clip":  # shortest edge to `size`, then the centred size x size crop
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        # ref: https://github.com/huggingface/transformers/blob/main/src/transformers/image_transforms.py
        #      (get_resize_output_image_size)
        new_long = int(size * long / short)
        new_w, new_h = (size, new_long) if w <= h else (new_long, size)
        image = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        pixels = np.asarray(image)[top : top + size, left : left + size]
    else:
        pixels = np.asarray(image.resize((size, size), resample=Image.Resampling.BICUBIC))
    x = pixels.astype(np.float64) * (1 / 255)  # transformers rescales in float64 then casts
    if vision.channels != 3 or len(vision.mean) != 3 or len(vision.std) != 3:
        raise MediaError(f"the vision encoder takes {vision.channels} channels (mean/std of "
                         f"{len(vision.mean)}/{len(vision.std)}); images are decoded to RGB (3)")
    mean, std = np.asarray(vision.mean, np.float32), np.asarray(vision.std, np.float32)
    x = (x.astype(np.float32) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)  # HWC -> 1CHW


def load_image(path: str | Path, vision: "Vision") -> np.ndarray:
    """Decode an image file (any format Pillow reads) into `pixel_values` [1, C, H, W]."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise MediaError("reading images needs Pillow: pip install 'pillow>=10'") from None
    p = _existing(path, "--image")
    try:
        with Image.open(p) as im:
            im.load()
            return preprocess_image(im, vision)
    except UnidentifiedImageError:
        raise MediaError(f"--image {p}: not an image Pillow can read") from None
    except OSError as err:  # truncated or corrupt files
        raise MediaError(f"--image {p}: cannot decode: {err}") from None


# -- audio ------------------------------------------------------------------------------------
def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an audio file (WAV, FLAC, OGG, ... as libsndfile reads) into float32 mono samples.

    Channels are averaged. A file at another sample rate is refused: resampling well needs a
    proper filter (e.g. `ffmpeg -i in.wav -ac 1 -ar 16000 out.wav`), not a silent guess here.
    """
    try:
        import soundfile as sf
    except ImportError:
        raise MediaError("reading audio needs soundfile: pip install 'soundfile>=0.12'") from None
    p = _existing(path, "--audio")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise MediaError(f"--audio {p}: not an audio file soundfile can read ({err})") from None
    if rate != sample_rate:
        raise MediaError(f"--audio {p}: sample rate {rate} Hz, the audio encoder needs "
                         f"{sample_rate} Hz; resample first, e.g. "
                         f"`ffmpeg -i {p.name} -ac 1 -ar {sample_rate} out.wav`")
    if data.shape[0] == 0:
        raise MediaError(f"--audio {p}: no samples")
    return data.mean(axis=1, dtype=np.float32)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    # ref: https://github.com/librosa/librosa/blob/main/librosa/core/convert.py
    #      (hz_to_mel, htk=False)
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    log_part = min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log_part, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filters(n_mels: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                f_max: float = 8000.0) -> np.ndarray:
    """Slaney-normalised triangular mel filters, float64 [n_fft // 2 + 1, n_mels]."""
    # ref: https://github.com/librosa/librosa/blob/main/librosa/filters.py (mel, norm="slaney")
    fft_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(f_max), n_mels + 2))
    width = np.diff(edges)
    ramps = edges[None, :] - fft_freqs[:, None]  # [bins, n_mels + 2]
    down = -ramps[:, :-2] / width[:-1]
    up = ramps[:, 2:] / width[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]  # constant energy per channel


def log_mel(waveform: np.ndarray, audio: "Audio") -> np.ndarray:
    """Whisper's log-mel spectrogram of 16 kHz mono samples: float32 [1, n_mels, n_frames].

    The waveform is padded with silence or cut to `n_frames * 160` samples (Whisper's fixed
    30 s window at n_frames 3000).
    """
    # ref: https://github.com/huggingface/transformers/blob/main/src/transformers/models/whisper/feature_extraction_whisper.py
    n_samples = audio.n_frames * HOP_LENGTH
    x = np.zeros(n_samples, dtype=np.float64)
    w = np.asarray(waveform, dtype=np.float64).reshape(-1)[:n_samples]
    x[: w.shape[0]] = w
    half = N_FFT // 2
    x = np.pad(x, (half, half), mode="reflect")  # centred frames, as torch.stft(center=True)
    n = 1 + (x.shape[0] - N_FFT) // HOP_LENGTH  # n_frames + 1
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP_LENGTH][:n]
    window = np.hanning(N_FFT + 1)[:-1]  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, n=N_FFT, axis=1)) ** 2  # [frames, bins]
    mel = mel_filters(audio.n_mels).T @ power.T  # [n_mels, frames]
    spec = np.log10(np.maximum(mel, 1e-10))[:, :-1]  # the last frame is dropped
    spec = np.maximum(spec, spec.max() - 8.0)
    return ((spec + 4.0) / 4.0).astype(np.float32)[None]


# -- sensors ----------------------------------------------------------------------------------
def load_sensors(value: str, dim: int) -> np.ndarray:
    """A sensor reading from a comma list ("0.1,0.2,...") or a .npy file: float32 [1, dim]."""
    text = value.strip()
    if text.endswith(".npy"):
        p = _existing(text, "--sensors")
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise MediaError(f"--sensors {p}: not a numpy .npy array ({err})") from None
    else:
        try:
            arr = np.asarray([float(t) for t in text.replace(" ", "").split(",") if t])
        except ValueError:
            raise MediaError(f"--sensors must be comma-separated numbers or a .npy file, got "
                             f"{value!r}") from None
    arr = np.asarray(arr, dtype=np.float32).reshape(-1)
    if arr.shape[0] != dim:
        raise MediaError(f"--sensors has {arr.shape[0]} values, the sensor projector takes {dim}")
    if not np.all(np.isfinite(arr)):
        raise MediaError("--sensors contains NaN or infinite values")
    return arr[None]
