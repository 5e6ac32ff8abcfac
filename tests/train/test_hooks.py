"""The hook extensions: training_step, an empty step, predict, sample indices, per-epoch loaders
and prerequisite runs, each shown by what it changes."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Subset

from mmrelearn.cli import main
from mmrelearn.config import config_from_dict
from mmrelearn.methods import METHODS
from mmrelearn.methods.base import Method, feature_dims, require_equal_dims
from mmrelearn.train import build_trainer, train
from mmrelearn.train.checkpoint import load_checkpoint, read_jsonl


def _params(module):
    """Parameters only (BatchNorm statistics move with every training forward)."""
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _moved(before, module):
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v)}


class Recorder(Method):
    """Records the new hooks' calls (name, epoch) around the default training step."""

    def __init__(self):
        self.calls = []

    def on_train_epoch_start(self, ctx):
        self.calls.append(("on_train_epoch_start", ctx.epoch))

    def train_loader(self, ctx):
        self.calls.append(("train_loader", ctx.epoch))
        return None

    def training_step(self, ctx, inputs, labels):
        self.calls.append(("training_step", ctx.epoch))
        return super().training_step(ctx, inputs, labels)

    def on_before_optimizer_step(self, ctx):
        self.calls.append(("on_before_optimizer_step", ctx.epoch))

    def predict(self, model, inputs):
        self.calls.append(("predict", None))
        return super().predict(model, inputs)


def test_hook_order_with_the_new_hooks(tiny_raw, tmp_path):
    tiny_raw["train"].update(epochs=2, batch_size=60, monitor_purity=False)  # 2 batches
    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path)
    trainer.method = rec = Recorder()
    trainer.fit()
    per_epoch = lambda e: ([("on_train_epoch_start", e), ("train_loader", e)]  # noqa: E731
                           + [("training_step", e), ("on_before_optimizer_step", e)] * 2)
    steps = [c for c in rec.calls if c[0] != "predict"]
    assert steps == per_epoch(0) + per_epoch(1)
    # predict scores every evaluation: val each epoch, then train/val/test + last-epoch test
    assert sum(c[0] == "predict" for c in rec.calls) > 0
    assert trainer.ctx.step == 4


class TwoSteps(Method):
    """Two optimizer steps per batch, each on one modality's branch only (as MLA does)."""

    def training_step(self, ctx, inputs, labels):
        terms = {}
        for m in ctx.model.encoders:
            z = ctx.model.encoders[m](inputs[m])
            logits = ctx.model.unimodal_heads[m](z)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            ctx.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ctx.optimizer.step()
            terms[f"ce_{m}"] = loss
        return terms

    def model_overrides(self):
        return {"unimodal_heads": True}


def test_a_training_step_override_owns_the_steps(tiny_raw, tmp_path):
    tiny_raw["train"].update(epochs=1, monitor_purity=False)
    tiny_raw["optim"] = {"name": "sgd", "lr": 0.05, "momentum": 0.0}
    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path)
    trainer.method = TwoSteps()
    model = trainer.model
    model.unimodal_heads = torch.nn.ModuleDict(
        {m: torch.nn.Linear(16, 3) for m in model.encoders})
    trainer.optimizer.add_param_group({"params": list(model.unimodal_heads.parameters())})
    before = _params(model)
    trainer.fit()
    moved = _moved(before, model)
    # the fused head took no step: the trainer did not step on its own
    assert not any(k.startswith("head.") for k in moved)
    assert any(k.startswith("encoders.m0.") for k in moved)
    assert any(k.startswith("encoders.m1.") for k in moved)
    record = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert set(record["train"]) == {"ce_m0", "ce_m1", "total"}


class NoStep(Method):
    """Every batch: no loss terms, hence no backward and no step."""

    def loss_terms(self, ctx, output, labels):
        return {}


def test_an_empty_loss_dict_takes_no_step(tiny_raw, tmp_path):
    tiny_raw["train"].update(epochs=2, monitor_purity=False)
    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path)
    trainer.method = NoStep()
    before = _params(trainer.model)
    trainer.fit()
    assert not _moved(before, trainer.model) and trainer.ctx.step == 0
    assert not trainer.optimizer.state  # SGD momentum buffers never created
    assert read_jsonl(tmp_path / "metrics.jsonl")[0]["train"] == {"total": 0}


class AlwaysClassZero(Method):
    """Predicts class 0 for every sample, whatever the model says; counts its calls."""

    def __init__(self):
        self.calls = 0

    def predict(self, model, inputs):
        self.calls += 1
        n = next(iter(inputs.values())).shape[0]
        return torch.tensor([[1.0, 0.0, 0.0]]).repeat(n, 1)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def test_predict_is_what_evaluation_scores(tiny_raw, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(METHODS, "class_zero", AlwaysClassZero)
    tiny_raw["method"] = {"name": "class_zero"}
    tiny_raw["train"].update(epochs=2, monitor_purity=False)
    run = tmp_path / "run"
    summary = train(config_from_dict(tiny_raw), run_dir=run)
    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path / "x")
    y_val = torch.cat([y for _, y in trainer.loaders["val"]])
    share = float((y_val == 0).float().mean())
    assert summary["val"]["acc"] == pytest.approx(share)
    for record in read_jsonl(run / "metrics.jsonl"):
        assert record["val"]["acc"] == pytest.approx(share)
    # the best checkpoint keeps the state of a method that predicts on its own
    assert "method" in load_checkpoint(run / "checkpoints/best.pt")
    assert main(["eval", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["val"]["acc"] == pytest.approx(share)


def test_the_default_predict_keeps_best_checkpoints_as_they_were(tiny_raw, tmp_path):
    tiny_raw["train"].update(epochs=1, monitor_purity=False)
    train(config_from_dict(tiny_raw), run_dir=tmp_path)
    assert set(load_checkpoint(tmp_path / "checkpoints/best.pt")) == {"epoch", "model"}


class SeesIndices(Method):
    wants_sample_index = True

    def __init__(self):
        self.seen = []

    def training_step(self, ctx, inputs, labels):
        self.seen.append((ctx.epoch, ctx.batch_index.clone(), labels.clone()))
        return super().training_step(ctx, inputs, labels)


def test_batches_carry_the_sample_index(tiny_raw, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "sees_indices", SeesIndices)
    tiny_raw["method"] = {"name": "sees_indices"}
    tiny_raw["train"].update(epochs=2, monitor_purity=False)
    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path)
    trainer.fit()
    train_set = trainer.loaders["train"].dataset.dataset  # inside WithIndex
    for epoch in (0, 1):
        seen = [(i, y) for e, i, y in trainer.method.seen if e == epoch]
        idx = torch.cat([i for i, _ in seen])
        assert sorted(idx.tolist()) == list(range(len(train_set)))  # each sample once
        labels = torch.cat([y for _, y in seen])
        assert torch.equal(labels, torch.tensor([int(train_set[i][1]) for i in idx]))
    assert trainer.ctx.batch_index is None  # cleared after the epoch


def test_the_runner_gives_indices_to_a_method_that_wants_them(tiny_raw, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "sees_indices", SeesIndices)
    tiny_raw["method"] = {"name": "sees_indices"}
    tiny_raw["train"].update(epochs=1, monitor_purity=False)
    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path)
    inputs, y, idx = next(iter(trainer.loaders["train"]))
    assert idx.dtype == torch.int64 and len(idx) == len(y)
    assert len(next(iter(trainer.loaders["val"]))) == 2  # evaluation loaders unchanged


class HalfTheData(Method):
    """From epoch 1 on, trains on the first half of the training split only."""

    def __init__(self):
        self.batches = {}

    def train_loader(self, ctx):
        if ctx.epoch == 0:
            return None
        full = ctx.train_loader.dataset
        return DataLoader(Subset(full, range(len(full) // 2)), batch_size=32)

    def training_step(self, ctx, inputs, labels):
        self.batches[ctx.epoch] = self.batches.get(ctx.epoch, 0) + 1
        return super().training_step(ctx, inputs, labels)


def test_a_per_epoch_training_loader(tiny_raw, tmp_path):
    tiny_raw["train"].update(epochs=2, monitor_purity=False)  # 120 train samples, batch 32
    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path)
    trainer.method = method = HalfTheData()
    trainer.fit()
    assert method.batches == {0: 4, 1: 2}
    # passes count the samples stepped on: 120 of 120, then 60 of 120
    assert [r["passes"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1.0, 0.5]


class SharedHead(Method):
    """Trains one head of its own on every modality's features (as MLA does)."""

    name = "shared_head"

    def extra_modules(self, model, num_classes):
        d = require_equal_dims(feature_dims(model), self.name, "one head shared by every modality")
        return {"shared": torch.nn.Linear(d, num_classes)}

    def loss_terms(self, ctx, output, labels):
        head = ctx.model.method_modules["shared"]
        return {f"ce_{m}": torch.nn.functional.cross_entropy(head(z), labels)
                for m, z in output.features.items()}


def test_extra_modules_are_trained_saved_and_refused_when_unsuitable(tiny_raw, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setitem(METHODS, "shared_head", SharedHead)
    tiny_raw["method"] = {"name": "shared_head"}
    tiny_raw["train"].update(epochs=1, monitor_purity=False)
    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path / "a")
    head = trainer.model.method_modules["shared"]
    assert any(p is head.weight for p in trainer.optimizer.param_groups[0]["params"])
    before = head.weight.detach().clone()
    train(config_from_dict(tiny_raw), run_dir=tmp_path / "a")
    best = load_checkpoint(tmp_path / "a/checkpoints/best.pt")
    assert not torch.equal(best["model"]["method_modules.shared.weight"], before)
    tiny_raw["model"]["encoders"]["m1"]["hidden"] = [8]  # features of 16 and 8
    with pytest.raises(ValueError, match=r"shared_head needs one head shared by every "
                                         r"modality.*\{'m0': 16, 'm1': 8\}"):
        train(config_from_dict(tiny_raw), run_dir=tmp_path / "b")
    assert not (tmp_path / "b").exists()


class NeedsAlone(Method):
    """Needs joint training on m0 alone first; reads the run it was handed."""

    def __init__(self):
        self.seen = None

    def prerequisites(self):
        return {"alone_m0": {"data": {"modalities": ["m0"]}, "method": {"name": "joint"},
                             "train": {"epochs": 1}}}

    def on_fit_start(self, ctx):
        d = ctx.extras["prerequisites"]["alone_m0"]
        self.seen = json.loads((d / "summary.json").read_text())


def test_prerequisite_runs_are_trained_first_then_reused(tiny_raw, tmp_path, monkeypatch,
                                                         strip_time):
    monkeypatch.setitem(METHODS, "needs_alone", NeedsAlone)
    tiny_raw["method"] = {"name": "needs_alone"}
    tiny_raw["train"].update(epochs=2, monitor_purity=False)
    a = train(config_from_dict(tiny_raw), run_dir=tmp_path / "a")
    pre = tmp_path / "a" / "prerequisites" / "alone_m0"
    assert a["prerequisites"] == {"alone_m0": "prerequisites/alone_m0"}
    stored = config_from_dict(yaml.safe_load((pre / "config.yaml").read_text()))
    assert stored.data["modalities"] == ["m0"] and stored.method == {"name": "joint"}
    assert stored.train.epochs == 1 and stored.name == "tiny-alone_m0"
    # the same parent run with the prerequisite already there: reused, same numbers
    b_dir = tmp_path / "b"
    (b_dir / "prerequisites").mkdir(parents=True)
    shutil.copytree(pre, b_dir / "prerequisites" / "alone_m0")
    mtime = (b_dir / "prerequisites/alone_m0/summary.json").stat().st_mtime_ns
    b = train(config_from_dict(tiny_raw), run_dir=b_dir)
    assert (b_dir / "prerequisites/alone_m0/summary.json").stat().st_mtime_ns == mtime
    assert b["test"] == a["test"]
    assert strip_time(read_jsonl(b_dir / "metrics.jsonl")) == strip_time(
        read_jsonl(tmp_path / "a" / "metrics.jsonl"))
    # its cost counts the prerequisite's epoch: 2 passes of its own + 1
    assert a["passes"] == {"run": 2.0, "prerequisites": 1.0, "total": 3.0}


def test_a_bad_prerequisite_config_fails_before_anything_is_written(tiny_raw, tmp_path,
                                                                    monkeypatch):
    class BadNeed(Method):
        def prerequisites(self):
            return {"alone": {"data": {"modalities": ["m9"]}, "method": {"name": "joint"}}}

    monkeypatch.setitem(METHODS, "bad_need", BadNeed)
    tiny_raw["method"] = {"name": "bad_need"}
    with pytest.raises(Exception, match="prerequisite run 'alone'"):
        train(config_from_dict(tiny_raw), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_resume_between_stages_equals_uninterrupted(tiny_raw, tmp_path, monkeypatch,
                                                    strip_time, crash_run):
    monkeypatch.setitem(METHODS, "needs_alone", NeedsAlone)
    tiny_raw["method"] = {"name": "needs_alone"}
    tiny_raw["train"].update(epochs=2, monitor_purity=False)
    tiny_raw["model"]["encoders"]["m0"]["dropout"] = 0.2  # the global RNG matters
    full = train(config_from_dict(tiny_raw), run_dir=tmp_path / "full")
    # killed while training the prerequisite, before the parent's first epoch
    crash_run(tiny_raw, tmp_path / "cut", None,
              when=lambda trainer: "prerequisites" in str(trainer.run_dir))
    assert (tmp_path / "cut/config.yaml").is_file()  # the parent exists: --resume finds it
    assert not (tmp_path / "cut/prerequisites/alone_m0/summary.json").exists()
    resumed = train(run_dir=tmp_path / "cut", resume=True)
    assert resumed["test"] == full["test"] and resumed["best_epoch"] == full["best_epoch"]
    for sub in ("", "prerequisites/alone_m0/"):
        assert strip_time(read_jsonl(tmp_path / "cut" / sub / "metrics.jsonl")) == strip_time(
            read_jsonl(tmp_path / "full" / sub / "metrics.jsonl"))


class NanStep(Method):
    """Its own training step, returning a non-finite loss term."""

    def training_step(self, ctx, inputs, labels):
        return {"ce": torch.tensor(float("nan"))}


def test_a_non_finite_loss_of_an_own_training_step_stops_the_run(tiny_raw, tmp_path):
    from mmrelearn.train import NonFiniteLossError

    tiny_raw["train"].update(epochs=1, monitor_purity=False)
    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path)
    trainer.method = NanStep()
    with pytest.raises(NonFiniteLossError, match="epoch 0.*last good epoch"):
        trainer.fit()
