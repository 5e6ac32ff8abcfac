"""MOSI/MOSEI from MultiBench-format pickles written here: splits, tasks, cleaning, errors."""
from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch

from mmrelearn.data import DATASETS, build_data
from mmrelearn.data.mosi import load_mosei, load_mosi, task_labels

DIMS = {"vision": 20, "audio": 5, "text": 300}  # MOSI's; T = 4 steps
SPLIT_ARGS = {"val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 0}


def _split(n: int, seed: int, labels=None, t: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    part = {m: rng.normal(size=(n, t, d)).astype(np.float32) + 0.5 for m, d in DIMS.items()}
    y = rng.uniform(-3, 3, size=n) if labels is None else np.asarray(labels, dtype=float)
    part["labels"] = y.reshape(n, 1)
    part["id"] = np.array([f"vid{seed}_{i}" for i in range(n)])
    return part


def _write(tmp_path, data, name: str = "mosi.pkl"):
    path = tmp_path / name
    with path.open("wb") as fh:
        pickle.dump(data, fh)
    return path


def _file(tmp_path, **edits):
    data = {"train": _split(6, 0), "valid": _split(3, 1), "test": _split(4, 2)}
    for split, part in edits.items():
        data[split] = part
    return _write(tmp_path, data)


def test_official_splits_are_train_val_test(tmp_path):
    path = _file(tmp_path)
    bundle = build_data("mosi", path=str(path), **SPLIT_ARGS)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (6, 3, 4)
    with path.open("rb") as fh:
        data = pickle.load(fh)
    for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test")):
        x = getattr(bundle, ours).inputs["text"]
        assert torch.equal(x, torch.from_numpy(data[theirs]["text"])), ours
    assert bundle.input_shapes == {"vision": (4, 20), "audio": (4, 5), "text": (4, 300)}
    assert bundle.class_names == ["negative (<0)", "positive (>=0)"]
    assert "mosi" in DATASETS and "mosei" in DATASETS


def test_label_mapping_for_each_task(tmp_path):
    s = [-3.0, -1.4, -0.5, 0.0, 0.5, 1.5, 2.5, 3.2]
    path = _file(tmp_path, train=_split(8, 0, labels=s))
    raw = load_mosi(str(path), task="binary")
    assert raw.labels[raw.splits["train"]].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert raw.num_classes == 2
    raw = load_mosi(str(path), task="binary_nonzero")  # the 0.0 sample is gone
    assert raw.labels[raw.splits["train"]].tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert raw.class_names == ["negative (<0)", "positive (>0)"]
    raw = load_mosi(str(path), task="seven")
    # round(clip(s, -3, 3)) + 3, halves to even: -0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.2 -> 3
    assert raw.labels[raw.splits["train"]].tolist() == [0, 2, 3, 3, 3, 5, 5, 6]
    assert raw.num_classes == 7 and raw.class_names[0] == "-3" and raw.class_names[6] == "3"
    classes, keep = task_labels(np.array([0.0, -0.1]), "binary_nonzero")
    assert keep.tolist() == [False, True] and classes.tolist() == [0, 0]


def test_non_finite_values_become_zero_and_are_counted(tmp_path, caplog):
    train = _split(6, 0)
    train["audio"][0, 1, :] = -np.inf
    train["audio"][2, 3, 0] = np.nan
    train["vision"][1, 0, 0] = np.inf
    path = _file(tmp_path, train=train)
    with caplog.at_level(logging.INFO, logger="mmrelearn.data.mosi"):
        raw = load_mosi(str(path))
    assert torch.isfinite(raw.inputs["audio"]).all() and torch.isfinite(raw.inputs["vision"]).all()
    assert raw.inputs["audio"][0, 1].eq(0).all() and raw.inputs["audio"][2, 3, 0] == 0
    assert raw.inputs["vision"][1, 0, 0] == 0
    assert "6 non-finite value(s) in audio replaced by 0" in caplog.text
    assert "1 non-finite value(s) in vision replaced by 0" in caplog.text


def test_all_zero_text_dropped_and_counted(tmp_path, caplog):
    valid = _split(3, 1)
    valid["text"][1] = 0
    path = _file(tmp_path, valid=valid)
    with caplog.at_level(logging.INFO, logger="mmrelearn.data.mosi"):
        raw = load_mosi(str(path))
    assert len(raw.splits["val"]) == 2 and len(raw.labels) == 12
    val_audio = raw.inputs["audio"][raw.splits["val"]]
    assert torch.equal(val_audio, torch.from_numpy(valid["audio"][[0, 2]]))
    assert "split valid: 1 sample(s) with all-zero text dropped" in caplog.text


def test_front_padded_text_moves_every_modality_to_the_front(tmp_path):
    train = _split(6, 0)
    train["text"][0, :2] = 0  # MultiBench's word vectors are zero-padded at the front
    vision = train["vision"][0].copy()
    path = _file(tmp_path, train=train)
    raw = load_mosi(str(path))
    x = raw.inputs["vision"][0]  # steps 2, 3 -> 0, 1; zeros at the end are padding
    assert torch.equal(x[:2], torch.from_numpy(vision[2:])) and x[2:].eq(0).all()
    assert raw.inputs["text"][0, 2:].eq(0).all() and raw.inputs["text"][0, :2].ne(0).all()
    assert torch.equal(raw.inputs["vision"][1], torch.from_numpy(train["vision"][1]))


def test_modality_subsets_keep_their_order(tmp_path):
    path = _file(tmp_path)
    raw = load_mosi(str(path), modalities=["text", "audio"])
    assert list(raw.inputs) == ["text", "audio"]
    assert list(load_mosei(str(path), modalities=["vision"]).inputs) == ["vision"]
    for bad in ([], ["text", "text"], ["speech"]):
        with pytest.raises(ValueError, match="non-empty subset of"):
            load_mosi(str(path), modalities=bad)


def test_other_sizes_and_label_layouts_accepted(tmp_path):
    parts = {s: _split(n, k) for k, (s, n) in enumerate((("train", 4), ("valid", 2),
                                                          ("test", 2)))}
    for part in parts.values():
        part["audio"] = np.zeros((len(part["labels"]), 4, 74), np.float64) + 1  # MOSEI's 74
        part["labels"] = part["labels"].reshape(-1, 1, 1)
    raw = load_mosei(str(_write(tmp_path, parts)))
    assert raw.inputs["audio"].shape == (8, 4, 74) and raw.inputs["audio"].dtype == torch.float32


def _broken(kind):
    train = _split(6, 0)
    if kind == "key":
        del train["audio"]
    elif kind == "ndim":
        train["audio"] = train["audio"][:, 0]
    elif kind == "n":
        train["text"] = train["text"][:5]
    elif kind == "t":
        train["text"] = train["text"][:, :3]
    elif kind == "dtype":
        train["vision"] = np.full((6, 4, 20), "x", dtype=object)
    elif kind == "labels":
        train["labels"] = np.zeros((6, 2))
    elif kind == "nan_labels":
        train["labels"][0] = np.nan
    return train


@pytest.mark.parametrize("kind, match", [
    ("key", r"split 'train': missing key\(s\) \['audio'\]"),
    ("ndim", r"split 'train', key 'audio': expected shape \(N, T, d\), got \(6, 5\)"),
    ("n", r"split 'train', key 'text': shape \(5, 4, 300\) does not match vision's"),
    ("t", r"split 'train', key 'text': shape \(6, 3, 300\) does not match"),
    ("dtype", r"split 'train', key 'vision': expected a numeric array, got dtype object"),
    ("labels", r"split 'train', key 'labels': expected shape \(6, 1\)"),
    ("nan_labels", r"key 'labels': non-finite labels"),
])
def test_bad_files_name_file_split_and_key(tmp_path, kind, match):
    path = _file(tmp_path, train=_broken(kind))
    with pytest.raises(ValueError, match=match) as err:
        load_mosi(str(path))
    assert str(path) in str(err.value)


def test_bad_layouts_and_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pkl"):
        load_mosi(str(tmp_path / "nowhere.pkl"))
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="junk.pkl: not a readable pickle"):
        load_mosi(str(junk))
    no_valid = _write(tmp_path, {"train": _split(6, 0), "test": _split(4, 2)}, "nv.pkl")
    with pytest.raises(ValueError, match=r"missing split\(s\) \['valid'\]"):
        load_mosi(str(no_valid))
    test = _split(4, 2)
    test["audio"] = np.ones((4, 4, 6), np.float32)
    with pytest.raises(ValueError, match=r"split 'test', key 'audio': \(T, d\) = \(4, 6\) differs"):
        load_mosi(str(_file(tmp_path, test=test)))
    with pytest.raises(ValueError, match="task must be one of"):
        load_mosi(str(_file(tmp_path)), task="regression")
    zeros = _file(tmp_path, valid=_split(2, 1, labels=[0.0, 0.0]))
    with pytest.raises(ValueError, match="split 'valid': no sample left of 2"):
        load_mosi(str(zeros), task="binary_nonzero")
