"""Audio front end: PCM WAV reading, resampling, fixed-length clips and log spectrograms.

A clip becomes a network input in three steps: :func:`read_wav` (mono float32 in [-1, 1)),
:func:`conform_wave` (sample rate, clipping to [-1, 1], exact length; :func:`load_audio` does
both) and :func:`spectrogram` ((F, T) log-magnitude STFT or log-mel). The settings live in one
frozen :class:`SpectrogramConfig`; :data:`SPECTROGRAM_PRESETS` holds the published ones.
"""
from __future__ import annotations

import functools

import math
import struct
import wave as wavelib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .lazy import MediaError
from .transforms import add_noise_snr

__all__ = ["read_wav", "resample", "fix_length", "conform_wave", "load_audio",
           "SpectrogramConfig", "SPECTROGRAM_PRESETS", "spectrogram_config", "hz_to_mel",
           "mel_to_hz", "mel_filterbank", "spectrogram", "spectrogram_shape",
           "add_waveform_noise"]

_FLOAT32_EPS = float(np.finfo(np.float32).eps)  # Kaldi's floor before the log
_WAV_FORMATS = {3: "IEEE float", 6: "A-law", 7: "mu-law", 0xFFFE: "WAVE_FORMAT_EXTENSIBLE"}
_EXPECTED_WAV = "a PCM RIFF/WAVE file (format 1, 8/16/24/32-bit integer samples)"

#: name -> SpectrogramConfig fields; each entry says where its numbers come from.
SPECTROGRAM_PRESETS: dict[str, dict[str, Any]] = {
    # CREMA-D as in OGM-GE (Peng et al., CVPR 2022; GeWu-Lab/OGM-GE_CVPR2022,
    # dataset/CramedDataset.py): librosa load at 22,050 Hz, clip tiled and cut to 3 s, clipped
    # to [-1, 1], librosa STFT n_fft 512 (window n_fft, periodic Hann, centred with reflection
    # padding in librosa < 0.10), hop 353, log(|X| + 1e-7) -> 257 x 188. The D&R release reads
    # precomputed spectrograms and states that its preprocessing follows OGM-GE.
    "crema_d": dict(sample_rate=22050, duration=3.0, n_fft=512, hop_length=353,
                    kind="log_stft", power=1.0, log_offset=1e-7, fill="tile"),
    # Kinetics-Sounds as in OGM-GE (data/KineticSound/process_audio.py, whose files
    # GeWu-Lab/BalanceBenchmark also reads): 16 kHz WAV (ffmpeg -ar 16000), Kaldi fbank with
    # 128 mel bins, 25 ms Hann window (400 samples in a 512-point FFT), 10 ms shift, 20 Hz
    # lowest frequency, log mel power; 10 s clips -> 128 x 1001 here. Not reproduced: Kaldi's
    # pre-emphasis, DC removal and edge snipping, the padding of frames to 1024, and the
    # dataset mean/std normalisation.
    "kinetics_sounds": dict(sample_rate=16000, duration=10.0, n_fft=512, win_length=400,
                            hop_length=160, kind="log_mel", n_mels=128, f_min=20.0,
                            power=2.0, log_offset=_FLOAT32_EPS, fill="pad"),
    # The common log-mel input of AST (Gong et al., Interspeech 2021) and its successors:
    # 16 kHz, 25 ms window (400), 10 ms hop (160), 128 mel bins, log power -> 128 x 1001.
    "logmel_16k": dict(sample_rate=16000, duration=10.0, n_fft=400, hop_length=160,
                       kind="log_mel", n_mels=128, power=2.0, log_offset=1e-6, fill="pad"),
    # CPU setting for the 8 kHz Free Spoken Digit Dataset (clips 0.14-2.3 s, median 0.42 s,
    # 20 of 3,000 longer than 1 s): 1 s keeps almost every word whole; a 32 ms window (256)
    # with a 16 ms hop (128) is a usual speech frame and gives 63 frames; 40 mel bands up to
    # 4 kHz is the usual speech resolution. Zero padding keeps one utterance per clip rather
    # than repeating the word. -> 40 x 63.
    "fsdd_cpu": dict(sample_rate=8000, duration=1.0, n_fft=256, hop_length=128,
                     kind="log_mel", n_mels=40, power=2.0, log_offset=1e-6, fill="pad"),
}


# ---------------------------------------------------------------- waveforms

def _decode_pcm(data: bytes, width: int, channels: int) -> np.ndarray:
    """Interleaved little-endian PCM bytes -> float64 (frames, channels) in [-1, 1)."""
    if width == 1:  # unsigned 8-bit, 128 is silence
        x = (np.frombuffer(data, np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width == 3:  # three bytes per sample: assemble, then sign-extend from bit 23
        b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = np.where(v >= 1 << 23, v - (1 << 24), v).astype(np.float64) / 2.0 ** 23
    else:
        dtype = {2: "<i2", 4: "<i4"}[width]
        x = np.frombuffer(data, dtype).astype(np.float64) / 2.0 ** (8 * width - 1)
    return x.reshape(-1, channels)


def read_wav(path: Union[str, Path]) -> tuple[Tensor, int]:
    """Read a PCM WAV file as a mono waveform.

    Channels are averaged; integer samples v are scaled to [-1, 1): 8-bit (v - 128) / 128,
    16-bit v / 2^15, 24-bit v / 2^23, 32-bit v / 2^31.

    Returns:
        (waveform float32 (n,), sample rate in Hz).

    Raises:
        MediaError: the file is missing, not RIFF/WAVE, not integer PCM (IEEE float or a
            compressed format), truncated, or holds no frames.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, f"file not found; expected {_EXPECTED_WAV}")
    try:
        with wavelib.open(str(path), "rb") as f:
            channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
            declared = f.getnframes()
            data = f.readframes(declared)
    except wavelib.Error as err:
        code = str(err).rsplit(":", 1)[-1].strip()
        fmt = _WAV_FORMATS.get(int(code), f"format {code}") if code.isdigit() else None
        what = f"unsupported sample format ({fmt})" if fmt else f"not a valid WAV file ({err})"
        raise MediaError(path, f"{what}; expected {_EXPECTED_WAV}") from None
    except (EOFError, OSError, RuntimeError, struct.error) as err:  # cut or garbled chunks
        raise MediaError(path, f"unreadable or truncated header ({type(err).__name__} {err})"
                               f"; expected {_EXPECTED_WAV}") from None
    if width not in (1, 2, 3, 4):
        raise MediaError(path, f"{8 * width}-bit samples; expected {_EXPECTED_WAV}")
    frames = len(data) // (width * channels)
    if frames < declared:
        raise MediaError(path, f"truncated: the header declares {declared} frames, the file "
                               f"holds {frames}")
    if frames == 0:
        raise MediaError(path, "holds zero audio frames; expected at least one")
    x = _decode_pcm(data[: frames * width * channels], width, channels).mean(axis=1)  # (n,)
    return torch.from_numpy(x.astype(np.float32)), rate


def resample(wave: Tensor, orig_sr: int, target_sr: int) -> Tensor:
    """Polyphase resampling (``scipy.signal.resample_poly``, ratio reduced by the gcd).

    Args:
        wave: (..., n) waveform(s). orig_sr, target_sr: rates in Hz.

    Returns:
        float32 (..., ceil(n * target_sr / orig_sr)); ``wave`` itself when the rates are equal.
    """
    for name, sr in (("orig_sr", orig_sr), ("target_sr", target_sr)):
        if isinstance(sr, bool) or not isinstance(sr, int) or sr <= 0:
            raise ValueError(f"resample: {name} must be a positive int (Hz), got {sr!r}")
    if orig_sr == target_sr:
        return wave
    from scipy.signal import resample_poly

    g = math.gcd(orig_sr, target_sr)
    out = resample_poly(wave.double().numpy(), target_sr // g, orig_sr // g, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def fix_length(wave: Tensor, n: int, mode: str = "tile") -> Tensor:
    """Exactly ``n`` samples along the last axis: longer clips keep their first ``n``.

    ``"tile"`` repeats a short clip end to end (the CREMA-D practice of OGM-GE, which tiles to
    3 s, then cuts); ``"pad"`` appends zeros.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"fix_length: n must be a positive int, got {n!r}")
    if mode not in ("tile", "pad"):
        raise ValueError(f"fix_length: mode must be 'tile' or 'pad', got {mode!r}")
    length = wave.shape[-1]
    if length == 0:
        raise ValueError("fix_length: empty waveform")
    if length < n and mode == "tile":
        wave = torch.cat([wave] * math.ceil(n / length), dim=-1)
    elif length < n:
        wave = torch.nn.functional.pad(wave, (0, n - length))
    return wave[..., :n]


# ---------------------------------------------------------------- configuration

def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _one_of(*valid: str) -> tuple[Any, str]:
    return (lambda v: v in valid), f"one of {list(valid)}"


_POS_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
            "a positive int")
_POS_REAL = (lambda v: _is_real(v) and v > 0, "a positive number")
_FLAG = (lambda v: isinstance(v, bool), "true or false")
#: field -> (test, what is expected); SpectrogramConfig also checks fields against each other.
_FIELD_CHECKS = {"sample_rate": _POS_INT, "duration": _POS_REAL, "n_fft": _POS_INT,
                 "hop_length": _POS_INT, "window": _one_of("hann"),
                 "kind": _one_of("log_stft", "log_mel"), "n_mels": _POS_INT,
                 "f_min": (lambda v: _is_real(v) and v >= 0, "a number >= 0"),
                 "log_offset": _POS_REAL, "power": _POS_REAL, "center": _FLAG,
                 "fill": _one_of("tile", "pad"), "resample": _FLAG}


def _bad(name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"SpectrogramConfig.{name}: expected {expected}, got {value!r}")


@dataclass(frozen=True)
class SpectrogramConfig:
    """How a waveform becomes a spectrogram; see :data:`SPECTROGRAM_PRESETS`.

    Attributes:
        sample_rate: rate in Hz that clips are brought to. duration: clip length in seconds.
        n_fft: FFT size. hop_length: samples between frames. win_length: periodic Hann
            window length (None: n_fft; shorter windows are zero-padded to n_fft, centred).
        window: only "hann". kind: "log_stft" (F = n_fft // 2 + 1) or "log_mel" (F = n_mels).
        n_mels, f_min, f_max: HTK mel filterbank (f_max None: sample_rate / 2).
        log_offset: the output is log(x + log_offset). power: 1 magnitude, 2 power.
        center: pad reflectively by n_fft // 2 on both sides (frames centred on t * hop).
        fill: "tile" or "pad" a short clip (see :func:`fix_length`).
        resample: resample other rates; False makes another rate a :class:`MediaError`.
    """

    sample_rate: int
    duration: float
    n_fft: int
    hop_length: int
    win_length: Optional[int] = None
    window: str = "hann"
    kind: str = "log_stft"
    n_mels: int = 64
    f_min: float = 0.0
    f_max: Optional[float] = None
    log_offset: float = 1e-7
    power: float = 1.0
    center: bool = True
    fill: str = "tile"
    resample: bool = True

    def __post_init__(self) -> None:
        for name, (ok, expected) in _FIELD_CHECKS.items():
            if not ok(getattr(self, name)):
                raise _bad(name, getattr(self, name), expected)
        if self.win_length is not None and not (_POS_INT[0](self.win_length)
                                                and self.win_length <= self.n_fft):
            raise _bad("win_length", self.win_length, f"null or an int in [1, {self.n_fft}]")
        nyquist = self.sample_rate / 2
        if self.f_max is not None and not (_is_real(self.f_max) and self.f_max <= nyquist):
            raise _bad("f_max", self.f_max, f"null or a number <= sample_rate / 2 = {nyquist}")
        if self.f_min >= (nyquist if self.f_max is None else self.f_max):
            raise _bad("f_min", self.f_min, "a number below f_max (default sample_rate / 2)")
        least = self.n_fft // 2 + 1 if self.center else self.n_fft
        if self.num_samples < least:
            raise _bad("duration", self.duration, f"at least {least} samples at "
                       f"{self.sample_rate} Hz for n_fft={self.n_fft}, center={self.center}")

    @property
    def num_samples(self) -> int:
        """Clip length in samples: round(duration * sample_rate)."""
        return round(self.duration * self.sample_rate)


def spectrogram_config(spec: Union[str, Mapping[str, Any], SpectrogramConfig, None] = None,
                       default: str = "crema_d") -> SpectrogramConfig:
    """A :class:`SpectrogramConfig` from a preset name, or a mapping with an optional
    ``preset`` key (default: ``default``) plus field overrides, or a config (returned as is).

    Raises:
        ValueError: unknown preset or key, naming it and listing the valid ones.
    """
    if isinstance(spec, SpectrogramConfig):
        return spec
    if spec is None or isinstance(spec, str):
        spec = {} if spec is None else {"preset": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f"audio spectrogram settings: expected a preset name or a mapping, "
                         f"got {spec!r}")
    options = dict(spec)
    name = options.pop("preset", None) or default
    if name not in SPECTROGRAM_PRESETS:
        raise ValueError(f"audio: unknown spectrogram preset {name!r}; valid presets: "
                         f"{sorted(SPECTROGRAM_PRESETS)}")
    valid = [f.name for f in fields(SpectrogramConfig)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown spectrogram setting(s) {unknown}; valid keys: "
                         f"{['preset'] + sorted(valid)}")
    return SpectrogramConfig(**{**SPECTROGRAM_PRESETS[name], **options})


# ---------------------------------------------------------------- features

def conform_wave(wave: Tensor, sample_rate: int, cfg: SpectrogramConfig,
                 path: Union[str, Path] = "<waveform>") -> Tensor:
    """Bring a (n,) waveform to ``cfg``: rate (or MediaError naming ``path``), [-1, 1], length."""
    if sample_rate != cfg.sample_rate:
        if not cfg.resample:
            raise MediaError(path, f"sample rate {sample_rate} Hz; expected {cfg.sample_rate} "
                                   f"Hz (resampling is off)")
        wave = resample(wave, sample_rate, cfg.sample_rate).clamp(-1.0, 1.0)
    return fix_length(wave, cfg.num_samples, cfg.fill)


def load_audio(path: Union[str, Path], cfg: SpectrogramConfig) -> Tensor:
    """:func:`read_wav` then :func:`conform_wave`: float32 (round(duration * sample_rate),)."""
    wave, sr = read_wav(path)
    return conform_wave(wave, sr, cfg, path)


def hz_to_mel(f: Union[float, Tensor]) -> Union[float, Tensor]:
    """HTK mel scale: 2595 log10(1 + f / 700) (a float or an elementwise tensor)."""
    return 2595.0 * (torch.log10 if isinstance(f, Tensor) else math.log10)(1.0 + f / 700.0)


def mel_to_hz(m: Union[float, Tensor]) -> Union[float, Tensor]:
    """Inverse of :func:`hz_to_mel`: 700 (10^(m / 2595) - 1)."""
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0,
                   f_max: Optional[float] = None) -> Tensor:
    """Triangular filters on FFT bins 0..sample_rate / 2, unnormalised (peak 1).

    Filter i rises linearly (in Hz) from edge i to 1 at edge i + 1 and falls to 0 at edge
    i + 2, the n_mels + 2 edges evenly spaced in HTK mel between f_min and f_max.

    Returns:
        float32 (n_mels, n_freqs).
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)  # (n_freqs,)
    mels = torch.linspace(hz_to_mel(float(f_min)), hz_to_mel(float(f_max)), n_mels + 2,
                          dtype=torch.float64)
    edges = mel_to_hz(mels)  # (n_mels + 2,)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1) each
    rise = (freqs - lo) / (mid - lo)  # (n_mels, n_freqs)
    fall = (hi - freqs) / (hi - mid)
    return torch.clamp(torch.minimum(rise, fall), min=0.0).float()


@functools.lru_cache(maxsize=16)
def _stft_constants(cfg: SpectrogramConfig) -> tuple[Tensor, Optional[Tensor]]:
    """The window and (log-mel) filterbank of ``cfg``: built once per config, not per clip."""
    win = cfg.win_length or cfg.n_fft
    fb = (mel_filterbank(cfg.n_fft // 2 + 1, cfg.n_mels, cfg.sample_rate, cfg.f_min, cfg.f_max)
          if cfg.kind == "log_mel" else None)
    return torch.hann_window(win, periodic=True), fb


def spectrogram(wave: Tensor, cfg: SpectrogramConfig) -> Tensor:
    """Log spectrogram of (n,) or (B, n) waveforms of ``cfg.num_samples`` samples.

    Returns:
        float32 (F, T) or (B, F, T): log(|STFT|^power [mel-filtered] + log_offset).
    """
    if wave.dim() not in (1, 2) or wave.shape[-1] != cfg.num_samples:
        raise ValueError(f"spectrogram: expected a waveform (n,) or (B, n) with n = "
                         f"{cfg.num_samples} samples, got shape {tuple(wave.shape)}")
    window, fb = _stft_constants(cfg)
    stft = torch.stft(wave.float(), cfg.n_fft, hop_length=cfg.hop_length,
                      win_length=window.shape[0], window=window, center=cfg.center,
                      pad_mode="reflect", return_complex=True)  # (..., n_fft // 2 + 1, T)
    x = stft.abs() if cfg.power == 1 else stft.abs().pow(cfg.power)
    if fb is not None:
        x = torch.matmul(fb, x)  # (n_mels, F) @ (..., F, T) -> (..., n_mels, T)
    return torch.log(x + cfg.log_offset)


def spectrogram_shape(cfg: SpectrogramConfig) -> tuple[int, int]:
    """(F, T) of :func:`spectrogram`'s output, computed without an STFT."""
    padded = cfg.num_samples + (2 * (cfg.n_fft // 2) if cfg.center else 0)
    frames = 1 + (padded - cfg.n_fft) // cfg.hop_length
    return (cfg.n_mels if cfg.kind == "log_mel" else cfg.n_fft // 2 + 1), frames


def add_waveform_noise(wave: Tensor, snr_db: float, generator: torch.Generator) -> Tensor:
    """White Gaussian noise at ``snr_db`` on one (n,) waveform (see ``add_noise_snr``)."""
    if wave.dim() != 1:
        raise ValueError(f"add_waveform_noise: expected one waveform (n,), got shape "
                         f"{tuple(wave.shape)}")
    return add_noise_snr(wave.float().unsqueeze(0), snr_db, generator)[0]
