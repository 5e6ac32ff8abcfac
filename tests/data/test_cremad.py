"""CREMA-D: prepare (resumable, atomic) into a cache, and the cached loader through build_data."""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from mmrelearn.data import build_data, frames, media
from mmrelearn.data import prepare as prep
from mmrelearn.data.audio import (
    add_waveform_noise,
    spectrogram,
    spectrogram_config,
    spectrogram_shape,
)
from mmrelearn.data.cremad import EMOTIONS, load_cremad, parse_clip_name, prepare_cremad
from mmrelearn.data.lazy import MediaError
from mmrelearn.data.transforms import sample_generator

av = pytest.importorskip("av")

from mediafiles import ACTORS, CREMAD_CLIPS, make_cremad_raw, write_wav

CLIPS = CREMAD_CLIPS
#: small spectrogram settings: 0.25 s at 8 kHz, n_fft 64, hop 32 -> 33 x 63.
AUDIO = {"preset": "crema_d", "sample_rate": 8000, "duration": 0.25, "n_fft": 64,
         "hop_length": 32}
FRAMES = 5


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return make_cremad_raw(tmp_path_factory.mktemp("cremad_raw"))


@pytest.fixture(scope="module")
def cache(raw, tmp_path_factory):
    """A cache prepared once (frames 1, image_size 16) and only read by the tests using it."""
    path = tmp_path_factory.mktemp("cremad_cache")
    prepare_cremad(str(raw), str(path), image_size=16, audio=AUDIO, progress=False)
    return path


def copy_raw(raw, tmp_path):
    return shutil.copytree(raw, tmp_path / "raw")


def test_parse_clip_name():
    assert parse_clip_name("1091_WSI_SAD_XX") == ("1091", "SAD")
    with pytest.raises(ValueError, match="'1001_DFA_BOR_XX'.*emotion"):
        parse_clip_name("1001_DFA_BOR_XX")


def test_prepare_writes_cache_and_manifest(raw, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    report = prepare_cremad(str(raw), str(out), frames=2, image_size=16, audio=AUDIO,
                            progress=False)
    assert (report.clips, report.decoded, report.cached, report.skipped) == (12, 12, 0, 0)
    manifest = json.loads((out / "manifest.json").read_text())
    cfg = spectrogram_config(AUDIO)
    assert manifest["dataset"] == "cremad" and manifest["frames"] == 2
    assert manifest["image_size"] == 16 and manifest["audio"] == dataclasses.asdict(cfg)
    assert manifest["clips"][0] == {"clip": "1001_DFA_ANG_XX", "label": "ANG", "group": "1001"}
    assert [c["clip"] for c in manifest["clips"]] == sorted(CLIPS)
    for clip in CLIPS:
        assert np.load(out / "visual" / f"{clip}.npy").shape == (2, 3, 16, 16)
        assert np.load(out / "audio" / f"{clip}.npy").shape == (33, 63)
        assert np.load(out / "wave" / f"{clip}.npy").shape == (2000,)
    assert not list(out.rglob("*.tmp")) and not (out / "failed.jsonl").exists()

    def no_decoding(*args):
        raise AssertionError("a cached clip was decoded again")

    monkeypatch.setattr(media, "decode_clip", no_decoding)
    again = prepare_cremad(str(raw), str(out), frames=2, image_size=16, audio=AUDIO,
                           progress=False)
    assert (again.decoded, again.cached) == (0, 12)


def test_loader_labels_groups_and_tensors(cache):
    data = load_cremad(str(cache), image_size=16, audio=AUDIO)
    names = sorted(CLIPS)
    assert data.inputs is None and data.num_classes == 6 and data.class_names == list(EMOTIONS)
    assert data.labels.tolist() == [EMOTIONS.index(n.split("_")[2]) for n in names]
    assert data.groups == [n[:4] for n in names] and data.splits is None
    ds = data.dataset
    assert ds.input_shapes == {"audio": (33, 63), "visual": (1, 3, 16, 16)}
    inputs, label = ds[3]
    assert label.item() == data.labels[3].item()
    assert inputs["audio"].dtype == inputs["visual"].dtype == torch.float32
    raw_visual = torch.from_numpy(np.load(cache / "visual" / f"{names[3]}.npy")).float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (frames.IMAGENET_MEAN,
                                                              frames.IMAGENET_STD))
    assert torch.allclose(inputs["visual"], (raw_visual - mean) / std)
    assert torch.equal(inputs["audio"], torch.from_numpy(np.load(cache / "audio" /
                                                                  f"{names[3]}.npy")))


def test_split_by_group_keeps_actors_apart(cache):
    bundle = build_data("cremad", cache=str(cache), image_size=16, audio=AUDIO,
                        val_fraction=0.34, test_fraction=0.34, split_seed=1, split_by="group")
    names = sorted(CLIPS)
    actors = {split: {names[i][:4] for i in ds.index.tolist()}
              for split, ds in (("train", bundle.train), ("val", bundle.val),
                                ("test", bundle.test))}
    assert all(len(a) == 1 for a in actors.values())
    assert set.union(*actors.values()) == set(ACTORS)


def test_split_files_give_the_official_split(cache, tmp_path):
    names = sorted(CLIPS)
    test_clips = [n for n in names if n.startswith("1003")]
    (tmp_path / "train.csv").write_text("".join(f"{n},{n.split('_')[2]}\n" for n in names
                                                if n not in test_clips))
    (tmp_path / "test.csv").write_text("".join(f"{n},{n.split('_')[2]}\n" for n in test_clips))
    bundle = build_data("cremad", cache=str(cache), image_size=16, audio=AUDIO,
                        train_list=str(tmp_path / "train.csv"),
                        test_list=str(tmp_path / "test.csv"), val_fraction=0.25,
                        test_fraction=0.0, split_seed=0)
    assert sorted(names[i] for i in bundle.test.index.tolist()) == test_clips
    train_val = bundle.train.index.tolist() + bundle.val.index.tolist()
    assert sorted(names[i] for i in train_val) == [n for n in names if n not in test_clips]


def test_one_epoch_training_run(raw, tmp_path, one_thread):
    from mmrelearn.config import config_from_dict
    from mmrelearn.train.run import train

    raw_cfg = {
        "name": "cremad_tiny", "seed": 0,
        "data": {"name": "cremad", "cache": str(tmp_path / "cache"), "raw": str(raw),
                 "image_size": 32, "audio": AUDIO, "progress": False, "val_fraction": 0.25,
                 "test_fraction": 0.25, "split_seed": 0, "split_by": "group"},
        "model": {"encoders": {"audio": {"type": "resnet18", "width": 4},
                               "visual": {"type": "resnet18", "width": 4}}},
        "method": {"name": "joint"},
        "train": {"epochs": 1, "batch_size": 4, "progress": False},
    }
    summary = train(config_from_dict(raw_cfg), run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "summary.json").is_file() and "test" in summary
    assert len(list((tmp_path / "cache" / "visual").glob("*.npy"))) == 12


def test_interrupted_prepare_resumes(raw, tmp_path, monkeypatch):
    out, decode, calls = tmp_path / "cache", media.decode_clip, []

    def interrupted(source, *args):
        if len(calls) == 4:  # the 5th clip
            raise KeyboardInterrupt
        calls.append(source.clip)
        return decode(source, *args)

    monkeypatch.setattr(media, "decode_clip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_cremad(str(raw), str(out), audio=AUDIO, image_size=16, progress=False)
    assert not list(out.rglob("*.tmp")) and (out / "manifest.json").is_file()
    assert len(list((out / "wave").glob("*.npy"))) == 4
    (out / "visual" / f".{CLIPS[0]}.npy.abc123.tmp").write_bytes(b"left by a crash")
    calls.clear()
    monkeypatch.setattr(media, "decode_clip", lambda source, *a: calls.append(source.clip)
                        or decode(source, *a))
    report = prepare_cremad(str(raw), str(out), audio=AUDIO, image_size=16, progress=False)
    assert (report.decoded, report.cached, report.removed_temporaries) == (8, 4, 1)
    assert calls == sorted(CLIPS)[4:] and not list(out.rglob("*.tmp"))


def test_corrupt_and_missing_media(raw, tmp_path, caplog):
    src = copy_raw(raw, tmp_path)
    bad_video = src / "VideoFlash" / f"{sorted(CLIPS)[1]}.flv"
    bad_video.write_bytes(b"FLV but not really")
    (src / "AudioWAV" / f"{sorted(CLIPS)[5]}.wav").unlink()
    out = tmp_path / "cache"
    with pytest.raises(MediaError, match=str(bad_video)):
        prepare_cremad(str(src), str(out), audio=AUDIO, image_size=16, progress=False)
    report = prepare_cremad(str(src), str(out), audio=AUDIO, image_size=16, on_error="skip",
                            progress=False)
    assert (report.decoded, report.cached, report.skipped) == (9, 1, 2)
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert [r["clip"] for r in failed] == [sorted(CLIPS)[1], sorted(CLIPS)[5]]
    assert failed[1]["file"].endswith(f"{sorted(CLIPS)[5]}.wav")
    assert "file not found" in failed[1]["reason"]
    with caplog.at_level(logging.WARNING):
        data = load_cremad(str(out), audio=AUDIO, image_size=16, on_error="skip")
    assert len(data.labels) == 10 and "leaving out 2 clip" in caplog.text
    with pytest.raises(MediaError, match=f"{bad_video}.*on_error: skip"):
        load_cremad(str(out), audio=AUDIO, image_size=16)


def test_too_few_frames_and_wrong_sample_rate(raw, tmp_path):
    with pytest.raises(MediaError, match=f"{min(CLIPS)}.flv: only 5 decodable"):
        prepare_cremad(str(raw), str(tmp_path / "c1"), frames=6, audio=AUDIO, image_size=16,
                       progress=False)
    src = copy_raw(raw, tmp_path)
    wav = src / "AudioWAV" / f"{sorted(CLIPS)[2]}.wav"
    write_wav(wav, 0, rate=16000)
    with pytest.raises(MediaError, match=f"{wav}: sample rate 16000 Hz; expected 8000"):
        prepare_cremad(str(src), str(tmp_path / "c2"), audio={**AUDIO, "resample": False},
                       image_size=16, progress=False)


def test_changed_settings_are_a_clear_error(raw, cache):
    with pytest.raises(ValueError, match=r"frames \(cache 1, asked 2\).*new cache directory"):
        load_cremad(str(cache), frames=2, image_size=16, audio=AUDIO)
    with pytest.raises(ValueError, match=r"audio\.n_fft \(cache 64, asked 128\)"):
        prepare_cremad(str(raw), str(cache), image_size=16, audio={**AUDIO, "n_fft": 128},
                       progress=False)


def test_audio_noise_changes_audio_only_and_reproducibly(cache):
    clean = load_cremad(str(cache), image_size=16, audio=AUDIO).dataset
    noisy = [load_cremad(str(cache), image_size=16, audio=AUDIO,
                         audio_noise={"snr_db": 0.0, "seed": 3}).dataset for _ in range(2)]
    cfg = spectrogram_config(AUDIO)
    for i in (0, 7):
        c, (a, b) = clean[i][0], (n[i][0] for n in noisy)
        assert torch.equal(a["audio"], b["audio"]) and not torch.equal(a["audio"], c["audio"])
        assert torch.equal(a["visual"], c["visual"])
        wave_i = torch.from_numpy(np.load(cache / "wave" / f"{sorted(CLIPS)[i]}.npy"))
        expected = spectrogram(add_waveform_noise(wave_i, 0.0, sample_generator(3, i)), cfg)
        assert torch.equal(a["audio"], expected)
    assert noisy[0].input_shapes["audio"] == spectrogram_shape(cfg)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(frames=0), ValueError, "cremad frames"),
    (dict(on_error="ignore"), ValueError, "cremad on_error"),
    (dict(modalities=["audio", "depth"]), ValueError, "cremad modalities"),
    (dict(audio_noise={"snr_db": 1, "sigma": 2}), ValueError, "cremad audio_noise"),
    (dict(audio={"preset": "nope"}), ValueError, "unknown spectrogram preset 'nope'"),
    (dict(train_list="train.csv"), ValueError, "both train_list and test_list"),
])
def test_bad_options(cache, kwargs, error, message):
    opts = dict(image_size=16, audio=AUDIO)
    with pytest.raises(error, match=message):
        load_cremad(str(cache), **{**opts, **kwargs})


def test_missing_cache_and_bad_names(raw, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json not found.*raw option"):
        load_cremad(str(tmp_path / "empty"))
    src = copy_raw(raw, tmp_path)
    (src / "AudioWAV" / "notes.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="clip name 'notes'"):
        prepare_cremad(str(src), str(tmp_path / "c"), audio=AUDIO, image_size=16,
                       progress=False)
    with pytest.raises(FileNotFoundError, match="VideoFlash"):
        prepare_cremad(str(src / "AudioWAV"), str(tmp_path / "c"), progress=False)


def test_prepare_dataset_from_a_data_section(raw, tmp_path):
    from mmrelearn.config import config_from_dict

    data = {"name": "cremad", "cache": str(tmp_path / "c"), "raw": str(raw), "image_size": 16,
            "audio": AUDIO, "progress": False, "val_fraction": 0.2, "split_by": "group",
            "audio_noise": {"snr_db": 5.0}, "noise": None}
    cfg = config_from_dict({"data": data, "model": {"encoders": {
        m: {"type": "resnet18", "width": 4} for m in ("audio", "visual")}}})
    section = cfg.data  # as the CLI passes it: every split and loader key filled in
    report = prep.prepare_dataset(section["name"], section)
    assert (report.dataset, report.decoded, report.cached) == ("cremad", 12, 0)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\]"):
        prep.prepare_dataset("cremad", {**section, "colour": 1})
    with pytest.raises(ValueError, match="option 'raw' is not set"):
        prep.prepare_dataset("cremad", {**section, "raw": None})
    with pytest.raises(ValueError, match="has no prepare step"):
        prep.prepare_dataset("mfeat", {})
