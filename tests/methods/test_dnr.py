"""D&R as a trainer plugin: what it touches, when, and on which data."""
from __future__ import annotations

import copy

import torch

from mmrelearn.config import config_from_dict
from mmrelearn.train import build_trainer
from mmrelearn.train.checkpoint import read_jsonl


def _trainer(raw, run_dir):
    return build_trainer(config_from_dict(raw), run_dir)


def test_reinit_touches_encoders_only_by_exact_alpha(tiny_raw, tmp_path, reinit_run):
    tiny_raw["train"]["epochs"] = 4
    tiny_raw["seed"] = 1  # a seed whose diagnosis finds a nonzero gap in both modalities
    _, _, seen = reinit_run(tiny_raw, tmp_path)  # checks the Eq. 6 update of every tensor
    reports = {e: r for e, (_, _, r) in seen.items() if r is not None}
    assert list(reports) == [2]
    rep = reports[2]["dnr"]
    assert rep["epoch"] == 2 and rep["applied"]
    assert all(0 < rep["modalities"][m]["alpha"] <= 1 for m in ("m0", "m1"))


def test_diagnosis_uses_train_and_val_only(tiny_raw, tmp_path):
    tiny_raw["data"]["test_fraction"] = 0.3  # val and test of different sizes
    trainer = _trainer(tiny_raw, tmp_path)
    trainer.fit()
    reports = read_jsonl(tmp_path / "reports.jsonl")
    n_train, n_val = len(trainer.loaders["diag_train"].dataset), len(trainer.loaders["val"].dataset)
    n_test = len(trainer.loaders["test"].dataset)
    assert (n_train, n_val, n_test) == (108, 60, 72)
    for r in reports:
        assert (r["dnr"]["n_train"], r["dnr"]["n_val"]) == (n_train, n_val)
    assert not hasattr(trainer.ctx, "test_loader")


def test_joint_and_dnr_agree_until_the_first_reinit(tiny_raw, tmp_path):
    runs = {}
    for name in ("joint", "dnr"):
        raw = copy.deepcopy(tiny_raw)
        if name == "joint":
            raw["method"] = {"name": "joint"}
        trainer = _trainer(raw, tmp_path / name)
        trainer.fit()
        runs[name] = [{k: v for k, v in r.items() if k not in ("time_s", "report")}
                      for r in read_jsonl(tmp_path / name / "metrics.jsonl")]
    # identical through epoch 2 (D&R acts at the END of epoch 2), different afterwards
    assert runs["joint"][:3] == runs["dnr"][:3]
    assert runs["joint"][3]["train"] != runs["dnr"][3]["train"]


def test_max_times_caps_reinit(tiny_raw, tmp_path):
    tiny_raw["method"].update(every=1, max_times=2)
    _trainer(tiny_raw, tmp_path).fit()
    assert [r["epoch"] for r in read_jsonl(tmp_path / "reports.jsonl")] == [1, 2]


def test_default_cap_is_three_reinits(tiny_raw, tmp_path):
    tiny_raw["method"]["every"] = 1  # max_times left at its default
    tiny_raw["train"].update(epochs=6, monitor_purity=False)  # uncapped: epochs 1, 2, 3, 4
    trainer = _trainer(tiny_raw, tmp_path)
    trainer.fit()
    assert [r["epoch"] for r in read_jsonl(tmp_path / "reports.jsonl")] == [1, 2, 3]
    assert trainer.method.dr.times_applied == 3


def test_three_modalities_with_sum_fusion(tiny_raw, tmp_path):
    tiny_raw["data"].update(dims=[6, 6, 6], separations=[3.0, 1.0, 0.3])
    tiny_raw["model"] = {"fusion": "sum", "fusion_dim": 8,
                         "encoders": {m: {"type": "mlp", "hidden": [16]} for m in ("m0", "m1", "m2")}}
    tiny_raw["train"]["epochs"] = 4
    trainer = _trainer(tiny_raw, tmp_path)
    fusion_before = copy.deepcopy(trainer.model.fusion.state_dict())
    trainer.fit()
    (report,) = read_jsonl(tmp_path / "reports.jsonl")
    assert report["epoch"] == 2 and set(report["dnr"]["modalities"]) == {"m0", "m1", "m2"}
    assert all(0.0 <= d["alpha"] <= 1.0 for d in report["dnr"]["modalities"].values())
    # the summation fusion trains normally (D&R leaving it alone is checked in the test above)
    assert any(not torch.equal(fusion_before[k], v)
               for k, v in trainer.model.fusion.state_dict().items())


def test_no_reinit_after_the_last_epoch(tiny_raw, tmp_path):
    tiny_raw["train"]["epochs"] = 3  # H = 2 would act at epoch 2, the last one
    trainer = _trainer(tiny_raw, tmp_path)
    trainer.fit()
    assert not (tmp_path / "reports.jsonl").exists() or not read_jsonl(tmp_path / "reports.jsonl")
    assert trainer.method.dr.times_applied == 0
