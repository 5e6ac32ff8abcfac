"""The training loop: hook order, determinism, resume, non-finite loss, run directories."""
from __future__ import annotations

import json

import pytest
import torch

from mmrelearn.config import config_from_dict
from mmrelearn.methods.base import Method
from mmrelearn.train import NonFiniteLossError, RunExistsError, build_trainer, train
from mmrelearn.train.checkpoint import read_jsonl


class Recorder(Method):
    """Records every hook call (name, epoch)."""

    def __init__(self):
        self.calls = []

    def _rec(self, name, ctx):
        self.calls.append((name, ctx.epoch))

    def on_fit_start(self, ctx):
        self._rec("on_fit_start", ctx)

    def on_train_epoch_start(self, ctx):
        self._rec("on_train_epoch_start", ctx)

    def forward(self, ctx, inputs):
        self._rec("forward", ctx)
        return super().forward(ctx, inputs)

    def loss_terms(self, ctx, output, labels):
        self._rec("loss_terms", ctx)
        return super().loss_terms(ctx, output, labels)

    def on_before_optimizer_step(self, ctx):
        # gradients exist here and the optimizer has not stepped yet
        assert all(p.grad is not None for p in ctx.model.head.parameters())
        self._rec("on_before_optimizer_step", ctx)

    def on_train_batch_end(self, ctx, terms):
        assert set(terms) == {"ce"}
        self._rec("on_train_batch_end", ctx)

    def on_train_epoch_end(self, ctx):
        self._rec("on_train_epoch_end", ctx)

    def on_fit_end(self, ctx):
        self._rec("on_fit_end", ctx)


def test_hook_order(tiny_raw, tmp_path):
    tiny_raw["train"].update(epochs=2, batch_size=60)  # 120 train samples -> 2 batches
    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path)
    rec = Recorder()
    trainer.method = rec
    trainer.fit()
    batch = ["forward", "loss_terms", "on_before_optimizer_step", "on_train_batch_end"]
    expected = [("on_fit_start", 0)]
    for e in range(2):
        expected += [("on_train_epoch_start", e)] + [(h, e) for h in batch * 2]
        expected += [("on_train_epoch_end", e)]
    expected += [("on_fit_end", 1)]
    assert rec.calls == expected


def test_same_seed_same_run(tiny_raw, tmp_path, strip_time):
    a = train(config_from_dict(tiny_raw), run_dir=tmp_path / "a")
    b = train(config_from_dict(tiny_raw), run_dir=tmp_path / "b")
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
    ra, rb = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in "ab")
    assert strip_time(ra) == strip_time(rb)
    wa = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=False)["model"]
    wb = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_other_seed_other_run(tiny_raw, tmp_path):
    a = train(config_from_dict(tiny_raw), run_dir=tmp_path / "a")
    tiny_raw["seed"] = 1
    b = train(config_from_dict(tiny_raw), run_dir=tmp_path / "b")
    ra, rb = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in "ab")
    assert ra[0]["train"] != rb[0]["train"]
    assert a["name"] == b["name"]


def test_resume_equals_uninterrupted(tiny_raw, resume_check, tmp_path):
    # Crash in the middle of epoch 3, after D&R acted at epoch 2: the run directory keeps the
    # checkpoint of epoch 2 and no summary; the resumed run ends as the uninterrupted one.
    tiny_raw["train"]["epochs"] = 6  # D&R acts at 2 and 4, neither the last epoch
    _, wf, _, wc = resume_check(tiny_raw, tmp_path, crash_epoch=3)
    assert wf["method"]["times_applied"] == wc["method"]["times_applied"] == 2


def test_resume_of_finished_run_changes_nothing(tiny_raw, tmp_path):
    tiny_raw["train"]["epochs"] = 2
    first = train(config_from_dict(tiny_raw), run_dir=tmp_path)
    before = (tmp_path / "metrics.jsonl").read_text()
    again = train(run_dir=tmp_path, resume=True)
    assert again == first and (tmp_path / "metrics.jsonl").read_text() == before


def test_existing_run_dir_is_refused(tiny_raw, tmp_path):
    tiny_raw["train"]["epochs"] = 1
    train(config_from_dict(tiny_raw), run_dir=tmp_path)
    with pytest.raises(RunExistsError, match="--resume"):
        train(config_from_dict(tiny_raw), run_dir=tmp_path)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_raw, tmp_path, monkeypatch):
    original = Method.loss_terms

    def poisoned(self, ctx, output, labels):
        terms = original(self, ctx, output, labels)
        if ctx.epoch == 1:
            terms["ce"] = terms["ce"] * float("nan")
        return terms

    monkeypatch.setattr(Method, "loss_terms", poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        train(config_from_dict(tiny_raw), run_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoints/last.pt", weights_only=False)
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_run_directory_contents(tiny_raw, tmp_path):
    tiny_raw["train"]["epochs"] = 6  # D&R acts at 2 and 4, neither the last epoch
    summary = train(config_from_dict(tiny_raw), run_dir=tmp_path)
    for name in ("config.yaml", "metrics.jsonl", "reports.jsonl", "summary.json", "curves.png",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tmp_path / name).is_file(), name
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in records] == list(range(6))
    # the best epoch is the one with the highest validation accuracy (first one on ties)
    accs = [r["val"]["acc"] for r in records]
    assert summary["best_epoch"] == accs.index(max(accs))
    assert summary["val"]["acc"] == pytest.approx(max(accs))
    # D&R acted at epochs 2 and 4 (H = 2), and the reports say so
    reports = read_jsonl(tmp_path / "reports.jsonl")
    assert [r["epoch"] for r in reports] == [2, 4]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
