"""LFM: the worked example by hand, the fitted schedule, the learnt hypergradient against finite
differences, prediction with the mean of the unimodal heads, resume, CLI, refusals."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from mmrelearn.config import config_from_dict
from mmrelearn.methods.lfm import LFM, alignment, fitted_alpha
from mmrelearn.models import ModelOutput, build_model
from mmrelearn.train import build_trainer, train
from mmrelearn.train.checkpoint import load_checkpoint, read_jsonl

CPU = torch.device("cpu")


def _lfm_raw(raw, **method):
    raw["method"] = {"name": "lfm", **method}
    raw["train"]["monitor_purity"] = False
    return raw


def _f(t):
    return float(t.detach())


def test_worked_example_by_hand():
    # epoch 0, y = 0, u_a = log(0.8, 0.2), u_v = log(0.4, 0.6): m = (0.6, 0.4)
    ua, uv = torch.log(torch.tensor([[0.8, 0.2]])), torch.log(torch.tensor([[0.4, 0.6]]))
    # KL(m || p) = 0.6 ln 0.75 + 0.4 ln 2 = 0.104650; KL(m || q) = 0.6 ln 1.5 + 0.4 ln(2/3)
    # = 0.081093; J = 0.092871 (the true JS divergence: 0.086305)
    kl_p = 0.6 * math.log(0.75) + 0.4 * math.log(2.0)
    kl_q = 0.6 * math.log(1.5) + 0.4 * math.log(2 / 3)
    assert (kl_p, kl_q) == pytest.approx((0.104650, 0.081093), abs=1e-6)
    assert _f(alignment([ua, uv])) == pytest.approx(0.5 * (kl_p + kl_q), abs=1e-6)
    assert _f(alignment([ua, uv], "js")) == pytest.approx(0.086305, abs=1e-6)
    # softmax(obar) = (sqrt 0.32, sqrt 0.12) / (0.565685 + 0.346410) = (0.620204, 0.379796)
    # CE = -ln 0.620204 = 0.477707; alpha(0) = (0.204624, 0.795376)
    # L = 2 (0.204624 * 0.477707 + 0.795376 * 0.092871) = 2 (0.097750 + 0.073868) = 0.343235
    method = LFM()
    out = ModelOutput(logits=torch.zeros(1, 2), features={}, unimodal_logits={"a": ua, "v": uv})
    terms = method.loss_terms(SimpleNamespace(model=None, epoch=0), out, torch.tensor([0]))
    assert _f(terms["ce"]) == pytest.approx(2 * 0.097750, abs=2e-6)
    assert _f(terms["align"]) == pytest.approx(2 * 0.073868, abs=2e-6)
    assert _f(sum(terms.values())) == pytest.approx(0.343235, abs=2e-6)


def test_the_fitted_schedule():
    assert fitted_alpha(0) == pytest.approx((0.204624, 0.795376), abs=1e-6)
    for epoch, a1 in ((10, 0.247759), (50, 0.436681), (100, 0.539155), (150, 0.821314),
                      (199, 0.915989)):
        assert fitted_alpha(epoch)[0] == pytest.approx(a1, abs=1e-6)
        assert sum(fitted_alpha(epoch)) == pytest.approx(1.0)
    # the release's polynomial exceeds 1 at epochs 177-188 (1.0105 at 183): clipped, so the
    # alignment weight never turns negative; after epoch 199 the last value holds
    assert fitted_alpha(183) == (1.0, 0.0)
    assert fitted_alpha(176)[0] < 1.0
    assert fitted_alpha(250) == fitted_alpha(199)
    method = LFM()
    method.on_train_epoch_start(SimpleNamespace(epoch=50))
    assert method.alpha == fitted_alpha(50)


def test_three_modalities_mean_logits_and_pairs():
    gen = torch.Generator().manual_seed(0)
    u = {m: torch.randn(4, 3, generator=gen) for m in "avt"}
    y = torch.tensor([0, 1, 2, 0])
    pairs = [alignment([u[a], u[b]]) for a, b in (("a", "v"), ("a", "t"), ("v", "t"))]
    assert torch.allclose(alignment(list(u.values())), sum(pairs) / 3)
    out = ModelOutput(logits=torch.zeros(4, 3), features={}, unimodal_logits=u)
    terms = LFM().loss_terms(SimpleNamespace(model=None, epoch=0), out, y)
    ce = torch.nn.functional.cross_entropy((u["a"] + u["v"] + u["t"]) / 3, y)
    assert torch.allclose(terms["ce"], 2 * fitted_alpha(0)[0] * ce)


def _heads_model(seed=0):
    torch.manual_seed(seed)
    enc = {"type": "mlp", "hidden": [5]}
    return build_model({"a": enc, "v": enc}, {"a": (3,), "v": (3,)}, 3, unimodal_heads=True)


def _hyper_ctx(model, n=8, epoch=0):
    gen = torch.Generator().manual_seed(3)
    batch = ({m: torch.randn(n, 3, generator=gen) for m in "av"}, torch.arange(n) % 3)
    return SimpleNamespace(model=model, device=CPU, epoch=epoch, epochs=10,
                           holdout_loader=[batch])


def test_the_learnt_step_is_the_release_hypergradient():
    # a = mean over the FIRST parameter tensor of H(L_t) grad(CE), L_t = a1 CE + a2 J; checked
    # against central differences of grad(L_t) along h = grad(CE), in float64
    model = _heads_model().double()
    method = LFM(schedule="learnt", hyper_samples=8)
    ctx = _hyper_ctx(model)
    ctx.holdout_loader = [({m: x.double() for m, x in ctx.holdout_loader[0][0].items()},
                           ctx.holdout_loader[0][1])]
    method.on_fit_start(ctx)
    inputs, y = method._hyper_batch
    params = list(model.parameters())
    a1, a2 = method.alpha
    assert (a1, a2) == pytest.approx((0.05, 0.95))
    model.eval()  # as the step runs (BatchNorm with its running statistics)

    def grads(loss_of):
        out = model(inputs)
        ce, j = method._losses(model, out, y)
        return torch.autograd.grad(loss_of(ce, j), params, allow_unused=True)

    h = [g if g is not None else torch.zeros_like(p)
         for g, p in zip(grads(lambda ce, j: ce), params)]
    eps = 1e-5
    with torch.no_grad():
        for p, hi in zip(params, h):
            p += eps * hi
    g_plus = grads(lambda ce, j: a1 * ce + a2 * j)[0]
    with torch.no_grad():
        for p, hi in zip(params, h):
            p -= 2 * eps * hi
    g_minus = grads(lambda ce, j: a1 * ce + a2 * j)[0]
    with torch.no_grad():
        for p, hi in zip(params, h):
            p += eps * hi
    expected = float(((g_plus - g_minus) / (2 * eps)).mean())
    model.train()
    method.on_train_epoch_start(ctx)
    assert model.training  # the step runs in eval mode and restores the mode
    assert method.hypergrad == pytest.approx(expected, rel=1e-5)
    a2_new = min(max(0.95 - 1e-4 * expected, 0.05), 0.95)
    assert method.alpha == pytest.approx((1 - a2_new, a2_new))


def test_the_learnt_step_size_halves_every_20_epochs_and_clips():
    model = _heads_model()
    method = LFM(schedule="learnt", lr_alpha=1e3)
    ctx = _hyper_ctx(model)
    method.on_fit_start(ctx)
    lrs = []
    for epoch in range(0, 61):
        ctx.epoch = epoch
        method.on_train_epoch_start(ctx)
        lrs.append(method.lr_alpha)
        assert 0.05 <= method.alpha[1] <= 0.95 and sum(method.alpha) == pytest.approx(1.0)
    assert lrs[0] == lrs[19] == 1e3 and lrs[20] == lrs[39] == 500.0 and lrs[40] == 250.0
    assert lrs[60] == 125.0
    other = LFM(schedule="learnt")
    other.load_state_dict(method.state_dict())
    assert (other.alpha, other.lr_alpha, other.hypergrad) == (
        method.alpha, method.lr_alpha, method.hypergrad)


def test_alignment_pulls_the_unimodal_predictions_together():
    model = _heads_model(1)
    gen = torch.Generator().manual_seed(0)
    x = {m: torch.randn(32, 3, generator=gen) for m in "av"}
    method = LFM()
    j0 = _f(alignment(list(model(x).unimodal_logits.values())))
    for _ in range(20):  # plain gradient steps on J alone
        model.zero_grad()
        alignment(list(model(x).unimodal_logits.values())).backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 1.0 * p.grad
    assert _f(alignment(list(model(x).unimodal_logits.values()))) < 0.5 * j0
    assert model.head.weight.grad is None  # the fused head takes no part
    # prediction: the mean of the unimodal heads, not the fused head
    out = model(x)
    obar = (out.unimodal_logits["a"] + out.unimodal_logits["v"]) / 2
    assert torch.equal(method.predict(model, x), obar)
    assert not torch.allclose(obar, out.logits)


def test_evaluation_scores_the_mean_of_the_heads(tiny_raw, tmp_path):
    raw = _lfm_raw(tiny_raw)
    raw["train"]["epochs"] = 2
    summary = train(config_from_dict(raw), run_dir=tmp_path / "run")
    trainer = build_trainer(config_from_dict(raw), tmp_path / "x")
    best = load_checkpoint(tmp_path / "run/checkpoints/best.pt")
    trainer.model.load_state_dict(best["model"])
    trainer.model.eval()
    right = n = 0
    with torch.no_grad():
        for inputs, y in trainer.loaders["test"]:
            uni = trainer.model(inputs).unimodal_logits
            right += int(((uni["m0"] + uni["m1"]) / 2).argmax(1).eq(y).sum())
            n += len(y)
    assert summary["test"]["acc"] == pytest.approx(right / n)
    reports = read_jsonl(tmp_path / "run/reports.jsonl")
    assert [r["lfm"]["alpha_cls"] for r in reports] == pytest.approx(
        [fitted_alpha(0)[0], fitted_alpha(1)[0]])


def test_resume_equals_uninterrupted_learnt(tiny_raw, tmp_path, resume_check):
    raw = _lfm_raw(tiny_raw, schedule="learnt", holdout=0.1, lr_alpha=0.5, halve_every=2)
    raw["train"]["epochs"] = 4
    rf, wf, _, wc = resume_check(raw, tmp_path, crash_epoch=2)
    lrs = [r["report"]["lfm"]["lr_alpha"] for r in rf]
    assert lrs == [0.5, 0.5, 0.25, 0.25]
    assert wf["method"] == wc["method"]
    assert len({r["report"]["lfm"]["alpha_align"] for r in rf}) > 1  # alpha really moves


def test_cli_end_to_end_split_logits(tiny_raw, tmp_path, cli_train):
    raw = _lfm_raw(tiny_raw, logits="split", align="js")
    raw["train"]["epochs"] = 2
    cli_train(raw, tmp_path / "run")
    records = read_jsonl(tmp_path / "run/metrics.jsonl")
    assert set(records[0]["train"]) == {"ce", "align", "total"}
    model_keys = load_checkpoint(tmp_path / "run/checkpoints/last.pt")["model"]
    assert not any(k.startswith("unimodal_heads") for k in model_keys)  # split: none asked


def test_refusals(tiny_raw, tmp_path, refuses_one_modality):
    refuses_one_modality(_lfm_raw(copy.deepcopy(tiny_raw)), tmp_path / "one")
    enc = {"type": "mlp", "hidden": [4]}
    plain = build_model({"a": enc, "v": enc}, {"a": (3,), "v": (3,)}, 2)
    with pytest.raises(ValueError, match="unimodal_heads=True"):
        LFM().on_fit_start(SimpleNamespace(model=plain))
    summed = build_model({"a": enc, "v": enc}, {"a": (3,), "v": (3,)}, 2, fusion="sum")
    with pytest.raises(ValueError, match="concat fusion"):
        LFM(logits="split").on_fit_start(SimpleNamespace(model=summed))
    # learnt needs held-out samples
    raw = _lfm_raw(tiny_raw, schedule="learnt", holdout=0.001)
    trainer = build_trainer(config_from_dict(raw), tmp_path / "none")
    with pytest.raises(ValueError, match="method.holdout"):
        trainer.fit()
    assert not (tmp_path / "none/metrics.jsonl").exists()
    assert LFM().holdout_fraction == 0.0 and LFM(schedule="learnt").holdout_fraction == 0.01
    for key, bad in (("schedule", "paper"), ("holdout", 1.0), ("halve_every", 0),
                     ("alpha_align_init", 1.5), ("lr_alpha", -1.0)):
        with pytest.raises(ValueError, match=f"method.{key}"):
            LFM(**{key: bad})
