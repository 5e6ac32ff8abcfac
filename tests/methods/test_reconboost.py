"""ReconBoost: the worked example by hand, the schedule, the phase losses against a hand-built
ensemble, which modules each phase moves, pretraining, resume (mid-stage and inside a
pretraining run), K = 3, the CLI and refusals."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mmrelearn.cli import main
from mmrelearn.config import ConfigError, config_from_dict
from mmrelearn.methods.reconboost import (ReconBoost, boosting_loss, stage_of,
                                          true_class_prob)
from mmrelearn.train import build_trainer, train
from mmrelearn.train.checkpoint import load_checkpoint, read_jsonl

T = torch.tensor


def _raw(raw, epochs=4, **method):
    raw["method"] = {"name": "reconboost", "epochs_per_stage": 1, "correct_epoch": 1,
                     "pretrain_epochs": 1, **method}
    raw["train"].update(epochs=epochs, monitor_purity=False)
    return raw


def _f(t):
    return float(t.detach())


def test_worked_example_by_hand():
    y = T([0])
    # C = 2, F_-m logits (2, 0): q = e^2 / (e^2 + 1) = 0.880797
    q = true_class_prob(T([[2.0, 0.0]]), y)
    assert float(q) == pytest.approx(math.exp(2) / (math.exp(2) + 1))
    assert float(q) == pytest.approx(0.880797, abs=1e-6)
    # f_m logits (0, 0): p = 0.5, -log p = 0.693147;
    # loss = (5 - 0.880797) / 2 * 0.693147 = 2.059601 * 0.693147 = 1.427607
    f_m = T([[0.0, 0.0]])
    assert float(boosting_loss(f_m, q, y, 5.0, 1.0)) == pytest.approx(1.427607, abs=1e-6)
    # q = 0: 2.5 * 0.693147 = 1.732868 (weights span [(w1 - w2)/C, w1/C] = [2, 2.5])
    assert float(boosting_loss(f_m, T([0.0]), y, 5.0, 1.0)) == pytest.approx(1.732868, abs=1e-6)
    # no other learner yet (stage 0 without pretraining): q = 1, (5 - 1)/2 * 0.693147 = 1.386294
    assert float(true_class_prob(None, y)) == 1.0
    assert float(boosting_loss(f_m, true_class_prob(None, y), y, 5.0, 1.0)) == pytest.approx(
        1.386294, abs=1e-6)
    # a batch: the mean of the per-sample losses, (1.427607 + 1.732868) / 2
    two = boosting_loss(f_m.repeat(2, 1), T([0.880797, 0.0]), T([0, 1]), 5.0, 1.0)
    assert float(two) == pytest.approx(1.580238, abs=1e-6)


def test_the_schedule_is_a_function_of_the_epoch():
    # 4 + 4 epochs a stage: epochs 0-3 phase 1, 4-7 phase 2 of stage 0, epoch 8 starts stage 1
    assert [stage_of(e, 4, 4) for e in (0, 3, 4, 7, 8, 15, 16)] == [
        (0, 1), (0, 1), (0, 2), (0, 2), (1, 1), (1, 2), (2, 1)]
    assert [stage_of(e, 2, 0) for e in range(4)] == [(0, 1), (0, 1), (1, 1), (1, 1)]
    method = ReconBoost(m_lr=0.02, e_lr=0.01)  # lr x 0.1 every 30 stages
    assert [method.lr(s, 1) for s in (0, 29, 30, 60)] == pytest.approx([0.02, 0.02, 2e-3, 2e-4])
    assert method.lr(30, 2) == pytest.approx(1e-3)


def _step_inputs(tiny_raw, tmp_path, **method):
    raw = _raw(tiny_raw, **method)
    raw["model"]["encoders"]["m1"]["dropout"] = 0.0
    trainer = build_trainer(config_from_dict(raw), tmp_path)
    inputs, y = next(iter(trainer.loaders["diag_train"]))
    trainer.model.eval()  # BatchNorm running statistics: the reference below sees the same net
    return trainer.model, trainer.method, trainer.ctx, inputs, y


def test_phase_losses_match_a_hand_built_ensemble(tiny_raw, tmp_path):
    model, method, ctx, x, y = _step_inputs(tiny_raw, tmp_path)  # pretrain: fcs before stage
    enc, extra = model.encoders, model.method_modules
    head, rho, fc = extra["head"], extra["rho"].rho, extra["pretrained_fc"]
    with torch.no_grad():
        # stage 0, learner m0; m1 is pretrained and predicts with its own fc until stage 1
        q = F.softmax(rho * fc["m1"](enc["m1"](x["m1"])), 1)[torch.arange(len(y)), y]
        nll = F.cross_entropy(head(enc["m0"](x["m0"])), y, reduction="none")
        want = ((5.0 - q) / 3 * nll).mean()  # C = 3
    method.on_train_epoch_start(ctx)  # epoch 0
    assert _f(method.training_step(ctx, x, y)["boost"]) == pytest.approx(float(want), 1e-6)
    assert float(method._q_sum) / method._n == pytest.approx(float(q.mean()), 1e-6)
    ctx.epoch = 1  # phase 2: CE(rho (f_m0 + f_m1)), m1 still through its fc
    method.on_train_epoch_start(ctx)
    with torch.no_grad():
        logits = rho * (head(enc["m0"](x["m0"])) + fc["m1"](enc["m1"](x["m1"])))
        want = F.cross_entropy(logits, y)
    assert _f(method.training_step(ctx, x, y)["ce"]) == pytest.approx(float(want), 1e-6)
    with torch.no_grad():  # prediction: the same ensemble
        assert torch.allclose(method.predict(model, x), rho * (
            head(enc["m0"](x["m0"])) + fc["m1"](enc["m1"](x["m1"]))), atol=1e-6)


def test_without_pretraining_stage_0_sees_q_1(tiny_raw, tmp_path):
    model, method, ctx, x, y = _step_inputs(tiny_raw, tmp_path, pretrain=False)
    enc, head, rho = model.encoders, model.method_modules["head"], model.method_modules["rho"].rho
    assert "pretrained_fc" not in model.method_modules and method.prerequisites() == {}
    with torch.no_grad():  # no learner before m0: weight (w1 - w2) / C = 4 / 3 on every sample
        want = 4 / 3 * F.cross_entropy(head(enc["m0"](x["m0"])), y)
    method.on_train_epoch_start(ctx)
    assert _f(method.training_step(ctx, x, y)["boost"]) == pytest.approx(float(want), 1e-6)
    ctx.epoch = 2  # stage 1, learner m1: F_-m = rho f_m0, both through H
    method.on_train_epoch_start(ctx)
    with torch.no_grad():
        q = F.softmax(rho * head(enc["m0"](x["m0"])), 1)[torch.arange(len(y)), y]
        nll = F.cross_entropy(head(enc["m1"](x["m1"])), y, reduction="none")
        want = ((5.0 - q) / 3 * nll).mean()
    assert _f(method.training_step(ctx, x, y)["boost"]) == pytest.approx(float(want), 1e-6)


@pytest.fixture
def moved_per_epoch(monkeypatch):
    """``moved_per_epoch(raw, run_dir)``: train; {epoch: names of parameters that moved}, and
    the parameters right after on_fit_start."""
    seen, start = {}, {}

    def snapshot(model):
        return {k: v.detach().clone() for k, v in model.named_parameters()}

    fit_start, epoch_start = ReconBoost.on_fit_start, ReconBoost.on_train_epoch_start
    epoch_end = ReconBoost.on_train_epoch_end

    def on_fit_start(self, ctx):
        fit_start(self, ctx)
        start.update(snapshot(ctx.model))

    def on_train_epoch_start(self, ctx):
        epoch_start(self, ctx)
        seen[ctx.epoch] = snapshot(ctx.model)

    def on_train_epoch_end(self, ctx):
        before = seen[ctx.epoch]
        seen[ctx.epoch] = {k for k, v in ctx.model.named_parameters()
                           if not torch.equal(before[k], v)}
        return epoch_end(self, ctx)

    for name, fn in (("on_fit_start", on_fit_start), ("on_train_epoch_start",
                     on_train_epoch_start), ("on_train_epoch_end", on_train_epoch_end)):
        monkeypatch.setattr(ReconBoost, name, fn)

    def run(raw, run_dir):
        train(config_from_dict(raw), run_dir=run_dir)
        return seen, start

    return run


def _names(model_params, *prefixes):
    return {k for k in model_params if k.startswith(prefixes)}


def test_each_phase_moves_only_its_modules(tiny_raw, tmp_path, moved_per_epoch):
    run = tmp_path / "run"
    seen, start = moved_per_epoch(_raw(tiny_raw), run)
    enc0, enc1 = _names(start, "encoders.m0."), _names(start, "encoders.m1.")
    head, rho = _names(start, "method_modules.head."), {"method_modules.rho.rho"}
    assert enc0 and enc1 and len(head) == 4
    # phase 1 of stage s: E_m and H only; phase 2: every encoder, H and rho. The model's own
    # head and the pretrained fcs never move.
    assert seen == {0: enc0 | head, 1: enc0 | enc1 | head | rho, 2: enc1 | head,
                    3: enc0 | enc1 | head | rho}
    # the encoders and fcs started from the uni-modal runs' best checkpoints; the fcs stayed
    last = load_checkpoint(run / "checkpoints/last.pt")["model"]
    for m in ("m0", "m1"):
        pre = load_checkpoint(run / f"prerequisites/pretrain_{m}/checkpoints/best.pt")["model"]
        for k, v in pre.items():
            if k.startswith(f"encoders.{m}.") and k in start:
                assert torch.equal(start[k], v), k
        assert torch.equal(last[f"method_modules.pretrained_fc.{m}.weight"], pre["head.weight"])
        assert torch.equal(last[f"method_modules.pretrained_fc.{m}.bias"], pre["head.bias"])
    reports = [r["reconboost"] for r in read_jsonl(run / "reports.jsonl")]
    assert [(r["stage"], r["phase"], r["modality"]) for r in reports] == [
        (0, 1, "m0"), (0, 2, "m0"), (1, 1, "m1"), (1, 2, "m1")]
    assert reports[0]["rho"] == 1.0 and reports[1]["rho"] != 1.0  # rho learns in phase 2 only
    assert reports[2]["rho"] == reports[1]["rho"] and 0 < reports[0]["q_mean"] < 1


def test_three_modalities_cyclic_order_without_pretraining(tiny_raw, tmp_path,
                                                           moved_per_epoch):
    tiny_raw["data"].update(dims=[6, 6, 6], separations=[3.0, 1.0, 2.0])
    tiny_raw["model"]["encoders"]["m2"] = {"type": "mlp", "hidden": [16]}
    raw = _raw(tiny_raw, epochs=7, pretrain=False, order=["m2", "m0", "m1"])
    seen, start = moved_per_epoch(raw, tmp_path / "run")
    reports = [r["reconboost"] for r in read_jsonl(tmp_path / "run/reports.jsonl")]
    assert [r["modality"] for r in reports] == ["m2", "m2", "m0", "m0", "m1", "m1", "m2"]
    enc = {m: _names(start, f"encoders.{m}.") for m in ("m0", "m1", "m2")}
    moved_enc = {e: {m for m in enc if enc[m] & moved} for e, moved in seen.items()}
    # a learner joins the ensemble at its first stage: phase 2 trains the joined ones
    assert moved_enc == {0: {"m2"}, 1: {"m2"}, 2: {"m0"}, 3: {"m2", "m0"}, 4: {"m1"},
                         5: {"m0", "m1", "m2"}, 6: {"m2"}}
    assert "q_mean" in reports[2] and reports[0]["q_mean"] == 1.0  # stage 0: q = 1


def test_resume_mid_stage_and_inside_a_pretraining_run(tiny_raw, tmp_path, resume_check,
                                                       crash_run, strip_time):
    raw = _raw(tiny_raw, epochs=5, epochs_per_stage=2, correct_epoch=2, pretrain_epochs=2)
    # killed after epoch 2, inside stage 0's phase 2: its optimizer's momentum is in the state
    _, full_last, at_crash, _ = resume_check(raw, tmp_path, crash_epoch=3)
    state = at_crash["method"]
    assert state["optimizer_key"] == [0, 2] and state["optimizer"]["state"]
    assert state["pretrained_loaded"] is True
    # killed in the second uni-modal run's second epoch, before the run's first epoch
    crash_run(raw, tmp_path / "cut2", 1, when=lambda t: "pretrain_m1" in str(t.run_dir))
    assert (tmp_path / "cut2/prerequisites/pretrain_m0/summary.json").is_file()
    assert not (tmp_path / "cut2/prerequisites/pretrain_m1/summary.json").exists()
    resumed = train(run_dir=tmp_path / "cut2", resume=True)
    full = json.loads((tmp_path / "full/summary.json").read_text())
    assert resumed["test"] == full["test"] and resumed["passes"] == full["passes"]
    assert full["passes"] == {"run": 5.0, "prerequisites": 4.0, "total": 9.0}
    for sub in ("", "prerequisites/pretrain_m0/", "prerequisites/pretrain_m1/"):
        assert strip_time(read_jsonl(tmp_path / "cut2" / sub / "metrics.jsonl")) == strip_time(
            read_jsonl(tmp_path / "full" / sub / "metrics.jsonl")), sub
    last = load_checkpoint(tmp_path / "cut2/checkpoints/last.pt")
    assert all(torch.equal(v, full_last["model"][k]) for k, v in last["model"].items())


def test_cli_train_and_eval(tiny_raw, tmp_path, cli_train, capsys):
    run = cli_train(_raw(tiny_raw, epochs=3, pretrain=False), tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    assert "prerequisites" not in summary and summary["passes"]["total"] == 3.0
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0  # restores the best epoch's stage with the weights
    out = json.loads(capsys.readouterr().out)
    assert out["val"] == summary["val"] and out["test"] == summary["test"]
    assert "method" in load_checkpoint(run / "checkpoints/best.pt")


@pytest.mark.parametrize("key, bad", [
    ("w1", 0), ("w2", -1), ("epochs_per_stage", 0), ("correct_epoch", -1), ("m_lr", 0),
    ("e_lr", -0.1), ("momentum", 1.0), ("weight_decay", -1), ("lr_gamma", 1.5),
    ("lr_decay_stages", 0), ("boost_rate", 0), ("hidden", 0), ("order", []),
    ("order", ["a", "a"]), ("order", "av"), ("pretrain", 1), ("pretrain_epochs", 0)])
def test_bad_options(key, bad):
    with pytest.raises(ConfigError, match=f"method.{key}"):
        ReconBoost(**{key: bad})


def test_refusals(tiny_raw, tmp_path):
    with pytest.raises(ConfigError, match="method.w2 must not exceed method.w1"):
        ReconBoost(w1=1.0, w2=2.0)
    cases = [("order", {"order": ["m0", "m9"]}, "method.order must name every modality"),
             ("dims", {}, r"reconboost needs one head H shared by every learner.*'m1': 8"),
             ("one", {}, "at least 2 modalities")]
    for name, method, match in cases:
        raw = _raw(json.loads(json.dumps(tiny_raw)), **method)
        if name == "dims":
            raw["model"]["encoders"]["m1"]["hidden"] = [8]
        if name == "one":
            raw["data"].update(dims=[6], separations=[3.0])
        with pytest.raises(ValueError, match=match):
            train(config_from_dict(raw), run_dir=tmp_path / name)
        assert not (tmp_path / name).exists()
    mixed = SimpleNamespace(encoders={"a": None, "v": None}, head=None)  # as MMTM, MBT
    with pytest.raises(ValueError, match="independent late-fused encoders"):
        ReconBoost().extra_modules(mixed, 3)
    # pretraining asked for, but no prerequisite runs handed over (not run through train())
    trainer = build_trainer(config_from_dict(_raw(tiny_raw)), tmp_path / "bare")
    with pytest.raises(ValueError, match="prerequisite run 'pretrain_m0'"):
        trainer.fit()
    assert not (tmp_path / "bare/metrics.jsonl").exists()
