"""CML: the worked example by hand, nested subsets by feature zeroing, the three forms, the
per-sample removal orders, the penalty lowering the smaller subsets' confidence, resume, CLI,
refusals."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mmrelearn.config import config_from_dict
from mmrelearn.methods.cml import CML, confidence_penalty, partial_logits, removal_ranks
from mmrelearn.models import ConcatFusion, MultimodalModel, build_model
from mmrelearn.train import build_trainer
from mmrelearn.train.checkpoint import read_jsonl


class _Given(nn.Module):
    """An encoder that returns its input (features given by the test)."""

    def __init__(self, dim):
        super().__init__()
        self.out_dim = dim

    def forward(self, x):
        return x


def _identity_head_model(mods=("a", "v"), c=2):
    # head = [I I ...], bias 0: the fused logits are the sum of the features
    model = MultimodalModel(nn.ModuleDict({m: _Given(c) for m in mods}),
                            ConcatFusion({m: c for m in mods}), c)
    with torch.no_grad():
        model.head.weight.copy_(torch.cat([torch.eye(c)] * len(mods), 1))
        model.head.bias.zero_()
    return model


def _cml_raw(raw, **method):
    raw["method"] = {"name": "cml", **method}
    raw["train"]["monitor_purity"] = False
    return raw


def _log(*p):
    return torch.log(torch.tensor([p]))


def test_worked_example_by_hand():
    y = torch.tensor([0])
    # full softmax (0.6, 0.4): conf 0.6, right; audio only (0.8, 0.2): conf 0.8, right.
    # sign = 1 (the smaller set is right, but so is the full one): relu(0.8 - 0.6) = 0.2
    assert float(confidence_penalty(_log(0.6, 0.4), _log(0.8, 0.2), y)) == pytest.approx(0.2)
    # full (0.3, 0.7) is wrong while audio alone is right: sign = 0, term 0
    assert float(confidence_penalty(_log(0.3, 0.7), _log(0.8, 0.2), y)) == 0.0
    # the whole loss: z_a = log(0.8, 0.2), z_v = log(0.6, 0.4) - z_a -> full = log(0.6, 0.4);
    # order (v, a): S_1 = {a}. (1/2)(CE_full + CE_a) + lam R
    # = 0.5 (-ln 0.6 - ln 0.8) + 0.1 * 0.2 = 0.5 (0.510826 + 0.223144) + 0.02 = 0.386985
    model = _identity_head_model()
    za = _log(0.8, 0.2)
    out = model({"a": za, "v": _log(0.6, 0.4) - za})
    method = CML(lam=0.1)
    method.ranks = torch.tensor([[1, 0]])  # rank[a] = 1, rank[v] = 0: v is removed first
    ctx = SimpleNamespace(model=model, epoch=0, batch_index=torch.tensor([0]))
    terms = method.loss_terms(ctx, out, y)
    assert float(terms["ce"].detach()) == pytest.approx(0.5 * (0.510826 + 0.223144), abs=1e-6)
    assert float(terms["cml"].detach()) == pytest.approx(0.02, abs=1e-7)
    assert float(sum(terms.values()).detach()) == pytest.approx(0.386985, abs=1e-6)


def test_the_other_forms_and_the_margin():
    y = torch.tensor([0, 0])
    big = torch.cat([_log(0.6, 0.4), _log(0.9, 0.1)])  # confs 0.6, 0.9; both right
    small = torch.cat([_log(0.8, 0.2), _log(0.7, 0.3)])  # confs 0.8, 0.7
    # cpm: per sample relu(0.2) + relu(-0.2) = 0.2; with eps 0.05: 0.15
    assert float(confidence_penalty(big, small, y)) == pytest.approx(0.2)
    assert float(confidence_penalty(big, small, y, eps=0.05)) == pytest.approx(0.15)
    # bb: relu of the batch sum (0.2 - 0.2) = 0, whatever the signs
    assert float(confidence_penalty(big, small, y, "bb")) == pytest.approx(0.0, abs=1e-6)
    # miwae: sign = 1[big right]; both wrong adds relu(conf_small - conf_big.detach())
    wrong = torch.tensor([1, 1])  # (class 1): big confs 0.6 / 0.9 wrong, small 0.8 / 0.7 wrong
    # sign 0 for both; trick 2: relu(0.2) + relu(-0.2) = 0.2
    assert float(confidence_penalty(big, small, wrong, "miwae")) == pytest.approx(0.2)
    assert float(confidence_penalty(big, small, wrong, "cpm")) == pytest.approx(0.2)
    b = big.clone().requires_grad_()
    confidence_penalty(b, small, wrong, "miwae").backward()
    assert float(b.grad.abs().sum()) == 0.0  # trick 2 holds the larger set's confidence fixed


def test_three_modalities_nested_subsets_by_feature_zeroing():
    torch.manual_seed(0)
    enc = {"type": "mlp", "hidden": [4]}
    model = build_model({m: enc for m in "avt"}, {m: (3,) for m in "avt"}, 3)
    x = {m: torch.randn(2, 3) for m in "avt"}
    y = torch.tensor([0, 2])
    out = model(x)
    # sample 0 loses t then a (keeps v); sample 1 loses a then v (keeps t)
    method = CML(lam=0.5)
    method.ranks = torch.tensor([[1, 2, 0], [0, 1, 2]])  # columns a, v, t
    terms = method.loss_terms(SimpleNamespace(model=model, epoch=0,
                                              batch_index=torch.tensor([0, 1])), out, y)
    w, b = model.head.weight, model.head.bias
    z = out.features

    def logits(keep):  # sum over kept modalities of z_m W_m^T, plus the whole bias
        cols = {"a": slice(0, 4), "v": slice(4, 8), "t": slice(8, 12)}
        rows = [sum(z[m][i] @ w[:, cols[m]].T for m in keep[i]) + b for i in range(2)]
        return torch.stack(rows)

    s1, s2 = logits([["a", "v"], ["v", "t"]]), logits([["v"], ["t"]])
    assert torch.allclose(partial_logits(model, z, torch.tensor([[1, 1, 0], [0, 1, 1]]).bool()),
                          s1, atol=1e-6)
    ce = sum(torch.nn.functional.cross_entropy(o, y) for o in (out.logits, s1, s2)) / 3
    pen = confidence_penalty(out.logits, s1, y) + confidence_penalty(s1, s2, y)
    assert torch.allclose(terms["ce"], ce, atol=1e-6)
    assert torch.allclose(terms["cml"], 0.5 * pen, atol=1e-6)


def test_removal_orders_per_sample_fixed_and_seeded():
    ranks = removal_ranks(3, 200, 3)
    assert torch.equal(ranks, removal_ranks(3, 200, 3))  # a function of seed and index only
    assert not torch.equal(ranks, removal_ranks(4, 200, 3))
    assert all(sorted(r.tolist()) == [0, 1, 2] for r in ranks)  # each row a permutation
    assert len({tuple(r.tolist()) for r in ranks}) == 6  # all 3! orders occur
    # order "epoch": one order for the whole batch, changing with the epoch, seeded
    method = CML(order="epoch", seed=1)
    assert not method.wants_sample_index
    model = _identity_head_model(("a", "v", "t"))
    seen = set()
    for epoch in range(6):
        method.on_train_epoch_start(SimpleNamespace(model=model, epoch=epoch))
        r = method._ranks(SimpleNamespace(), 4)
        assert (r == r[0]).all()
        seen.add(tuple(r[0].tolist()))
    assert len(seen) > 1
    assert CML().wants_sample_index


def test_the_penalty_lowers_the_smaller_subsets_confidence():
    # one step on lam R alone: wherever a smaller subset was more confident (and sign = 1),
    # conf(S_1) - conf(S_0) falls; samples with sign = 0 get no gradient from R
    torch.manual_seed(1)
    enc = {"type": "mlp", "hidden": [8]}
    model = build_model({"a": enc, "v": enc}, {"a": (4,), "v": (4,)}, 3)
    x = {m: torch.randn(64, 4) for m in "av"}
    y = torch.randint(0, 3, (64,))
    method = CML(lam=1.0)
    method.ranks = removal_ranks(0, 64, 2)
    ctx = SimpleNamespace(model=model, epoch=0, batch_index=torch.arange(64))

    def gap():
        out = model(x)
        small = partial_logits(model, out.features, method.ranks >= 1)
        conf = [torch.softmax(o, 1).amax(1) for o in (out.logits, small)]
        return out, float((conf[1] - conf[0]).clamp_min(0).sum().detach())

    out, before = gap()
    assert before > 0.5
    model.zero_grad()
    method.loss_terms(ctx, out, y)["cml"].backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
    _, after = gap()
    assert after < 0.8 * before


def test_resume_equals_uninterrupted(tiny_raw, tmp_path, resume_check):
    raw = _cml_raw(tiny_raw, lam=0.5)
    raw["train"]["epochs"] = 4
    rf, _, _, _ = resume_check(raw, tmp_path, crash_epoch=2)
    rates = [r["report"]["cml"]["violation_rate"] for r in rf]
    assert len(rates) == 4 and all(0 <= v <= 1 for v in rates)


def test_cli_end_to_end_and_the_bb_schedule(tiny_raw, tmp_path, cli_train):
    raw = _cml_raw(tiny_raw, form="bb", order="epoch", modulation_ends=0)
    raw["train"]["epochs"] = 2
    cli_train(raw, tmp_path / "run")
    records = read_jsonl(tmp_path / "run/metrics.jsonl")
    assert set(records[0]["train"]) == {"ce", "cml", "total"}
    assert records[1]["train"]["cml"] == 0.0  # past modulation_ends: CE on the full set only
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run/reports.jsonl")] == [0]


def test_refusals(tiny_raw, tmp_path, refuses_one_modality):
    refuses_one_modality(_cml_raw(copy.deepcopy(tiny_raw)), tmp_path / "one")
    enc = {"type": "resnet18", "width": 2, "small_input": True}
    mmtm = build_model({"a": enc, "v": enc}, {"a": (1, 8, 8), "v": (1, 8, 8)}, 3, fusion="mmtm")
    with pytest.raises(ValueError, match="no fused head"):
        CML().on_fit_start(SimpleNamespace(model=mmtm, train_loader=[]))
    for key, bad in (("lam", -1.0), ("form", "paper"), ("order", "batch"), ("eps", -0.1),
                     ("seed", -1)):
        with pytest.raises(ValueError, match=f"method.{key}"):
            CML(**{key: bad})


def test_the_runner_gives_sample_indices(tiny_raw, tmp_path):
    trainer = build_trainer(config_from_dict(_cml_raw(tiny_raw)), tmp_path)
    assert len(next(iter(trainer.loaders["train"]))) == 3
    trainer.method.on_fit_start(trainer.ctx)
    assert trainer.method.ranks.shape == (len(trainer.loaders["train"].dataset), 2)
    assert math.isclose(float(trainer.method.ranks.float().mean()), 0.5)
