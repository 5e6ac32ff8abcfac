"""G-Blending (online): blend weights by hand, the holdout, the extra heads, resume."""
from __future__ import annotations

import copy
import functools
import math
from types import SimpleNamespace

import pytest
import torch

from mmrelearn.config import config_from_dict
from mmrelearn.data import build_data
from mmrelearn.methods import gblending
from mmrelearn.methods.gblending import (GBlending, blend_weights, branch_parameters,
                                         multibench_weights)
from mmrelearn.models import ModelOutput
from mmrelearn.train import build_trainer, evaluate
from mmrelearn.train.checkpoint import read_jsonl


def _gb_raw(raw, **method):
    raw["method"] = {"name": "gblending", **method}
    raw["train"]["monitor_purity"] = False
    return raw


def _strip(records):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


def test_blend_weights_by_hand():
    # a: dG = 1.2 - 0.9 = 0.3; O: 0.2 -> 0.4, dO = 0.2; w = 0.3 / 0.04 = 7.5
    # b: dG = 1.1 - 1.0 = 0.1; O: 0.1 -> 0.2, dO = 0.1; w = 0.1 / 0.01 = 10
    w = blend_weights(train_start={"a": 1.0, "b": 1.0}, val_start={"a": 1.2, "b": 1.1},
                      train_end={"a": 0.5, "b": 0.8}, val_end={"a": 0.9, "b": 1.0})
    assert w == pytest.approx({"a": 7.5 / 17.5, "b": 10.0 / 17.5})
    # c: the holdout loss grew (|dG| = 0.25) and O stayed 0.5: dO^2 floored at 1e-8
    w = blend_weights(train_start={"a": 1.0, "c": 0.5}, val_start={"a": 1.2, "c": 1.0},
                      train_end={"a": 0.5, "c": 0.75}, val_end={"a": 0.9, "c": 1.25})
    wa, wc = 7.5, 0.25 / 1e-8
    assert w == pytest.approx({"a": wa / (wa + wc), "c": wc / (wa + wc)})


def test_multibench_weights_by_hand():
    # a: O(end) = 0.9 - 0.5 = 0.4, w = 0.9 / 0.16 = 5.625
    # b: O(end) = 1.0 - 0.8 = 0.2, w = 1.0 / 0.04 = 25
    w = multibench_weights(train_end={"a": 0.5, "b": 0.8}, val_end={"a": 0.9, "b": 1.0})
    assert w == pytest.approx({"a": 5.625 / 30.625, "b": 25.0 / 30.625})
    # c: the holdout loss is below the training loss, O(end) = -0.5: floored at 1e-4
    w = multibench_weights(train_end={"a": 0.5, "c": 1.5}, val_end={"a": 0.9, "c": 1.0})
    wa, wc = 5.625, 1.0 / 1e-8
    assert w == pytest.approx({"a": wa / (wa + wc), "c": wc / (wa + wc)})


def test_defaults_and_form_validation():
    method = GBlending()
    assert (method.holdout_fraction, method.super_epoch, method.estimate_first, method.form) == (
        0.08, 20, True, "paper")
    with pytest.raises(ValueError, match=r"method.form must be one of \['paper', 'multibench'\]"):
        GBlending(form="delta")


def test_loss_terms_are_weighted_per_head():
    method = GBlending()
    method.weights = {"fused": 0.5, "a": 0.3, "v": 0.2}
    y = torch.tensor([0])
    out = ModelOutput(logits=torch.tensor([[2.0, 0.0]]), features={},
                      unimodal_logits={"a": torch.zeros(1, 2),
                                       "v": torch.tensor([[0.0, math.log(3.0)]])})
    terms = method.loss_terms(SimpleNamespace(epoch=0), out, y)
    assert list(terms) == ["ce_fused", "ce_a", "ce_v"]
    assert float(terms["ce_fused"]) == pytest.approx(0.5 * math.log(1 + math.exp(-2.0)))
    assert float(terms["ce_a"]) == pytest.approx(0.3 * math.log(2.0))
    assert float(terms["ce_v"]) == pytest.approx(0.2 * math.log(4.0))  # p[y] = 1 / (1 + 3)


def test_holdout_comes_from_training_only(tiny_raw, tmp_path):
    joint = copy.deepcopy(tiny_raw)
    joint["method"] = {"name": "joint"}
    tj = build_trainer(config_from_dict(joint), tmp_path / "j")
    tg = build_trainer(config_from_dict(_gb_raw(tiny_raw, holdout=0.1)), tmp_path / "g")
    size = lambda t, s: len(t.loaders[s].dataset)  # noqa: E731
    assert size(tg, "train") + size(tg, "holdout") == size(tj, "train") == 120
    assert size(tg, "holdout") == 12
    assert all(size(tg, s) == size(tj, s) for s in ("val", "test"))
    assert tg.ctx.holdout_loader is tg.loaders["holdout"]
    # the same samples, unstandardised: holdout rows are training rows, never val/test rows
    opts = {k: v for k, v in tiny_raw["data"].items() if k != "name"}
    plain = build_data("synthetic", standardize=False, **opts)
    held = build_data("synthetic", standardize=False, holdout_fraction=0.1, **opts)
    rows = lambda ds: {tuple(r.tolist()) for r in ds.inputs["m0"]}  # noqa: E731
    assert rows(held.holdout) | rows(held.train) == rows(plain.train)
    assert not rows(held.holdout) & (rows(plain.val) | rows(plain.test))
    assert rows(held.val) == rows(plain.val) and rows(held.test) == rows(plain.test)


def test_estimate_leaves_the_real_run_untouched(tiny_raw, tmp_path):
    trainer = build_trainer(config_from_dict(_gb_raw(tiny_raw, super_epoch=1)), tmp_path)
    method, ctx = trainer.method, trainer.ctx
    method.on_fit_start(ctx)
    assert method.weights == pytest.approx({"fused": 1 / 3, "m0": 1 / 3, "m1": 1 / 3})
    model_before = copy.deepcopy(trainer.model.state_dict())
    rng, gen = torch.get_rng_state(), trainer.gen.get_state()
    weights = method.estimate(ctx)
    assert sum(weights.values()) == pytest.approx(1.0) and all(w >= 0 for w in weights.values())
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in model_before.items())
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(trainer.gen.get_state(), gen)
    assert not trainer.optimizer.state  # the real optimizer never stepped


@pytest.mark.parametrize("optim", [{"name": "adamw", "lr": 0.01, "weight_decay": 0.05},
                                   {"name": "adam", "lr": 0.01}])
def test_estimate_copies_take_the_real_optimizer_settings(tiny_raw, tmp_path, optim):
    # AdamW's param group holds a default its constructor does not take (torch 2.13:
    # decoupled_weight_decay); the copies must still be built with lr and weight decay
    raw = _gb_raw(tiny_raw, super_epoch=1)
    raw["optim"] = optim
    trainer = build_trainer(config_from_dict(raw), tmp_path)
    made = []
    real_init = type(trainer.optimizer).__init__

    @functools.wraps(real_init)  # keeps the signature the copies read
    def spy(self, params, **kw):
        made.append(kw)
        real_init(self, params, **kw)

    trainer.method.on_fit_start(trainer.ctx)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(trainer.optimizer), "__init__", spy)
        weights = trainer.method.estimate(trainer.ctx)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert len(made) == 3 and all(kw["lr"] == 0.01 for kw in made)
    assert all(kw["weight_decay"] == optim.get("weight_decay", 0.0) for kw in made)


class _SpyLoader:
    """The training loader, recording the labels of every batch it yields."""

    def __init__(self, loader):
        self.loader, self.generator, self.seen = loader, loader.generator, []

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for inputs, y in self.loader:
            self.seen.append(y.clone())
            yield inputs, y


def _equal(a, b):
    """Same parameters (BatchNorm statistics of a copy's idle encoder may move: it still runs
    forward in train mode, and nothing reads it)."""
    pa, pb = list(a.parameters()), list(b.parameters())
    return len(pa) == len(pb) and all(torch.equal(x, y) for x, y in zip(pa, pb))


@pytest.mark.parametrize("form", ["paper", "multibench"])
def test_estimate_trains_one_separate_copy_per_head(tiny_raw, tmp_path, monkeypatch, form):
    tiny_raw["optim"]["weight_decay"] = 0.01  # would move every parameter an optimizer holds
    trainer = build_trainer(config_from_dict(_gb_raw(tiny_raw, super_epoch=2, form=form)),
                            tmp_path)
    method, ctx, real = trainer.method, trainer.ctx, trainer.model
    method.on_fit_start(ctx)
    ctx.train_loader = spy = _SpyLoader(ctx.train_loader)
    copies = {}

    def recording(ctx, head, epochs):
        copies[head] = gblending.train_copy.__wrapped__(ctx, head, epochs)
        return copies[head]

    recording.__wrapped__ = gblending.train_copy
    monkeypatch.setattr(gblending, "train_copy", recording)
    weights = method.estimate(ctx)
    assert list(copies) == ["fused", "m0", "m1"]
    for k in ("m0", "m1"):  # copy k: encoder k and head k learn from CE(head k) only
        c, other = copies[k], "m1" if k == "m0" else "m0"
        assert not _equal(c.encoders[k], real.encoders[k])
        assert not _equal(c.unimodal_heads[k], real.unimodal_heads[k])
        assert _equal(c.encoders[other], real.encoders[other])
        assert _equal(c.unimodal_heads[other], real.unimodal_heads[other])
        assert _equal(c.head, real.head) and _equal(c.fusion, real.fusion)
        ids = {id(p) for p in branch_parameters(c, k)}
        assert ids == {id(p) for p in [*c.encoders[k].parameters(),
                                       *c.unimodal_heads[k].parameters()]}
    fused = copies["fused"]  # the whole fused model learns; the unimodal heads do not
    assert not _equal(fused.head, real.head)
    assert all(not _equal(fused.encoders[m], real.encoders[m]) for m in ("m0", "m1"))
    assert _equal(fused.unimodal_heads, real.unimodal_heads)
    # each head's end losses come from its own copy; start losses from the current model
    est = method._estimate
    for k, c in copies.items():
        assert est["train_end"][k] == gblending._head_losses(c, ctx.diag_train_loader,
                                                            ctx.device)[k]
        assert est["val_end"][k] == gblending._head_losses(c, ctx.holdout_loader, ctx.device)[k]
    assert est["val_start"] == gblending._head_losses(real, ctx.holdout_loader, ctx.device)
    expected = (multibench_weights(est["train_end"], est["val_end"]) if form == "multibench"
                else blend_weights(est["train_start"], est["val_start"], est["train_end"],
                                   est["val_end"]))
    assert weights == expected
    # every copy saw the same batches, in the order the real run then sees them
    n = len(spy) * 2
    assert len(spy.seen) == 3 * n
    runs = [spy.seen[i * n:(i + 1) * n] for i in range(3)]
    assert all(torch.equal(a, b) for r in runs[1:] for a, b in zip(runs[0], r))
    spy.seen = []
    list(spy)
    assert all(torch.equal(a, b) for a, b in zip(runs[0][:len(spy)], spy.seen))


def test_extra_heads_train_but_inference_uses_the_fused_head(tiny_raw, tmp_path):
    tiny_raw["train"]["epochs"] = 2
    trainer = build_trainer(config_from_dict(_gb_raw(tiny_raw, super_epoch=1,
                                                     estimate_first=False)), tmp_path)
    heads0 = copy.deepcopy(trainer.model.unimodal_heads.state_dict())
    trainer.fit()
    heads = trainer.model.unimodal_heads
    assert all(not torch.equal(v, heads.state_dict()[k]) for k, v in heads0.items())
    reports = [r["gblending"] for r in read_jsonl(tmp_path / "reports.jsonl")]
    assert reports[0]["weights"] == pytest.approx({"fused": 1 / 3, "m0": 1 / 3, "m1": 1 / 3})
    assert "estimate" not in reports[0] and "estimate" in reports[1]  # epoch 1 % 1 == 0
    assert reports[1]["weights"] == trainer.method.weights
    args = (trainer.model, trainer.loaders["val"], trainer.device, trainer.num_classes)
    before = evaluate(*args)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(torch.randn_like(p) * 10)
    assert evaluate(*args) == before


def test_resume_across_a_super_epoch_boundary(tiny_raw, tmp_path, resume_check):
    raw = _gb_raw(tiny_raw, super_epoch=2)
    raw["train"]["epochs"] = 3
    # Crash in epoch 1: the resumed run needs the weights estimated at epoch 0 (state) and
    # then crosses the boundary at epoch 2, where it must estimate exactly as the full run.
    rf, wf, _, wc = resume_check(raw, tmp_path, crash_epoch=1)
    assert ["estimate" in r["report"]["gblending"] for r in rf] == [True, False, True]
    assert rf[0]["report"] != rf[2]["report"]
    assert wf["method"] == wc["method"]


def test_cli_end_to_end(tiny_raw, tmp_path, cli_train):
    raw = _gb_raw(tiny_raw, super_epoch=1, holdout=0.2)
    raw["train"]["epochs"] = 2
    cli_train(raw, tmp_path / "run")
    records = read_jsonl(tmp_path / "run/metrics.jsonl")
    assert set(records[0]["train"]) == {"ce_fused", "ce_m0", "ce_m1", "total"}


def test_refusals(tiny_raw, tmp_path):
    trainer = build_trainer(config_from_dict(_gb_raw(tiny_raw)), tmp_path / "a")
    trainer.model.unimodal_heads = None
    with pytest.raises(ValueError, match="unimodal_heads=True"):
        trainer.fit()
    trainer = build_trainer(config_from_dict(_gb_raw(tiny_raw)), tmp_path / "b")
    trainer.ctx.holdout_loader = None
    with pytest.raises(ValueError, match="holdout"):
        trainer.fit()
    assert not (tmp_path / "b/metrics.jsonl").exists()
    with pytest.raises(ValueError, match="holdout"):
        GBlending(holdout=0.0)
