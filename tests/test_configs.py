"""Every shipped config loads, and each trains for an epoch on CPU (encoders kept narrow)."""
from __future__ import annotations

from pathlib import Path

import pytest

from mmrelearn.config import load_config
from mmrelearn.train import train

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist():
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_trains_one_epoch(path, tmp_path):
    cfg = load_config(path, ["train.epochs=1", "train.progress=false"])
    summary = train(cfg, run_dir=tmp_path / "run")
    assert 0.0 <= summary["test"]["acc"] <= 1.0
    assert (tmp_path / "run/summary.json").is_file()
