"""CSV and TensorBoard loggers: the same scalars as metrics.jsonl, one row/step per epoch, and
no duplicates after a resume."""
from __future__ import annotations

import importlib.util
import math

import pytest

from mmrelearn.config import ConfigError, config_from_dict
from mmrelearn.train import train
from mmrelearn.train.checkpoint import read_jsonl
from mmrelearn.train.loggers import flatten, read_csv


def test_flatten_names_every_scalar():
    record = {"epoch": 3, "lr": 0.1, "train": {"ce": 0.5, "total": 0.5},
              "purity": {"audio": {"train": 0.9, "val": 0.6, "gap": 0.3, "test": 0.55}},
              "report": {"dnr": {"epoch": 3, "applied": True, "n_train": 10,
                                 "modalities": {"audio": {"gap": 0.3, "alpha": 0.7}}},
                         "greedy": {"m_main": {"a": 2}, "note": "text", "none": None,
                                    "hist": [1, 2]}}}
    assert flatten(record) == {
        "lr": 0.1, "train/ce": 0.5, "train/total": 0.5,
        "purity/audio/train": 0.9, "purity/audio/val": 0.6, "purity/audio/gap": 0.3,
        "purity/audio/test": 0.55,
        "dnr/applied": 1.0, "dnr/n_train": 10.0, "dnr/audio/gap": 0.3, "dnr/audio/alpha": 0.7,
        "greedy/m_main/a": 2.0, "greedy/hist/0": 1.0, "greedy/hist/1": 2.0}


def _strip_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time_s/")} for r in rows]


def _full_and_resumed(raw, tmp_path, crash, crash_epoch=3):
    """An uninterrupted run, and one that crashes right after logging epoch ``crash_epoch``
    (before its checkpoint) and is resumed: the worst moment for duplicate rows."""
    train(config_from_dict(raw), run_dir=tmp_path / "full")
    crash(raw, tmp_path / "cut", crash_epoch, hook="_save_last")
    cut_rows = read_csv(tmp_path / "cut/metrics.csv")
    assert [r["epoch"] for r in cut_rows] == list(range(crash_epoch + 1))  # logged, no ckpt
    train(run_dir=tmp_path / "cut", resume=True)
    return tmp_path / "full", tmp_path / "cut"


def test_csv_holds_metrics_jsonl_and_survives_resume(tiny_raw, tmp_path, crash_run):
    tiny_raw["train"]["loggers"] = ["jsonl", "csv"]
    full, cut = _full_and_resumed(tiny_raw, tmp_path, crash_run)
    records = read_jsonl(full / "metrics.jsonl")
    rows = read_csv(full / "metrics.csv")
    assert len(rows) == len(records) == tiny_raw["train"]["epochs"]
    header = (full / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "epoch" and "dnr/m0/alpha" in header and "purity/m1/gap" in header
    for row, record in zip(rows, records):
        # every cell is the jsonl value, exactly; names absent that epoch are empty
        assert {k: v for k, v in row.items() if v is not None} == \
            {"epoch": float(record["epoch"]), **flatten(record)}
    assert rows[2]["dnr/m0/alpha"] is not None and rows[1]["dnr/m0/alpha"] is None
    assert all(math.isfinite(v) for r in rows for v in r.values() if v is not None)
    assert _strip_time(read_csv(cut / "metrics.csv")) == _strip_time(rows)


def test_tensorboard_logs_the_same_scalars_once_per_epoch(tiny_raw, tmp_path, crash_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_raw["train"]["loggers"] = ["csv", "tensorboard"]
    full, cut = _full_and_resumed(tiny_raw, tmp_path, crash_run)
    rows = read_csv(full / "metrics.csv")
    scalars = {}
    for run in (full, cut):  # the resumed run has two event files; the second purges epoch 3
        acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
        acc.Reload()
        scalars[run] = {t: [(e.step, e.value) for e in acc.Scalars(t)]
                        for t in acc.Tags()["scalars"]}
    assert set(scalars[full]) == {k for r in rows for k, v in r.items() if v is not None} - {
        "epoch"}
    for tag, events in scalars[full].items():
        expected = [(int(r["epoch"]), r[tag]) for r in rows if r[tag] is not None]
        assert [s for s, _ in events] == [s for s, _ in expected], tag
        assert all(math.isclose(v, w, rel_tol=1e-6, abs_tol=1e-7)  # stored as float32
                   for (_, v), (_, w) in zip(events, expected)), tag
    for tag, events in scalars[cut].items():
        if not tag.startswith("time_s/"):
            assert events == scalars[full][tag], tag


def test_loggers_are_checked_by_the_config(tiny_raw, monkeypatch):
    tiny_raw["train"]["loggers"] = ["jsonl", "wandb"]
    with pytest.raises(ConfigError, match=r"train\.loggers\[1\]: expected one of"):
        config_from_dict(tiny_raw)
    tiny_raw["train"]["loggers"] = "csv"
    with pytest.raises(ConfigError, match=r"train\.loggers: expected a list"):
        config_from_dict(tiny_raw)


def test_tensorboard_missing_is_an_error_before_any_file(tiny_raw, tmp_path, monkeypatch,
                                                          capsys):
    import yaml

    from mmrelearn.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    tiny_raw["train"]["loggers"] = ["tensorboard"]
    with pytest.raises(ConfigError, match=r"train\.loggers: 'tensorboard' needs the "
                                          r"tensorboard package"):
        config_from_dict(tiny_raw)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw))
    run_dir = tmp_path / "run"
    assert main(["train", "-c", str(cfg), "--run-dir", str(run_dir)]) == 2
    assert "train.loggers" in capsys.readouterr().err
    assert not run_dir.exists()
