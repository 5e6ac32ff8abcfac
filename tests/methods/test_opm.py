"""OPM: drop probabilities by hand (the worked example), which features are dropped and at what
rates, the warm-up, removal of samples that lost everything, resume, CLI, refusals."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmrelearn.config import ConfigError, config_from_dict
from mmrelearn.methods import opm as opm_mod
from mmrelearn.methods.opm import OPM, drop_probabilities, drop_theta
from mmrelearn.models import ConcatFusion, MultimodalModel, build_model
from mmrelearn.train import build_trainer
from mmrelearn.train.checkpoint import read_jsonl
from conftest import identity_encoder  # noqa: E402

CPU = torch.device("cpu")


def _opm_raw(raw, **method):
    raw["method"] = {"name": "opm", **method}
    raw["train"]["monitor_purity"] = False
    return raw


def test_worked_example_by_hand():
    # s_1 = 30, s_2 = 20 (B = 32): r_1 = tanh(30/20 - 1) = tanh(0.5) = 0.462117,
    # r_2 = tanh(relu(0.666667 - 1)) = 0 -> q_2 = 0; q_1 = 0.5 (1 + 0.5 * 0.462117) = 0.615529
    q = drop_probabilities({"a": 30.0, "v": 20.0}, q_base=0.5, lam=0.5)
    assert q["a"] == pytest.approx(0.615529, abs=1e-6) and q["v"] == 0.0
    # theta = (512 * 0.615529 + 512 * 0) / 1024 = 0.307765; scale 1 / (1 - theta) = 1.444595
    theta = drop_theta(q, {"a": 512, "v": 512})
    assert theta == pytest.approx(0.307765, abs=1e-6)
    assert 1 / (1 - theta) == pytest.approx(1.444595, abs=1e-6)
    # q_base 0.4: q_1 = 0.4 * 1.231059 = 0.492423, theta 0.246212, scale 1.326632
    q = drop_probabilities({"a": 30.0, "v": 20.0}, q_base=0.4, lam=0.5)
    assert q["a"] == pytest.approx(0.492423, abs=1e-6)
    theta = drop_theta(q, {"a": 512, "v": 512})
    assert (theta, 1 / (1 - theta)) == pytest.approx((0.246212, 1.326632), abs=1e-6)
    # mirror, tie, and the cap at 1 (q_base 0.9, lam 1: 0.9 (1 + tanh(2)) = 1.77 -> 1)
    assert drop_probabilities({"a": 20.0, "v": 30.0}, 0.5, 0.5) == pytest.approx(
        {"a": 0.0, "v": 0.615529}, abs=1e-6)
    assert drop_probabilities({"a": 5.0, "v": 5.0}, 0.5, 0.5) == {"a": 0.0, "v": 0.0}
    assert drop_probabilities({"a": 30.0, "v": 10.0}, 0.9, 1.0)["a"] == 1.0


def test_three_modalities_by_hand():
    s = {"a": 6.0, "v": 3.0, "t": 2.0}
    # min: rho = 6/2, 3/2, 1 -> q = 0.5 (1 + 0.5 tanh(2)), 0.5 (1 + 0.5 tanh(0.5)), 0
    assert drop_probabilities(s, 0.5, 0.5, "min") == pytest.approx(
        {"a": 0.5 * (1 + 0.5 * math.tanh(2.0)), "v": 0.5 * (1 + 0.5 * math.tanh(0.5)),
         "t": 0.0})
    # bb: rho = 6/5, 3/8, 2/9 -> only a leads the sum of the others
    assert drop_probabilities(s, 0.5, 0.5, "bb") == pytest.approx(
        {"a": 0.5 * (1 + 0.5 * math.tanh(0.2)), "v": 0.0, "t": 0.0})
    # theta weights q by feature size: (4 * 0.5 + 2 * 0 + 2 * 0.25) / 8
    assert drop_theta({"a": 0.5, "v": 0.0, "t": 0.25}, {"a": 4, "v": 2, "t": 2}) == 0.3125


C = 4


def _dominated_model():
    """a's features are 5 * onehot(y) read by W_a = I: s_a = B e^5 / (e^5 + 3); W_v = 0 and
    b = 0 give out_v = 0, s_v = B / 4."""
    model = MultimodalModel(nn.ModuleDict({"a": identity_encoder(C), "v": identity_encoder(3)}),
                            ConcatFusion({"a": C, "v": 3}), C)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[:, :C] = torch.eye(C)
        model.head.bias.zero_()
    return model


def _batch(n, seed):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=gen)
    return {"a": 5.0 * F.one_hot(y, C).float(), "v": torch.randn(n, 3, generator=gen)}, y


def test_only_the_leader_is_dropped_at_the_stated_rates():
    model = _dominated_model()
    fed = []
    model.head.register_forward_hook(lambda mod, args, out: fed.append(args[0].detach()))
    method = OPM(q_base=0.5, lam=0.5, p_exe=0.7, seed=1)
    method.on_fit_start(SimpleNamespace(model=model))
    method.on_train_epoch_start(None)
    p_y = math.exp(5) / (math.exp(5) + 3)  # softmax(5 onehot)[y]
    r = math.tanh(p_y / 0.25 - 1)  # rho_a = s_a / s_v = p_y / (1/4)
    q_a = 0.5 * (1 + 0.5 * r)
    scale = 1 / (1 - q_a * C / (C + 3))  # theta = (d_a q_a + d_v 0) / (d_a + d_v)
    steps, n, executed, dropped = 60, 200, 0, 0
    for step in range(steps):
        inputs, y = _batch(n, step)
        out = model(inputs)
        fed.clear()
        terms = method.loss_terms(SimpleNamespace(model=model, epoch=6), out, y)
        if not fed:  # not executed: the plain fused logits
            assert torch.equal(terms["ce"], F.cross_entropy(out.logits, y))
            continue
        executed += 1
        (x,) = fed  # (B, C + 3): [z~_a; z~_v], nobody removed (v is never dropped)
        assert x.shape == (n, C + 3)
        kept_a = x[:, :C].abs().sum(1) > 0
        assert torch.allclose(x[kept_a, :C], inputs["a"][kept_a] * scale)
        assert torch.allclose(x[:, C:], inputs["v"] * scale)  # v kept, scaled too
        dropped += int((~kept_a).sum())
        assert torch.equal(terms["ce"], F.cross_entropy(model.head(x), y))
    # executions ~ Binomial(60, 0.7): sd 3.5; drops ~ Binomial(executed * 200, q_a): sd ~0.4%
    assert abs(executed - 0.7 * steps) < 4 * math.sqrt(steps * 0.21)
    rate = dropped / (executed * n)
    assert abs(rate - q_a) < 4 * math.sqrt(q_a * (1 - q_a) / (executed * n))
    report = method.on_train_epoch_end(SimpleNamespace(epoch=6))["opm"]
    assert report["q_mean"] == pytest.approx({"a": q_a, "v": 0.0})
    assert report["drop_rate"] == pytest.approx({"a": rate, "v": 0.0})
    assert report["executed"] == executed / steps and report["skipped_batches"] == 0


def test_warm_up_is_plain_joint_training_and_draws_nothing():
    model = _dominated_model()
    method = OPM()  # modulation_starts = 6: epochs 0..5 unmodulated
    method.on_train_epoch_start(None)
    state = method.gen.get_state()
    inputs, y = _batch(16, 0)
    out = model(inputs)
    for epoch in range(6):
        terms = method.loss_terms(SimpleNamespace(model=model, epoch=epoch), out, y)
        assert torch.equal(terms["ce"], F.cross_entropy(out.logits, y))
    assert torch.equal(method.gen.get_state(), state)
    assert method.on_train_epoch_end(SimpleNamespace(epoch=5)) == {"opm": {"modulated": False}}


def test_samples_that_lost_every_modality_are_removed(monkeypatch):
    # unreachable with either rule (the weakest modality keeps q = 0); forced here
    monkeypatch.setattr(opm_mod, "drop_probabilities", lambda *a: {"a": 0.5, "v": 0.5})
    model = _dominated_model()
    fed = []
    model.head.register_forward_hook(lambda mod, args, out: fed.append(args[0].detach()))
    method = OPM(p_exe=1.0, seed=0)
    method.on_train_epoch_start(None)
    ctx = SimpleNamespace(model=model, epoch=6)
    inputs, y = _batch(40, 0)
    out = model(inputs)
    fed.clear()
    terms = method.loss_terms(ctx, out, y)
    (x,) = fed
    assert 0 < x.shape[0] < 40  # theta = 0.5: survivors are x2; both-dropped rows are gone
    assert (x.abs().sum(1) > 0).all() and torch.isfinite(terms["ce"])
    # batch of one: a draw that drops both modalities gives no loss terms (no step)
    one_in, one_y = _batch(1, 1)
    one_out = model(one_in)
    results = [method.loss_terms(ctx, one_out, one_y) for _ in range(40)]
    assert {} in results and any(results)  # P(both dropped) = 1/4 per step
    report = method.on_train_epoch_end(ctx)["opm"]
    assert report["skipped_batches"] == sum(r == {} for r in results)


def test_resume_equals_uninterrupted(tiny_raw, tmp_path, resume_check):
    raw = _opm_raw(tiny_raw, modulation_starts=1, seed=3)
    raw["train"]["epochs"] = 4
    rf, wf, _, wc = resume_check(raw, tmp_path, crash_epoch=2)
    assert [r["report"]["opm"]["modulated"] for r in rf] == [False, True, True, True]
    assert torch.equal(wf["method"]["generator"], wc["method"]["generator"])


def test_cli_end_to_end(tiny_raw, tmp_path, cli_train):
    raw = _opm_raw(tiny_raw, modulation_starts=1)
    raw["train"]["epochs"] = 2
    cli_train(raw, tmp_path / "run")
    reports = read_jsonl(tmp_path / "run/reports.jsonl")
    assert [r["epoch"] for r in reports] == [0, 1]
    q = reports[1]["opm"]["q_mean"]
    assert set(q) == {"m0", "m1"} and min(q.values()) == 0.0  # the weaker is never dropped


def test_three_modalities_train(tiny_raw, tmp_path):
    raw = _opm_raw(tiny_raw, modulation_starts=0, rule="bb")
    raw["data"].update(dims=[6, 6, 6], separations=[3.0, 1.0, 0.5])
    raw["model"]["encoders"]["m2"] = {"type": "mlp", "hidden": [8]}
    raw["train"]["epochs"] = 1
    build_trainer(config_from_dict(raw), tmp_path).fit()
    report = read_jsonl(tmp_path / "reports.jsonl")[0]["opm"]
    assert set(report["q_mean"]) == {"m0", "m1", "m2"}


def test_refusals(tiny_raw, tmp_path, refuses_one_modality):
    for key, bad in (("q_base", 1.5), ("p_exe", -0.1), ("lam", -1.0), ("rule", "max"),
                     ("modulation_starts", 1.5)):
        with pytest.raises(ConfigError, match=f"method.{key}"):
            OPM(**{key: bad})
    raw = _opm_raw(tiny_raw)
    raw["model"]["fusion"] = "sum"
    trainer = build_trainer(config_from_dict(raw), tmp_path / "sum")
    with pytest.raises(ValueError, match="opm needs split logits.*concat"):
        trainer.fit()
    assert not (tmp_path / "sum/metrics.jsonl").exists()
    refuses_one_modality(_opm_raw(tiny_raw), tmp_path / "one")
    enc = {"type": "mlp", "hidden": [4]}
    three = build_model({m: enc for m in "avt"}, {m: (3,) for m in "avt"}, 2)
    OPM().on_fit_start(SimpleNamespace(model=three))  # K > 2 is accepted
