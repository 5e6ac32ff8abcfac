"""Kinetics-Sounds: clips named by a list file, audio from the container, cached loader."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmrelearn.data import build_data
from mmrelearn.data import prepare as prep
from mmrelearn.data.audio import spectrogram, spectrogram_config
from mmrelearn.data.kinetics_sounds import (
    kinetics_sources,
    load_kinetics_sounds,
    prepare_kinetics_sounds,
    read_clip_list,
)
from mmrelearn.data.lazy import MediaError

av = pytest.importorskip("av")

from mediafiles import KS_CLIPS, make_ks_raw, write_mp4

CLIPS = KS_CLIPS
CLASSES = sorted({c for _, c in CLIPS})  # bird chirping, dog barking, playing drums
#: 0.25 s at 8 kHz, n_fft = window = 64, hop 32, 16 mel bands -> 16 x 63.
AUDIO = {"preset": "kinetics_sounds", "sample_rate": 8000, "duration": 0.25, "n_fft": 64,
         "win_length": None, "hop_length": 32, "n_mels": 16}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return make_ks_raw(tmp_path_factory.mktemp("ks_raw"))


@pytest.fixture(scope="module")
def cache(raw, tmp_path_factory):
    path = tmp_path_factory.mktemp("ks_cache")
    report = prepare_kinetics_sounds(str(raw), str(path), list_file=str(raw / "all.csv"),
                                     frames=2, image_size=16, audio=AUDIO, progress=False)
    assert (report.decoded, report.skipped) == (6, 0)
    return path


def test_read_clip_list_resolves_paths(raw, tmp_path):
    rows = read_clip_list(raw / "all.csv", raw)
    assert rows[0] == ("a1", str(raw / "videos" / "a1.mp4"), "dog barking") and len(rows) == 6
    (tmp_path / "videos").mkdir()
    (tmp_path / "near.csv").write_text("videos/a1.mp4,x\n")  # found beside the list instead
    (tmp_path / "videos" / "a1.mp4").write_bytes(b"")
    assert read_clip_list(tmp_path / "near.csv", raw / "nothing")[0][1] == str(
        tmp_path / "videos" / "a1.mp4")


def test_prepare_and_load(cache):
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["dataset"] == "kinetics_sounds" and manifest["frames"] == 2
    assert [c["clip"] for c in manifest["clips"]] == sorted(s for s, _ in CLIPS)
    data = load_kinetics_sounds(str(cache), frames=2, image_size=16, audio=AUDIO)
    stems = sorted(s for s, _ in CLIPS)
    label_of = dict(CLIPS)
    assert data.class_names == CLASSES and data.num_classes == 3 and data.groups is None
    assert data.labels.tolist() == [CLASSES.index(label_of[s]) for s in stems]
    assert data.dataset.input_shapes == {"audio": (16, 63), "visual": (2, 3, 16, 16)}
    inputs, _ = data.dataset[0]
    assert inputs["visual"].shape == (2, 3, 16, 16) and inputs["audio"].shape == (16, 63)
    wave = np.load(cache / "wave" / "a1.npy")  # the container's own audio track
    assert wave.shape == (2000,) and np.abs(wave).max() > 0.1
    cfg = spectrogram_config(AUDIO)
    assert torch.equal(inputs["audio"], spectrogram(torch.from_numpy(wave), cfg))


def test_classes_option_orders_labels(cache):
    order = ["playing drums", "dog barking", "bird chirping"]
    data = load_kinetics_sounds(str(cache), classes=order, frames=2, image_size=16,
                                audio=AUDIO, modalities=["visual"])
    assert data.class_names == order and data.labels.tolist() == [1, 1, 0, 0, 2, 2]
    assert data.dataset.modalities == ["visual"]
    with pytest.raises(ValueError, match=r"\['playing drums'\] that are not in the classes"):
        load_kinetics_sounds(str(cache), classes=order[1:], frames=2, image_size=16,
                             audio=AUDIO)


def test_official_split_lists_without_list_file(raw, tmp_path):
    bundle = build_data("kinetics_sounds", cache=str(tmp_path / "c"), raw=str(raw),
                        train_list=str(raw / "train.csv"), test_list=str(raw / "test.csv"),
                        frames=1, image_size=16, audio=AUDIO, progress=False,
                        val_fraction=0.0, test_fraction=0.0, split_seed=0)
    stems = sorted(s for s, _ in CLIPS)
    assert [stems[i] for i in bundle.test.index.tolist()] == ["a2", "b2", "c2"]
    assert [stems[i] for i in bundle.train.index.tolist()] == ["a1", "b1", "c1"]


def test_bad_and_silent_clips(raw, tmp_path):
    write_mp4(tmp_path / "mute.mp4", 1, audio=False)
    (tmp_path / "list.csv").write_text(f"{raw}/videos/a1.mp4,dog barking\n"
                                       "mute.mp4,dog barking\ngone.mp4,dog barking\n")
    opts = dict(list_file=str(tmp_path / "list.csv"), frames=1, image_size=16, audio=AUDIO,
                progress=False)
    with pytest.raises(MediaError, match=r"gone\.mp4: file not found"):
        prepare_kinetics_sounds(str(tmp_path), str(tmp_path / "c"), **opts)
    report = prepare_kinetics_sounds(str(tmp_path), str(tmp_path / "c"), on_error="skip",
                                     **opts)
    # a1 (first in name order) was cached before the raising run reached gone.mp4
    assert (report.clips, report.decoded, report.cached, report.skipped) == (3, 0, 1, 2)
    failed = (tmp_path / "c" / "failed.jsonl").read_text()
    assert "no audio stream" in failed and "gone.mp4" in failed
    data = load_kinetics_sounds(str(tmp_path / "c"), frames=1, image_size=16, audio=AUDIO,
                                on_error="skip")
    assert len(data.labels) == 1


def test_list_errors(raw, tmp_path):
    (tmp_path / "dup.csv").write_text("videos/a1.mp4,dog barking\nother/a1.mp4,dog barking\n")
    with pytest.raises(ValueError, match="clip 'a1'.*stems must be unique"):
        kinetics_sources(raw, str(tmp_path / "dup.csv"))
    with pytest.raises(ValueError, match=r"classes \['dog barking', 'playing drums'\]"):
        kinetics_sources(raw, str(raw / "all.csv"), classes=["bird chirping"])
    with pytest.raises(ValueError, match="give list_file"):
        prepare_kinetics_sounds(str(raw), str(tmp_path / "c"), progress=False)
    with pytest.raises(ValueError, match="kinetics_sounds classes"):
        load_kinetics_sounds(str(tmp_path / "c"), classes="dog barking")


def test_prepare_dataset_and_changed_settings(raw, cache, tmp_path):
    section = {"name": "kinetics_sounds", "cache": str(cache), "raw": str(raw),
               "list_file": str(raw / "all.csv"), "frames": 2, "image_size": 16,
               "audio": AUDIO, "progress": False, "split_seed": 0, "normalize": False}
    report = prep.prepare_dataset("kinetics_sounds", section)
    assert (report.decoded, report.cached) == (0, 6)
    with pytest.raises(ValueError, match=r"image_size \(cache 16, asked 24\).*new cache"):
        prep.prepare_dataset("kinetics_sounds", {**section, "image_size": 24})
