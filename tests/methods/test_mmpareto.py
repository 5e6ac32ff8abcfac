"""MMPareto: the worked example by hand, per-loss gradients assembled in training_step, both
objectives descending on a conflicting pair, resume, the CLI, refusals."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmrelearn.config import ConfigError, config_from_dict
from mmrelearn.methods.mmpareto import MMPareto, pareto_combine, pareto_weights
from mmrelearn.models import ConcatFusion, MultimodalModel, build_model
from mmrelearn.train import build_trainer
from mmrelearn.train.checkpoint import read_jsonl
from conftest import fit_ctx as _fit_ctx, method_raw  # noqa: E402


T = torch.tensor


def _raw(raw, **method):
    return method_raw(raw, "mmpareto", **method)


def test_worked_example_by_hand():
    # one encoder, tensors P1 in R^2 and P2 in R
    g_f, g_u = [T([1.0, 0.0]), T([1.0])], [T([-1.0, 1.0]), T([1.0])]
    # |g_f|^2 = 2, g_f.g_u = -1 + 1 = 0, |g_u|^2 = 3: cos = 0 is not > 0, so Pareto:
    # a_f = (3 - 0) / (2 + 3 - 0) = 0.6, a_u = 0.4
    cos, a_f, a_u = pareto_weights(g_f, g_u)
    assert (cos, a_f, a_u) == pytest.approx((0.0, 0.6, 0.4))
    new, info = pareto_combine(g_f, g_u, gamma=1.5)
    # P1: h = 2 (0.6 (1, 0) + 0.4 (-1, 1)) = (0.4, 0.8), |h| = sqrt(0.8) = 0.894427,
    # |g_f + g_u| = |(0, 1)| = 1, ratio 1.118034 > 1: 1.5 * 1.118034 * (0.4, 0.8)
    assert torch.allclose(new[0], T([0.670820, 1.341641]), atol=1e-6)
    # P2: h = 2 (0.6 + 0.4) = 2, |g_f + g_u| = 2, ratio 1 (not > 1): 1.5 * 2
    assert torch.allclose(new[1], T([3.0]))
    assert info == pytest.approx({"cos": 0.0, "a_f": 0.6})
    # both objectives descend: final . g_f = 0.670820 + 3, final . g_u = -0.670820 +
    # 1.341641 + 3
    flat = torch.cat(new)
    assert float(flat @ torch.cat(g_f)) == pytest.approx(3.670820, abs=1e-5)
    assert float(flat @ torch.cat(g_u)) == pytest.approx(3.670821, abs=1e-5)
    # per encoder: |g_f + g_u| = |(0, 1, 2)| = sqrt 5, |h| = |(0.4, 0.8, 2)| = sqrt 4.8,
    # ratio = sqrt(5 / 4.8) = 1.020621 > 1 for every tensor
    new, _ = pareto_combine(g_f, g_u, gamma=1.5, magnitude="per_encoder")
    r = 1.5 * math.sqrt(5 / 4.8)
    assert torch.allclose(torch.cat(new), T([0.4 * r, 0.8 * r, 2 * r]))
    assert torch.allclose(torch.cat(new), T([0.612372, 1.224745, 3.061862]), atol=1e-6)


def test_agreeing_and_zero_gradients_by_hand():
    # no conflict: g_f = (1, 0), g_u = (1, 1), cos = 1 / sqrt 2 > 0: gamma (g_f + g_u)
    new, info = pareto_combine([T([1.0, 0.0])], [T([1.0, 1.0])], gamma=1.5)
    assert torch.allclose(new[0], T([3.0, 1.5]))
    assert info == pytest.approx({"cos": 1 / math.sqrt(2), "a_f": 0.5})
    # g_f = 0: the solver's guard g_f.g_u >= |g_f|^2 gives a_f = 0.999, h = 0.002 g_u, the
    # magnitude rule restores |g_u| (ratio 500): gamma g_u
    new, info = pareto_combine([T([0.0, 0.0])], [T([3.0, 4.0])], gamma=1.5)
    assert info["a_f"] == 0.999 and torch.allclose(new[0], T([4.5, 6.0]))
    # g_u = 0: a_f = 0.001, gamma g_f
    new, info = pareto_combine([T([3.0, 4.0])], [T([0.0, 0.0])], gamma=1.5)
    assert info["a_f"] == 0.001 and torch.allclose(new[0], T([4.5, 6.0]))
    # both zero: |h| = 0 gives a zero gradient (the release: 0 / 0 = NaN)
    new, _ = pareto_combine([T([0.0])], [T([0.0])], gamma=1.5)
    assert torch.equal(new[0], T([0.0]))


class _Linear(nn.Module):
    """A one-tensor encoder (no bias): the min-norm direction is not split across tensors."""

    def __init__(self, weight):
        super().__init__()
        self.fc = nn.Linear(2, 2, bias=False)
        self.out_dim = 2
        with torch.no_grad():
            self.fc.weight.copy_(weight)

    def forward(self, x):
        return self.fc(x)


def _conflicting_model():
    """Audio's fused-head columns and its own head pull its encoder apart (cos ~ -0.97)."""
    enc = nn.ModuleDict({"a": _Linear(torch.eye(2)), "v": _Linear(torch.eye(2))})
    model = MultimodalModel(enc, ConcatFusion({"a": 2, "v": 2}), 2, unimodal_heads=True)
    with torch.no_grad():
        model.head.weight.copy_(T([[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 0.0, 0.5]]))
        model.unimodal_heads["a"].weight.copy_(T([[1.0, 3.0], [3.0, 0.0]]))
        model.unimodal_heads["v"].weight.copy_(torch.eye(2))
        for head in (model.head, *model.unimodal_heads.values()):
            head.bias.zero_()
    x = {"a": T([[1.0, 0.2], [0.1, 1.0]]), "v": T([[0.3, 0.0], [0.0, 0.3]])}
    return model, x, T([0, 1])


def _losses(model, x, y):
    with torch.no_grad():
        out = model(x)
        return (float(F.cross_entropy(out.logits, y)),
                float(F.cross_entropy(out.unimodal_logits["a"], y)))


def test_both_objectives_descend_on_a_conflicting_pair():
    model, x, y = _conflicting_model()
    ce_f, ce_a = _losses(model, x, y)
    # the plain sum of the two losses: one SGD step on the audio encoder raises CE(fused)
    opt = torch.optim.SGD(model.encoders["a"].parameters(), lr=0.01)
    out = model(x)
    (F.cross_entropy(out.logits, y) + F.cross_entropy(out.unimodal_logits["a"], y)).backward()
    opt.step()
    after_sum = _losses(model, x, y)
    assert after_sum[0] > ce_f and after_sum[1] < ce_a
    # MMPareto's step (same start, same lr) lowers both
    model, x, y = _conflicting_model()
    method = MMPareto()
    ctx = _fit_ctx(model=model,
                   optimizer=torch.optim.SGD(model.encoders["a"].parameters(), lr=0.01))
    method.on_train_epoch_start(ctx)
    method.training_step(ctx, x, y)
    after = _losses(model, x, y)
    assert after[0] < ce_f - 1e-4 and after[1] < ce_a - 1e-4
    report = method.on_train_epoch_end(ctx)["mmpareto"]
    assert report["conflict_rate"] == {"a": 1.0, "v": 0.0}
    assert report["cos_mean"]["a"] < -0.9 and report["weight_fused_mean"]["v"] == 0.5


def test_training_step_assembles_each_losss_gradient(tiny_raw, tmp_path):
    trainer = build_trainer(config_from_dict(_raw(tiny_raw)), tmp_path)
    model, method, ctx = trainer.model, trainer.method, trainer.ctx
    method.on_fit_start(ctx)
    inputs, y = next(iter(trainer.loaders["diag_train"]))
    model.eval()  # no dropout: the reference pass below sees the same network
    out = model(inputs)
    fused = F.cross_entropy(out.logits, y)
    uni = {m: F.cross_entropy(out.unimodal_logits[m], y) for m in model.encoders}
    total = fused + sum(uni.values())
    expected = {}
    for m, enc in model.encoders.items():
        ps = list(enc.parameters())
        g_f = torch.autograd.grad(fused, ps, retain_graph=True)
        g_u = torch.autograd.grad(uni[m], ps, retain_graph=True)
        expected[m] = pareto_combine(list(g_f), list(g_u), 1.5)[0]
    heads = [*model.head.parameters(), *model.unimodal_heads.parameters()]
    head_grads = torch.autograd.grad(total, heads)
    method.on_train_epoch_start(ctx)
    terms = method.training_step(ctx, inputs, y)
    assert set(terms) == {"ce", "ce_m0", "ce_m1"}
    for m, enc in model.encoders.items():
        for p, g in zip(enc.parameters(), expected[m]):
            assert torch.allclose(p.grad, g, atol=1e-7)
    for p, g in zip(heads, head_grads):  # heads: the plain gradient of the total loss
        assert torch.allclose(p.grad, g, atol=1e-7)


def test_split_logits_and_three_modalities():
    enc = {"type": "mlp", "hidden": [4]}
    model = build_model({m: enc for m in "avt"}, {m: (3,) for m in "avt"}, 2)
    method = MMPareto(unimodal="split_logits", magnitude="per_encoder")
    assert method.model_overrides() == {}
    ctx = _fit_ctx(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    method.on_fit_start(ctx)  # K = 3: each encoder still has exactly two objectives
    method.on_train_epoch_start(ctx)
    x = {m: torch.randn(5, 3, generator=torch.Generator().manual_seed(i))
         for i, m in enumerate("avt")}
    terms = method.training_step(ctx, x, torch.tensor([0, 1, 0, 1, 1]))
    assert set(terms) == {"ce", "ce_a", "ce_v", "ce_t"}
    assert set(method.on_train_epoch_end(ctx)["mmpareto"]["cos_mean"]) == {"a", "v", "t"}


def test_resume_equals_uninterrupted(tiny_raw, tmp_path, resume_check):
    raw = _raw(tiny_raw)
    raw["train"]["epochs"] = 4
    records, *_ = resume_check(raw, tmp_path, crash_epoch=2)
    assert all(set(r["report"]["mmpareto"]["conflict_rate"]) == {"m0", "m1"} for r in records)


def test_cli_end_to_end(tiny_raw, tmp_path, cli_train):
    raw = _raw(tiny_raw, unimodal="split_logits")
    raw["train"]["epochs"] = 2
    cli_train(raw, tmp_path / "run")
    assert set(read_jsonl(tmp_path / "run/metrics.jsonl")[0]["train"]) == {
        "ce", "ce_m0", "ce_m1", "total"}
    for r in read_jsonl(tmp_path / "run/reports.jsonl"):
        assert all(0 < a < 1 for a in r["mmpareto"]["weight_fused_mean"].values())


def test_refusals(tiny_raw, tmp_path, refuses_one_modality):
    for key, bad in (("gamma", 0), ("unimodal", "both"), ("magnitude", "per_layer")):
        with pytest.raises(ConfigError, match=f"method.{key}"):
            MMPareto(**{key: bad})
    raw = _raw(tiny_raw, unimodal="split_logits")
    raw["model"]["fusion"] = "sum"
    trainer = build_trainer(config_from_dict(raw), tmp_path / "sum")
    with pytest.raises(ValueError, match="split_logits.*concatenation fusion"):
        trainer.fit()
    assert not (tmp_path / "sum/metrics.jsonl").exists()
    enc = {"type": "mlp", "hidden": [4]}
    no_heads = build_model({m: enc for m in "av"}, {m: (3,) for m in "av"}, 2)
    with pytest.raises(ValueError, match="unimodal_heads=True"):
        MMPareto().on_fit_start(SimpleNamespace(model=no_heads))
    no_head = SimpleNamespace(encoders={"a": None, "v": None}, head=None)  # as MMTM, MBT
    with pytest.raises(ValueError, match="fused linear head"):
        MMPareto().on_fit_start(SimpleNamespace(model=no_head))
    refuses_one_modality(_raw(tiny_raw), tmp_path / "one")  # edits tiny_raw: last
