"""Shared fixtures: a tiny synthetic configuration that trains in about a second."""
from __future__ import annotations

import copy

import pytest

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "synthetic", "num_samples": 240, "num_classes": 3, "dims": [6, 6],
             "separations": [3.0, 1.0], "val_fraction": 0.25, "test_fraction": 0.25,
             "split_seed": 0},
    "model": {"encoders": {"m0": {"type": "mlp", "hidden": [16]},
                           "m1": {"type": "mlp", "hidden": [16], "dropout": 0.1}}},
    "method": {"name": "dnr", "lam": 3.0, "every": 2},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "train": {"epochs": 5, "batch_size": 32, "progress": False, "monitor_purity": True},
}


@pytest.fixture
def tiny_raw():
    """A fresh copy of the tiny raw config mapping (tests may edit it)."""
    return copy.deepcopy(TINY)


def _strip_time(records):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


@pytest.fixture
def resume_check(monkeypatch):
    """Run ``raw`` uninterrupted and crashed in epoch ``crash_epoch`` then resumed; assert both
    end with identical summaries, metrics.jsonl (times aside) and final weights.

    Returns ``(full_records, full_last_ckpt, cut_last_ckpt_at_crash, resumed_last_ckpt)`` for
    method-specific checks.
    """
    import torch

    from mmrelearn.config import config_from_dict
    from mmrelearn.train import loop as loop_mod
    from mmrelearn.train import train
    from mmrelearn.train.checkpoint import read_jsonl

    def check(raw, tmp_path, crash_epoch):
        full = train(config_from_dict(raw), run_dir=tmp_path / "full")
        original = loop_mod.Trainer._train_epoch

        def crashing(self, epoch):
            if epoch == crash_epoch:
                raise KeyboardInterrupt("simulated crash")
            return original(self, epoch)

        monkeypatch.setattr(loop_mod.Trainer, "_train_epoch", crashing)
        with pytest.raises(KeyboardInterrupt):
            train(config_from_dict(raw), run_dir=tmp_path / "cut")
        monkeypatch.setattr(loop_mod.Trainer, "_train_epoch", original)
        at_crash = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=False)
        assert at_crash["epoch"] == crash_epoch - 1
        assert not (tmp_path / "cut/summary.json").exists()
        resumed = train(run_dir=tmp_path / "cut", resume=True)
        for key in ("best_epoch", "val", "test", "test_last_epoch"):
            assert resumed[key] == full[key], key
        rf, rc = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("full", "cut"))
        assert _strip_time(rf) == _strip_time(rc)
        assert read_jsonl(tmp_path / "full/reports.jsonl") == read_jsonl(
            tmp_path / "cut/reports.jsonl")
        wf, wc = (torch.load(tmp_path / d / "checkpoints/last.pt", weights_only=False)
                  for d in ("full", "cut"))
        assert wf["model"].keys() == wc["model"].keys()
        assert all(torch.equal(wf["model"][k], wc["model"][k]) for k in wf["model"])
        return rf, wf, at_crash, wc

    return check


@pytest.fixture
def cli_train():
    """``cli_train(raw, run_dir)``: write ``raw`` as YAML, run ``mmrelearn train`` on it into
    ``run_dir`` through the CLI entry point, and check it finished."""
    import yaml

    from mmrelearn.cli import main

    def run(raw, run_dir):
        cfg = run_dir.parent / f"{run_dir.name}.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        assert main(["train", "-c", str(cfg), "--run-dir", str(run_dir)]) == 0
        assert (run_dir / "summary.json").is_file()
        return run_dir

    return run
