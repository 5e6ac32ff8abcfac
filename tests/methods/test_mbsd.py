"""MBSD: the worked example by hand, the options, all pairs for K = 3, the weak modality pulled
toward the strong one, resume, CLI, refusals."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmrelearn.methods.mbsd import MBSD, modality_logits, pair_terms
from mmrelearn.models import ConcatFusion, MultimodalModel, build_model
from mmrelearn.train.checkpoint import read_jsonl


class _Given(nn.Module):
    """An encoder that returns its input (features given by the test)."""

    def __init__(self, dim):
        super().__init__()
        self.out_dim = dim

    def forward(self, x):
        return x


def _identity_head_model(mods=("a", "v"), c=2):
    # head = [I I ...], bias 0: split logit of m = z_m, fused logits = sum of the features
    model = MultimodalModel(nn.ModuleDict({m: _Given(c) for m in mods}),
                            ConcatFusion({m: c for m in mods}), c)
    with torch.no_grad():
        model.head.weight.copy_(torch.cat([torch.eye(c)] * len(mods), 1))
        model.head.bias.zero_()
    return model


def _mbsd_raw(raw, **method):
    raw["method"] = {"name": "mbsd", **method}
    raw["train"]["monitor_purity"] = False
    return raw


def _f(t):
    return float(t.detach())


def test_worked_example_by_hand():
    # B = 1, C = 2, y = 0: out_a = (2, 0): P_a = e^2 / (e^2 + 1) = 0.880797 (right);
    # out_v = (0, 1): P_v = 1 / (1 + e) = 0.268941 (wrong). w = 0.611856;
    # RS = (4 + 1) / 2 = 2.5, w RS = 1.529639;
    # KLt = 0.268941 (ln 0.268941 - 0.880797) = 0.268941 (-1.313262 - 0.880797) = -0.590073,
    # w KLt = -0.361040
    y = torch.tensor([0])
    t = pair_terms(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]]), y)
    assert _f(t["w"][0]) == pytest.approx(0.611856, abs=1e-6)
    assert _f(t["rs"][0]) == pytest.approx(2.5)
    assert _f(t["klt"][0]) == pytest.approx(-0.590073, abs=1e-6)
    # the whole loss through the concat head: fused = (2, 1); CE(out) = ln(1 + e^-1) = 0.313262,
    # CE(out_a) = ln(1 + e^-2) = 0.126928, CE(out_v) = ln(1 + e) = 1.313262
    model = _identity_head_model()
    out = model({"a": torch.tensor([[2.0, 0.0]]), "v": torch.tensor([[0.0, 1.0]])})
    method = MBSD()
    terms = method.loss_terms(SimpleNamespace(model=model, epoch=0), out, y)
    assert _f(terms["ce"]) == pytest.approx(0.313262, abs=1e-6)
    assert _f(terms["ce_uni"]) == pytest.approx(0.126928 + 1.313262, abs=1e-6)
    assert _f(terms["rs"]) == pytest.approx(1.529639, abs=1e-6)
    assert _f(terms["kl"]) == pytest.approx(-0.361040, abs=1e-6)
    assert _f(sum(terms.values())) == pytest.approx(
        0.313262 + 0.126928 + 1.313262 + 1.529639 - 0.361040, abs=3e-6)
    # both wrong: w = 0, neither RS nor KLt counts
    t = pair_terms(torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 1.0]]), y)
    assert _f(t["w"][0]) == 0.0


def test_the_options():
    y = torch.tensor([0])
    oa, ov = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    pa, pv = 0.880797, 0.268941
    t = pair_terms(oa, ov, y, rs_on="probs", kl="log_input")
    # probs: ((pa - pv)^2 + (pv - pa)^2) / 2 = (pa - pv)^2; log_input: pw (ln pw - ln ps)
    assert _f(t["rs"][0]) == pytest.approx((pa - pv) ** 2, abs=1e-6)
    assert _f(t["klt"][0]) == pytest.approx(pv * (math.log(pv) - math.log(pa)), abs=1e-6)
    # w carries gradients (as in BalanceBenchmark) unless detach_weights
    a = oa.clone().requires_grad_()
    assert pair_terms(a, ov, y)["w"].requires_grad
    assert not pair_terms(a, ov, y, detach_weights=True)["w"].requires_grad


def test_three_modalities_average_the_pairs():
    torch.manual_seed(0)
    enc = {"type": "mlp", "hidden": [4]}
    model = build_model({m: enc for m in "avt"}, {m: (3,) for m in "avt"}, 3)
    out = model({m: torch.randn(6, 3) for m in "avt"})
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    terms = MBSD().loss_terms(SimpleNamespace(model=model, epoch=0), out, y)
    w, b = model.head.weight, model.head.bias
    split = {m: out.features[m] @ w[:, 4 * i:4 * i + 4].T + b / 3 for i, m in enumerate("avt")}
    for m, lg in modality_logits(model, out).items():
        assert torch.allclose(lg, split[m])
    rs = kl = 0
    for a, c in (("a", "v"), ("a", "t"), ("v", "t")):
        t = pair_terms(split[a], split[c], y)
        rs, kl = rs + (t["w"] * t["rs"]).mean() / 3, kl + (t["w"] * t["klt"]).mean() / 3
    assert torch.allclose(terms["rs"], rs) and torch.allclose(terms["kl"], kl)
    assert torch.allclose(terms["ce_uni"], sum(F.cross_entropy(s, y) for s in split.values()))


def test_rs_pulls_the_two_modalities_together_where_one_is_right():
    # sample 0: a right and confident, v wrong -> w = |P_a - P_v| > 0; sample 1: both wrong,
    # w = 0. One gradient step on RS alone closes sample 0's logit gap and leaves sample 1 alone
    y = torch.tensor([0, 0])
    za = torch.tensor([[3.0, 0.0], [0.0, 2.0]], requires_grad=True)
    zv = torch.tensor([[0.0, 1.0], [0.0, 1.0]], requires_grad=True)
    model = _identity_head_model()
    method = MBSD(detach_weights=True)
    terms = method.loss_terms(SimpleNamespace(model=model, epoch=0), model({"a": za, "v": zv}), y)
    terms["rs"].backward()
    assert torch.equal(za.grad[1], torch.zeros(2)) and torch.equal(zv.grad[1], torch.zeros(2))
    with torch.no_grad():
        gap_before = (za - zv)[0].norm()
        gap_after = ((za - 0.1 * za.grad) - (zv - 0.1 * zv.grad))[0].norm()
    assert float(gap_after) < float(gap_before)
    # the step moves the wrong modality v toward the right one's logits: P_v[y] rises
    p_v = torch.softmax(zv.detach()[0], 0)[0]
    p_v_after = torch.softmax((zv - 0.1 * zv.grad).detach()[0], 0)[0]
    assert float(p_v_after) > float(p_v)
    assert method.on_train_epoch_end(None)["mbsd"]["w_mean"]["a-v"] == pytest.approx(
        _f(pair_terms(za, zv, y)["w"].mean()))


def test_nothing_but_fused_ce_outside_the_modulation_epochs():
    model = _identity_head_model()
    out = model({"a": torch.tensor([[2.0, 0.0]]), "v": torch.tensor([[0.0, 1.0]])})
    terms = MBSD(modulation_ends=3).loss_terms(SimpleNamespace(model=model, epoch=4), out,
                                               torch.tensor([0]))
    assert _f(terms["ce"]) == pytest.approx(0.313262, abs=1e-6)
    assert all(_f(terms[k]) == 0.0 for k in ("ce_uni", "rs", "kl"))


def test_resume_equals_uninterrupted(tiny_raw, tmp_path, resume_check):
    raw = _mbsd_raw(tiny_raw, modulation_ends=2)
    raw["train"]["epochs"] = 4
    rf, _, _, _ = resume_check(raw, tmp_path, crash_epoch=2)
    assert ["report" in r for r in rf] == [True, True, True, False]
    assert set(rf[0]["report"]["mbsd"]["w_mean"]) == {"m0-m1"}


def test_cli_end_to_end_with_unimodal_heads(tiny_raw, tmp_path, cli_train):
    raw = _mbsd_raw(tiny_raw, rs_on="probs", kl="log_input", detach_weights=True)
    raw["model"].update(fusion="sum", unimodal_heads=True)
    raw["train"]["epochs"] = 2
    cli_train(raw, tmp_path / "run")
    records = read_jsonl(tmp_path / "run/metrics.jsonl")
    assert set(records[0]["train"]) == {"ce", "ce_uni", "rs", "kl", "total"}
    report = read_jsonl(tmp_path / "run/reports.jsonl")[0]["mbsd"]
    assert report["rs_on"] == "probs" and 0 <= report["w_mean"]["m0-m1"] <= 1


def test_refusals(tiny_raw, tmp_path, refuses_one_modality):
    refuses_one_modality(_mbsd_raw(copy.deepcopy(tiny_raw)), tmp_path / "one")
    enc = {"type": "mlp", "hidden": [4]}
    summed = build_model({"a": enc, "v": enc}, {"a": (3,), "v": (3,)}, 2, fusion="sum")
    with pytest.raises(ValueError, match="no per-modality slice.*unimodal_heads=True"):
        MBSD().on_fit_start(SimpleNamespace(model=summed))
    for key, bad in (("rs_on", "features"), ("kl", "true"), ("detach_weights", 1),
                     ("modulation_ends", -1)):
        with pytest.raises(ValueError, match=f"method.{key}"):
            MBSD(**{key: bad})
