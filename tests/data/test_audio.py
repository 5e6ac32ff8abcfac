"""Audio front end: WAV decoding, resampling, lengths, mel scale, spectrograms, presets, noise."""
from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrelearn.data.audio import (SPECTROGRAM_PRESETS, SpectrogramConfig, add_waveform_noise,
                                  fix_length, hz_to_mel, load_audio, mel_filterbank,
                                  mel_to_hz, read_wav, resample, spectrogram,
                                  spectrogram_config, spectrogram_shape)
from mmrelearn.data.lazy import MediaError
from mmrelearn.data.transforms import sample_generator


def _write(path: Path, frames: bytes, width: int, channels: int = 1, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(frames)
    return path


def _int16(values) -> bytes:
    return np.asarray(values, dtype="<i2").tobytes()


# ---------------------------------------------------------------- read_wav

def test_read_16bit_exact_values_and_rate(tmp_path):
    path = _write(tmp_path / "a.wav", _int16([0, 16384, -32768, 32767]), 2, rate=11025)
    x, sr = read_wav(path)
    assert sr == 11025 and x.dtype == torch.float32 and x.shape == (4,)
    assert x.tolist() == [0.0, 0.5, -1.0, pytest.approx(32767 / 32768)]


def test_read_8bit_unsigned(tmp_path):
    x, _ = read_wav(_write(tmp_path / "a.wav", bytes([128, 192, 0, 255]), 1))
    assert x.tolist() == [0.0, 0.5, -1.0, 127 / 128]


def test_read_24bit_and_32bit(tmp_path):
    values = [0, 2 ** 22, -2 ** 23, 2 ** 23 - 1, -1]
    raw = b"".join(v.to_bytes(3, "little", signed=True) for v in values)
    x, _ = read_wav(_write(tmp_path / "a.wav", raw, 3))
    assert x.tolist() == pytest.approx([0.0, 0.5, -1.0, (2 ** 23 - 1) / 2 ** 23, -1 / 2 ** 23])
    x, _ = read_wav(_write(tmp_path / "b.wav", np.array([2 ** 30, -2 ** 31], "<i4").tobytes(), 4))
    assert x.tolist() == [0.5, -1.0]


def test_stereo_is_averaged_to_mono(tmp_path):
    # interleaved frames (L, R): (1000, 3000), (-2000, 2000), (-32768, -32768)
    path = _write(tmp_path / "s.wav", _int16([1000, 3000, -2000, 2000, -32768, -32768]), 2, 2)
    x, _ = read_wav(path)
    assert x.tolist() == [2000 / 32768, 0.0, -1.0]


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _float_wav(path: Path) -> Path:
    data = np.zeros(8, np.float32).tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 3, 1, 8000, 32000, 4, 32)  # format 3 = IEEE float
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt
                     + b"data" + struct.pack("<I", len(data)) + data)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.wav", "missing.wav: file not found"),
    (lambda d: _bytes(d / "t.wav", b"not audio"), r"t.wav: not a valid WAV"),
    (lambda d: _bytes(d / "e.wav", b""), r"e.wav: unreadable or trunc"),
    (lambda d: _float_wav(d / "f.wav"), r"f.wav: unsupported sample format \(IEEE float\)"),
    (lambda d: _write(d / "z.wav", b"", 2), "z.wav: holds zero audio frames"),
])
def test_read_errors_name_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(MediaError, match=message) as err:
        read_wav(path)
    assert err.value.path == str(path) and "expected" in str(err.value)


def test_truncated_file_is_an_error(tmp_path):
    path = _write(tmp_path / "cut.wav", _int16(range(100)), 2)
    path.write_bytes(path.read_bytes()[:-50])  # header still declares 100 frames
    with pytest.raises(MediaError, match="cut.wav: truncated: the header declares 100 frames, "
                                         "the file holds 75"):
        read_wav(path)


# ---------------------------------------------------------------- resample / fix_length

def test_resample_lengths_and_identity():
    x = torch.zeros(8000)
    assert resample(x, 8000, 8000) is x
    assert resample(x, 8000, 16000).shape == (16000,)
    assert resample(x, 8000, 22050).shape == (22050,)  # ratio 441/160
    assert resample(torch.zeros(2, 4000), 16000, 8000).shape == (2, 2000)
    with pytest.raises(ValueError, match="target_sr must be a positive int"):
        resample(x, 8000, 0)


def test_resample_keeps_a_sines_frequency():
    t = torch.arange(8000, dtype=torch.float64) / 8000
    x = torch.sin(2 * math.pi * 440 * t).float()  # 1 s at 8 kHz
    y = resample(x, 8000, 22050)  # 1 s at 22,050 Hz: rfft bin k is k Hz
    assert int(torch.fft.rfft(y.double()).abs().argmax()) == 440
    assert y.abs().max() == pytest.approx(1.0, abs=0.02)


def test_fix_length_tile_pad_and_cut():
    x = torch.tensor([1.0, 2.0, 3.0])
    assert fix_length(x, 7, "tile").tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert fix_length(x, 5, "pad").tolist() == [1, 2, 3, 0, 0]
    assert fix_length(torch.arange(5.0), 3, "tile").tolist() == [0, 1, 2]
    assert fix_length(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), 3).tolist() == [[1, 2, 1],
                                                                              [3, 4, 3]]
    with pytest.raises(ValueError, match="mode must be 'tile' or 'pad', got 'loop'"):
        fix_length(x, 4, "loop")
    with pytest.raises(ValueError, match="empty waveform"):
        fix_length(torch.zeros(0), 4)


# ---------------------------------------------------------------- mel scale

def test_hz_to_mel_exact_values():
    # 2595 log10(1 + 700 / 700) = 2595 log10 2; 2595 log10(1 + 6300 / 700) = 2595 log10 10
    assert hz_to_mel(700.0) == pytest.approx(2595 * 0.30102999566398120)
    assert hz_to_mel(6300.0) == pytest.approx(2595.0) and hz_to_mel(0.0) == 0.0
    assert mel_to_hz(2595.0) == pytest.approx(6300.0)
    t = torch.tensor([0.0, 700.0, 6300.0], dtype=torch.float64)
    assert torch.allclose(mel_to_hz(hz_to_mel(t)), t)


def test_filterbank_exact_single_filter():
    # one filter between 0 and 6300 Hz (mel 0..2595): its peak is at mel 1297.5, i.e.
    # 700 (10^0.5 - 1) Hz; bins at 0, 3150, 6300 Hz; the middle one is on the falling side.
    fb = mel_filterbank(3, 1, 12600, 0.0, 6300.0)
    peak = 700 * (math.sqrt(10) - 1)
    assert fb.shape == (1, 3)
    assert fb[0].tolist() == pytest.approx([0.0, (6300 - 3150) / (6300 - peak), 0.0])


def test_filterbank_shape_and_peaks():
    fb = mel_filterbank(8001, 10, 16000, 0.0, 8000.0)  # bins 1 Hz apart
    assert fb.shape == (10, 8001) and fb.dtype == torch.float32
    centres = [mel_to_hz(k * hz_to_mel(8000.0) / 11) for k in range(1, 11)]
    assert fb.argmax(dim=1).tolist() == [round(c) for c in centres]
    assert torch.all(fb.max(dim=1).values > 0.99) and fb.max() <= 1.0 and fb.min() == 0.0


# ---------------------------------------------------------------- spectrogram

STFT = SpectrogramConfig(sample_rate=8000, duration=0.25, n_fft=256, hop_length=128,
                         kind="log_stft")


def test_sine_at_a_bin_frequency_peaks_at_that_bin():
    t = torch.arange(STFT.num_samples) / 8000
    x = torch.sin(2 * math.pi * (10 * 8000 / 256) * t)  # bin 10: 312.5 Hz
    s = spectrogram(x, STFT)
    assert s.shape == (129, 16) and s.dtype == torch.float32
    # interior frames (the first and last see the reflection padding at the clip's edges)
    assert s[:, 1:-1].argmax(dim=0).tolist() == [10] * 14


def test_constant_signal_has_exact_dc_magnitude():
    # sum of a periodic Hann window of 256 = 128, so |X_0| = 0.5 * 128 = 64 in every frame
    # (reflection padding of a constant is constant)
    s = spectrogram(torch.full((STFT.num_samples,), 0.5), STFT)
    assert torch.allclose(s[0], torch.full((16,), math.log(64 + 1e-7)), atol=1e-5)
    cfg = spectrogram_config({"preset": "crema_d", "sample_rate": 8000, "duration": 0.25,
                              "n_fft": 256, "hop_length": 128, "power": 2.0})
    s2 = spectrogram(torch.full((cfg.num_samples,), 0.5), cfg)
    assert torch.allclose(s2[0], torch.full((16,), math.log(64.0 ** 2)), rtol=1e-6)


@pytest.mark.parametrize("kind", ["log_stft", "log_mel"])
def test_zero_signal_gives_log_offset(kind):
    cfg = spectrogram_config({"preset": "fsdd_cpu", "kind": kind, "log_offset": 1e-7})
    s = spectrogram(torch.zeros(3, cfg.num_samples), cfg)
    assert s.shape == (3, *spectrogram_shape(cfg))
    assert torch.allclose(s, torch.full_like(s, math.log(1e-7)))


def test_batch_equals_single_and_length_is_checked():
    cfg = spectrogram_config("fsdd_cpu")
    x = torch.randn(2, cfg.num_samples, generator=torch.Generator().manual_seed(0)) * 0.1
    assert torch.allclose(spectrogram(x, cfg)[1], spectrogram(x[1], cfg), atol=1e-5)
    with pytest.raises(ValueError, match=r"n = 8000 samples, got shape \(7999,\)"):
        spectrogram(torch.zeros(7999), cfg)


@pytest.mark.parametrize("spec", [*SPECTROGRAM_PRESETS,
                                  {"preset": "fsdd_cpu", "center": False},
                                  {"preset": "fsdd_cpu", "n_fft": 255, "win_length": 200},
                                  {"preset": "crema_d", "center": False, "hop_length": 100}])
def test_spectrogram_shape_matches_the_real_output(spec):
    cfg = spectrogram_config(spec)
    assert spectrogram(torch.zeros(cfg.num_samples), cfg).shape == spectrogram_shape(cfg)


def test_preset_numbers():
    crema = spectrogram_config("crema_d")
    assert (crema.sample_rate, crema.num_samples, crema.n_fft, crema.hop_length) == \
        (22050, 66150, 512, 353)
    assert (crema.kind, crema.power, crema.log_offset, crema.fill) == \
        ("log_stft", 1.0, 1e-7, "tile")
    assert spectrogram_shape(crema) == (257, 188)  # 1 + 66150 // 353 frames
    ks = spectrogram_config("kinetics_sounds")
    assert (ks.sample_rate, ks.n_fft, ks.win_length, ks.hop_length, ks.n_mels, ks.f_min) == \
        (16000, 512, 400, 160, 128, 20.0)
    assert spectrogram_shape(ks) == (128, 1001)
    assert spectrogram_shape(spectrogram_config("logmel_16k")) == (128, 1001)
    fsdd = spectrogram_config("fsdd_cpu")
    assert (fsdd.sample_rate, fsdd.num_samples, fsdd.fill) == (8000, 8000, "pad")
    assert spectrogram_shape(fsdd) == (40, 63)


# ---------------------------------------------------------------- configuration errors

def test_config_lookup_and_overrides():
    assert spectrogram_config(None) == spectrogram_config("crema_d")
    assert spectrogram_config({"n_fft": 256}, default="fsdd_cpu").n_fft == 256
    cfg = spectrogram_config("fsdd_cpu")
    assert spectrogram_config(cfg) is cfg


@pytest.mark.parametrize("spec, message", [
    ("mfcc", r"unknown spectrogram preset 'mfcc'; valid presets: \['crema_d', 'fsdd_cpu'"),
    ({"preset": "fsdd_cpu", "hop": 3}, r"unknown spectrogram setting\(s\) \['hop'\]; valid "
                                       r"keys: \['preset', 'center'"),
    ({"n_fft": 0}, r"SpectrogramConfig.n_fft: expected a positive int, got 0"),
    ({"kind": "mfcc"}, r"kind: expected one of \['log_stft', 'log_mel'\], got 'mfcc'"),
    ({"f_max": 20000.0}, r"f_max: expected null or a number <= sample_rate / 2 = 11025.0"),
    ({"win_length": 600}, r"win_length: expected null or an int in \[1, 512\], got 600"),
    ({"duration": 0.001}, r"duration: expected at least 257 samples at 22050 Hz"),
    ({"center": 1}, r"center: expected true or false, got 1"),
    ({"fill": "loop"}, r"fill: expected one of \['tile', 'pad'\]"),
    (3, "expected a preset name or a mapping, got 3"),
])
def test_config_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        spectrogram_config(spec)


# ---------------------------------------------------------------- load_audio

def test_load_audio_resamples_or_names_the_rate(tmp_path):
    path = _write(tmp_path / "r.wav", _int16([16384] * 4000), 2, rate=16000)  # 0.25 s
    x = load_audio(path, spectrogram_config("fsdd_cpu"))  # 8 kHz, 1 s, zero padded
    assert x.shape == (8000,) and torch.all(x[2100:] == 0)
    assert x[100:1900].tolist() == pytest.approx([0.5] * 1800, abs=1e-3)
    with pytest.raises(MediaError, match=r"r.wav: sample rate 16000 Hz; expected 8000 Hz"):
        load_audio(path, spectrogram_config({"preset": "fsdd_cpu", "resample": False}))


def test_load_audio_tiles_like_crema_d(tmp_path):
    path = _write(tmp_path / "t.wav", _int16([0, 8192, 16384]), 2, rate=8000)
    cfg = spectrogram_config({"preset": "fsdd_cpu", "fill": "tile"})
    assert load_audio(path, cfg)[:7].tolist() == [0, 0.25, 0.5, 0, 0.25, 0.5, 0]


# ---------------------------------------------------------------- noise

def test_waveform_noise_snr_and_seed():
    t = torch.arange(200_000) / 8000
    x = 0.3 * torch.sin(2 * math.pi * 440 * t)
    noisy = add_waveform_noise(x, 10.0, sample_generator(7, 3))
    noise = noisy - x
    measured = 10 * math.log10(x.pow(2).mean().item() / noise.pow(2).mean().item())
    assert abs(measured - 10.0) < 0.2
    assert torch.equal(noisy, add_waveform_noise(x, 10.0, sample_generator(7, 3)))
    assert not torch.equal(noisy, add_waveform_noise(x, 10.0, sample_generator(7, 4)))
    with pytest.raises(ValueError, match=r"one waveform \(n,\), got shape \(2, 5\)"):
        add_waveform_noise(torch.zeros(2, 5), 10.0, sample_generator(0, 0))
