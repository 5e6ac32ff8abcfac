"""InfoReg: the worked example by hand (window, beta, proximal edit, trace), the proximal term
acting only on the ahead modality inside its window, resume, the CLI, refusals."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mmrelearn.config import ConfigError, config_from_dict
from mmrelearn.methods.base import true_class_scores
from mmrelearn.methods.inforeg import (InfoReg, regulation_coefficients, split_logits_with_grad,
                                       window_change)
from mmrelearn.models import build_model
from mmrelearn.train import build_trainer, train
from mmrelearn.train.checkpoint import read_jsonl
from conftest import method_raw  # noqa: E402

CPU = torch.device("cpu")
MLP = {"type": "mlp", "hidden": [4, 4]}  # two Linear weights per encoder


def _raw(raw, **method):
    return method_raw(raw, "inforeg", **method)


def test_window_by_hand():
    assert window_change([]) == 1.0  # k_0 = 1
    assert window_change([4.0]) == 1.0  # (F_0 - 0) / F_0
    # worked example: F_0 = 4, F_1 = 6, epoch 2: (6 - 0) / (4 + 6) = 0.6
    assert window_change([4.0, 6.0]) == pytest.approx(0.6)
    # epoch 12 with F_j = j + 1: (F_11 - F_1) / (F_2 + ... + F_11) = (12 - 2) / (3 + ... + 12)
    assert window_change([j + 1.0 for j in range(12)]) == pytest.approx(10 / 75)
    assert window_change([0.0, 0.0]) == 0.0  # a zero moving sum: closed
    assert window_change([2.0, 3.0], window=1) == pytest.approx((3 - 2) / 3)


def _scores(p_a, p_v):
    """Two samples of class 0 with softmax(out_m)[0] = p_m."""
    logits = lambda p: torch.log(torch.tensor([[q, 1 - q] for q in p]))  # noqa: E731
    return true_class_scores({"a": logits(p_a), "v": logits(p_v)}, torch.tensor([0, 0]))


def test_coefficients_by_hand():
    c = {"a": 0.95, "v": 0.10}
    s = _scores((0.9, 0.7), (0.3, 0.5))  # s_a = 1.6, s_v = 0.8
    assert s == pytest.approx({"a": 1.6, "v": 0.8})
    # k = 0.6 > 0.05, s_a > s_v: beta_a = 0.95 exp(tanh(0.8)) = 0.95 exp(0.664037)
    # = 0.95 * 1.942618 = 1.845488
    beta = regulation_coefficients(s, 0.6, c, 0.05)
    assert beta == pytest.approx({"a": 1.845488, "v": 0.0}, abs=1e-6)
    # mirror (s_v - s_a = 0.8): beta_v = 0.10 * 1.942618 = 0.194262
    mirror = regulation_coefficients({"a": 0.8, "v": 1.6}, 0.6, c, 0.05)
    assert mirror == pytest.approx({"a": 0.0, "v": 0.194262}, abs=1e-6)
    # outside the window (k = 0.05 is not > 0.05) or on a tie: nothing
    assert regulation_coefficients(s, 0.05, c, 0.05) == {"a": 0.0, "v": 0.0}
    assert regulation_coefficients({"a": 1.0, "v": 1.0}, 0.6, c, 0.05) == {"a": 0.0, "v": 0.0}
    # K = 3: only the leader, against the runner-up: 0.95 exp(tanh(2.0 - 1.5))
    three = regulation_coefficients({"a": 1.0, "v": 2.0, "t": 1.5}, 0.6,
                                    dict.fromkeys("avt", 0.95), 0.05)
    assert three == pytest.approx({"a": 0.0, "v": 0.95 * math.exp(math.tanh(0.5)), "t": 0.0})


def _model_and_method(**options):
    model = build_model({m: MLP for m in "av"}, {m: (3,) for m in "av"}, 2)
    method = InfoReg(**options)
    ctx = SimpleNamespace(model=model, device=CPU, epoch=0)
    method.on_fit_start(ctx)
    method.on_train_epoch_start(ctx)  # theta0 = the encoders now
    return model, method, ctx


def test_proximal_edit_and_trace_by_hand():
    model, method, ctx = _model_and_method()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2)  # p - theta0 = 0.2 (the heads have no theta0)
            p.grad = torch.full_like(p, 0.5)
    method.beta = regulation_coefficients({"a": 1.6, "v": 0.8}, 0.6, method._c, 0.05)
    method.on_before_optimizer_step(ctx)
    # every audio encoder parameter: 0.5 + 1.845488 * 0.2 = 0.869098
    for p in model.encoders["a"].parameters():
        assert torch.allclose(p.grad, torch.full_like(p, 0.869098), atol=1e-6)
    for p in [*model.encoders["v"].parameters(), *model.head.parameters()]:
        assert torch.equal(p.grad, torch.full_like(p, 0.5))
    report = method.on_train_epoch_end(ctx)["inforeg"]
    # trace after the edit: two Linear weights, each mean(grad^2): 2 * 0.869098^2; 2 * 0.25
    assert report["fisher_trace"] == pytest.approx({"a": 2 * 0.869098 ** 2, "v": 0.5}, rel=1e-5)
    assert report["regulated_rate"] == {"a": 1.0, "v": 0.0}
    assert method.traces == {m: [report["fisher_trace"][m]] for m in "av"}


def test_the_proximal_term_acts_only_on_the_ahead_modality_in_its_window(tiny_raw, tmp_path):
    trainer = build_trainer(config_from_dict(_raw(tiny_raw)), tmp_path)
    model, method, ctx = trainer.model, trainer.method, trainer.ctx
    method.on_fit_start(ctx)
    method.on_train_epoch_start(ctx)
    batches = iter(trainer.loaders["train"])  # batches of 32
    model.eval()  # no dropout, so the reference computation below is the same network
    method.training_step(ctx, *next(batches))  # move away from theta0
    inputs, y = next(batches)
    out = model(inputs)
    split = split_logits_with_grad(model, out.features)
    s = true_class_scores(split, y)
    assert s["m0"] > s["m1"]  # m0 (separation 3) is ahead of m1 (separation 1)
    beta0 = 0.95 * math.exp(math.tanh(s["m0"] - s["m1"]))
    for k, changed in ((1.0, True), (0.05, False)):  # in the window, then closed
        method.k = {m: k for m in model.encoders}
        terms = method.loss_terms(ctx, model(inputs), y)
        assert float(terms["ce_m0"].detach()) == pytest.approx(
            float(F.cross_entropy(split["m0"].detach(), y)))
        model.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        plain = {n: p.grad.clone() for n, p in model.named_parameters()}
        method.on_before_optimizer_step(ctx)
        assert method.beta == pytest.approx({"m0": beta0 if changed else 0.0, "m1": 0.0})
        for (name, p), p0 in zip(model.encoders["m0"].named_parameters(), method._theta0["m0"]):
            expected = plain[f"encoders.m0.{name}"] + (beta0 * (p - p0) if changed else 0)
            assert torch.allclose(p.grad, expected, atol=1e-7), name
        assert any(not torch.equal(p, p0) for p, p0 in
                   zip(model.encoders["m0"].parameters(), method._theta0["m0"]))
        for name, p in model.named_parameters():  # m1 and the heads: untouched
            if not name.startswith("encoders.m0."):
                assert torch.equal(p.grad, plain[name]), name


def test_a_run_regulates_only_inside_the_window(tiny_raw, tmp_path):
    tiny_raw["train"]["epochs"] = 8
    train(config_from_dict(_raw(tiny_raw, window=1, threshold=0.2)), run_dir=tmp_path)
    reports = [r["inforeg"] for r in read_jsonl(tmp_path / "reports.jsonl")]
    opened = [r["k"]["m0"] > 0.2 for r in reports]  # m0 plays the release's audio
    assert opened[0] and not all(opened)  # k_0 = 1; the trace settles later
    for r, is_open in zip(reports, opened):
        assert r["regulated_rate"]["m1"] == 0.0 and r["beta_mean"]["m1"] == 0.0
        assert (r["regulated_rate"]["m0"] > 0) == is_open
    traces = [r["fisher_trace"]["m0"] for r in reports]
    for t in range(1, len(reports)):  # k_t from the traces just reported
        assert reports[t]["k"]["m0"] == pytest.approx(window_change(traces[:t], 1))


def test_three_modalities_use_each_leaders_own_trace():
    model = build_model({m: MLP for m in "avt"}, {m: (3,) for m in "avt"}, 2)
    method = InfoReg()
    ctx = SimpleNamespace(model=model, device=CPU, epoch=0)
    method.on_fit_start(ctx)
    assert method._c == dict.fromkeys("avt", 0.95)
    assert [method._source(m) for m in "avt"] == list("avt")
    first = InfoReg(window_from="first", coefficients=[0.95, 0.1, 0.1])
    first.on_fit_start(ctx)
    assert [first._source(m) for m in "avt"] == ["a"] * 3


def test_resume_equals_uninterrupted(tiny_raw, tmp_path, resume_check):
    raw = _raw(tiny_raw, window=2)
    raw["train"]["epochs"] = 4
    _, wf, at_crash, wc = resume_check(raw, tmp_path, crash_epoch=2)
    assert len(at_crash["method"]["traces"]["m0"]) == 2
    assert wf["method"]["traces"] == wc["method"]["traces"]


def test_cli_end_to_end(tiny_raw, tmp_path, cli_train):
    raw = _raw(tiny_raw)
    raw["train"]["epochs"] = 2
    cli_train(raw, tmp_path / "run")
    assert set(read_jsonl(tmp_path / "run/metrics.jsonl")[0]["train"]) == {
        "ce", "ce_m0", "ce_m1", "total"}
    reports = read_jsonl(tmp_path / "run/reports.jsonl")
    assert [r["inforeg"]["k"]["m0"] for r in reports] == [1.0, 1.0]


def test_refusals(tiny_raw, tmp_path, refuses_one_modality):
    for key, bad in (("threshold", -1), ("window", 0), ("window_from", "last")):
        with pytest.raises(ConfigError, match=f"method.{key}"):
            InfoReg(**{key: bad})
    with pytest.raises(ConfigError, match=r"method.coefficients\[1\]"):
        InfoReg(coefficients=[0.95, -0.1])
    with pytest.raises(ValueError, match="2 values for 3 modalities"):
        model = build_model({m: MLP for m in "avt"}, {m: (3,) for m in "avt"}, 2)
        InfoReg(coefficients=[0.95, 0.1]).on_fit_start(SimpleNamespace(model=model))
    raw = _raw(tiny_raw)
    raw["model"]["fusion"] = "sum"
    trainer = build_trainer(config_from_dict(raw), tmp_path / "sum")
    with pytest.raises(ValueError, match="split logits of a concatenation head"):
        trainer.fit()
    assert not (tmp_path / "sum/metrics.jsonl").exists()
    refuses_one_modality(_raw(tiny_raw), tmp_path / "one")  # edits tiny_raw: last
