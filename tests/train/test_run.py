"""Run assembly: the evaluation loaders never draw from the global torch RNG."""
from __future__ import annotations

import copy

import torch

from mmrelearn.config import config_from_dict
from mmrelearn.train import build_trainer, train
from mmrelearn.train.checkpoint import read_jsonl


def test_iterating_evaluation_loaders_leaves_the_global_rng_alone(tiny_raw, tmp_path):
    tiny_raw["method"] = {"name": "gblending"}  # also builds a holdout loader
    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path)
    assert set(trainer.loaders) == {"train", "diag_train", "val", "test", "holdout"}
    rng = torch.get_rng_state()
    for name in ("diag_train", "val", "test", "holdout"):
        for _ in range(2):
            next(iter(trainer.loaders[name]))
    assert torch.equal(torch.get_rng_state(), rng)


def test_logging_test_every_epoch_does_not_change_training(tiny_raw, tmp_path):
    # the tiny model has dropout in m1's encoder: any extra global draw would move its masks
    runs = {}
    for log_test in (True, False):
        raw = copy.deepcopy(tiny_raw)
        raw["train"]["log_test_every_epoch"] = log_test
        run_dir = tmp_path / str(log_test)
        summary = train(config_from_dict(raw), run_dir=run_dir)
        records = [{k: v for k, v in r.items() if k not in ("time_s", "test")}
                   for r in read_jsonl(run_dir / "metrics.jsonl")]
        state = torch.load(run_dir / "checkpoints/last.pt", weights_only=False)["model"]
        runs[log_test] = summary, records, state
    (s1, r1, w1), (s0, r0, w0) = runs[True], runs[False]
    assert r1 == r0  # train losses, val metrics, purities, D&R reports
    assert (s1["best_epoch"], s1["val"], s1["test"]) == (s0["best_epoch"], s0["val"], s0["test"])
    assert w1.keys() == w0.keys() and all(torch.equal(w1[k], w0[k]) for k in w1)
