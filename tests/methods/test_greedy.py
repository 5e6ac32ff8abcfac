"""Greedy on the MMTM model: speeds and d by hand, the schedule, the re-balanced forward,
refusals, resume and the CLI (on a tiny two-image dataset registered for the test only)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml
from torch import nn

from mmrelearn.cli import main
from mmrelearn.config import config_from_dict
from mmrelearn.data import DATASETS, RawData
from mmrelearn.methods.base import FitContext
from mmrelearn.methods.greedy import Greedy, learning_speed
from mmrelearn.models import MMTMModel, ResNet18Encoder
from mmrelearn.train import build_trainer
from mmrelearn.train.checkpoint import read_jsonl

RES = {"type": "resnet18", "width": 2, "small_input": True}


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny convolutions run ~100x slower on 2 busy cores with 2 threads than with 1
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_images(num_samples: int = 64, seed: int = 0) -> RawData:
    """Two 1x8x8 image modalities, 2 classes: "a" shows the label clearly, "v" faintly."""
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.arange(num_samples) % 2)[torch.randperm(num_samples, generator=gen)]
    shift = labels.float()[:, None, None, None]  # (N, 1, 1, 1)
    a = torch.randn(num_samples, 1, 8, 8, generator=gen) + 1.5 * shift
    v = torch.randn(num_samples, 1, 8, 8, generator=gen) + 0.3 * shift
    return RawData({"a": a, "v": v}, labels, 2, ["0", "1"])


@pytest.fixture
def images(monkeypatch):
    """Register the tiny image dataset for this test only (undone afterwards)."""
    monkeypatch.setitem(DATASETS, "tiny_images", _tiny_images)
    # 64 samples: 32 train -> 4 steps of 8 per epoch
    return {"name": "greedy_tiny", "seed": 0,
            "data": {"name": "tiny_images", "num_samples": 64, "val_fraction": 0.25,
                     "test_fraction": 0.25, "split_seed": 0},
            "model": {"encoders": {"a": dict(RES), "v": dict(RES)}, "fusion": "mmtm"},
            "method": {"name": "greedy", "epsilon": 0.0, "rebalance_steps": 2, "start_epoch": 1},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "train": {"epochs": 4, "batch_size": 8, "progress": False}}


def _model() -> MMTMModel:
    torch.manual_seed(0)
    return MMTMModel(nn.ModuleDict({m: ResNet18Encoder((1, 8, 8), width=2, small_input=True)
                                    for m in "av"}), 3)


def _ctx(model, epoch=0) -> FitContext:
    return FitContext(model=model, optimizer=None, device=torch.device("cpu"), num_classes=3,
                      epochs=1, train_loader=[], diag_train_loader=[], val_loader=[],
                      epoch=epoch)


def _set(params, p, g):
    with torch.no_grad():
        for q in params:
            q.fill_(p)
            q.grad = torch.full_like(q, float(g))


def _numel(params):
    return sum(q.numel() for q in params)


# ---------------------------------------------------------------- exact values

def test_learning_speed_by_hand():
    w1, w2 = nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.tensor([[2.0]]))
    w1.grad, w2.grad = torch.tensor([0.5, -1.0]), torch.tensor([[3.0]])
    # (0.25 + 1 + 9) / (1 + 4 + 4)
    assert learning_speed([w1, w2]) == pytest.approx(10.25 / 9.0)
    w2.grad = None  # no gradient (e.g. a replaced gate) counts as 0
    assert learning_speed([w1, w2]) == pytest.approx(1.25 / 9.0)


def _hand_model():
    model = _model()
    enc, heads = model.encoders, model.unimodal_heads
    squeeze = [q for b in model.fusion for q in b.squeeze.parameters()]
    gate0 = [q for b in model.fusion for q in b.gates[0].parameters()]
    gate1 = [q for b in model.fusion for q in b.gates[1].parameters()]
    # ResNet-18 width 2 on 1 channel: conv1 3*3*1*2 + bn 4 = 22; layer1 2 * (2*36 + 2*4) = 160;
    # layer2 (72+8+144+8+8+8) + (144+8+144+8) = 552; layer3 (288+16+576+16+32+16) +
    # (576+16+576+16) = 2128; layer4 (1152+32+2304+32+128+32) + (2304+32+2304+32) = 8352
    assert _numel(enc["v"].parameters()) == 22 + 160 + 552 + 2128 + 8352 == 11214
    assert _numel(heads["v"].parameters()) == 16 * 3 + 3 == 51
    # blocks of c = 4, 8, 16 channels: squeeze Linear(2c, c), gate Linear(c, c)
    assert _numel(squeeze) == (32 + 4) + (128 + 8) + (512 + 16) == 700
    assert _numel(gate1) == (16 + 4) + (64 + 8) + (256 + 16) == 364
    _set(list(enc["a"].parameters()) + list(heads["a"].parameters()), 2.0, 1.0)  # speed 1/4
    _set(enc["v"].parameters(), 1.0, 1.0)  # speed 1
    _set(heads["v"].parameters(), 1.0, 3.0)  # speed 9
    _set(squeeze + gate0, 1.0, 2.0)  # speed 4
    _set(gate1, 1.0, 0.0)  # speed 0
    return model


def test_speeds_and_d_by_hand_over_two_steps():
    model = _hand_model()
    method = Greedy()
    method.on_fit_start(_ctx(model))
    method.on_before_optimizer_step(_ctx(model))  # as right after a plain step's backward
    main_a, main_v = 0.25, (11214 * 1 + 51 * 9) / (11214 + 51)  # head v included (release)
    bypass_a, bypass_v = 4.0, (700 * 4 + 364 * 0) / (700 + 364)
    assert method.m_main == pytest.approx([main_a, main_v])
    assert method.m_bypass == pytest.approx([bypass_a, bypass_v])
    d1 = math.log10(4.0 / 0.25) - math.log10((2800 / 1064) / (11673 / 11265))
    assert method.d == pytest.approx(d1)
    assert method.branch is None and method.remaining == 0  # epoch 0 < start_epoch: no window
    # second step: branch a's gradients triple (speed 9/4); the sums are cumulative
    _set(list(model.encoders["a"].parameters()) + list(model.unimodal_heads["a"].parameters()),
         2.0, 3.0)
    method.on_before_optimizer_step(_ctx(model))
    assert method.m_main == pytest.approx([0.25 + 2.25, 2 * main_v])
    assert method.m_bypass == pytest.approx([8.0, 2 * bypass_v])
    d2 = math.log10(8.0 / 2.5) - math.log10((5600 / 1064) / (2 * 11673 / 11265))
    assert method.d == pytest.approx(d2)


def test_head_excluded_from_main_on_request():
    model = _hand_model()
    method = Greedy(head_in_main=False)
    method.on_fit_start(_ctx(model))
    method.on_before_optimizer_step(_ctx(model))
    assert method.m_main == pytest.approx([0.25, 1.0])  # encoders only
    assert method.d == pytest.approx(math.log10(16.0) - math.log10(2800 / 1064))


# ---------------------------------------------------------------- schedule

def _drive(method, model, steps_per_epoch, epochs, calls):
    """The trainer's hook order over ``epochs`` epochs of ``steps_per_epoch[e]`` steps."""
    reports = []
    for epoch in range(epochs):
        ctx = _ctx(model, epoch)
        method.on_train_epoch_start(ctx)
        for _ in range(steps_per_epoch[epoch]):
            method.forward(ctx, {})
            method.on_before_optimizer_step(ctx)
        reports.append(method.on_train_epoch_end(ctx)["greedy"])
    return reports


@pytest.mark.parametrize("while_rebalancing", [False, True])
def test_schedule(while_rebalancing):
    model = _model()
    calls, ds = [], []
    model.forward = lambda inputs, rebalance=None: calls.append(rebalance)
    method = Greedy(epsilon=0.1, rebalance_steps=2, start_epoch=1,
                    accumulate_while_rebalancing=while_rebalancing)
    method.on_fit_start(_ctx(model))
    script = iter([0.5] * 4 + [0.5, -0.05, -0.3, 0.2] if not while_rebalancing else
                  [0.5] * 4 + [0.5, 9, 9, -0.05] + [-0.3, 9, 9, 0.2] + [9])

    def fake_accumulate(m):
        ds.append(next(script))
        return ds[-1]

    method.accumulate = fake_accumulate
    reports = _drive(method, model, [4, 4, 4, 1], 4, calls)
    # epoch 0 < start_epoch: never; epoch 1: d = 0.5 > 0 after step 0 -> branch a ("0") for
    # steps 1-2, no decision on re-balanced steps; step 3: |-0.05| < 0.1 -> nothing;
    # epoch 2: d = -0.3 -> branch v for steps 1-2; step 3: d = 0.2 -> a, into epoch 3
    assert calls == [None] * 4 + [None, "a", "a", None] + [None, "v", "v", None] + ["a"]
    # the release skips the sums on re-balanced steps; the option adds them every step
    assert len(ds) == (13 if while_rebalancing else 8)
    assert [r["rebalanced_steps"] for r in reports] == [
        {"a": 0, "v": 0}, {"a": 2, "v": 0}, {"a": 0, "v": 2}, {"a": 1, "v": 0}]
    assert [r["steps"] for r in reports] == [4, 4, 4, 1]
    assert method.remaining == 1 and method.branch == 0


def test_start_epoch_zero_and_epsilon():
    model = _model()
    calls = []
    model.forward = lambda inputs, rebalance=None: calls.append(rebalance)
    method = Greedy(epsilon=0.01, rebalance_steps=1, start_epoch=0)
    method.on_fit_start(_ctx(model))
    values = iter([0.005, -0.02, 0.011])
    method.accumulate = lambda m: next(values)
    _drive(method, model, [4], 1, calls)
    # |0.005| <= eps: none; -0.02 -> v for one step; then 0.011 -> a for one step
    assert calls == [None, None, "v", None]
    assert method.branch == 0 and method.remaining == 1


# ---------------------------------------------------------------- behaviour

def test_rebalanced_step_freezes_the_gate_of_the_chosen_branch_only():
    model = _model().train()
    x, y = {m: torch.randn(4, 1, 8, 8) for m in "av"}, torch.tensor([0, 1, 2, 0])
    method = Greedy()
    method.on_fit_start(_ctx(model))
    method.forward(_ctx(model), x)  # plain step: updates the running gates
    method.branch, method.remaining = 1, 1
    model.eval()  # same BatchNorm statistics for both passes below
    out = method.forward(_ctx(model), x)
    torch.testing.assert_close(out.logits, model(x, rebalance="v").logits)
    terms = method.loss_terms(_ctx(model), out, y)
    assert list(terms) == ["ce_a", "ce_v"]
    torch.testing.assert_close(terms["ce_v"],
                               nn.functional.cross_entropy(out.unimodal_logits["v"], y))
    sum(terms.values()).backward()
    for block in model.fusion:
        assert block.gates[1].weight.grad is None and block.gates[0].weight.grad is not None
    method.on_before_optimizer_step(_ctx(model, epoch=5))
    assert method.remaining == 0 and method.branch is None  # the window ended
    assert method.m_main == [0.0, 0.0]  # re-balanced step: not summed (release)


# ---------------------------------------------------------------- refusals

def test_refuses_more_than_two_modalities(tiny_raw, tmp_path):
    tiny_raw["data"].update(dims=[6, 6, 6], separations=[3.0, 1.0, 1.0])
    tiny_raw["model"]["encoders"]["m2"] = {"type": "mlp", "hidden": [16]}
    tiny_raw["method"] = {"name": "greedy"}
    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path)
    with pytest.raises(ValueError, match="two modalities only, the model has 3"):
        trainer.fit()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_refuses_a_model_without_mmtm(images, tiny_raw, tmp_path):
    tiny_raw["method"] = {"name": "greedy"}  # MLPs, concatenation
    with pytest.raises(ValueError, match="needs MMTM mid-fusion.*ConcatFusion"):
        build_trainer(config_from_dict(tiny_raw), tmp_path / "a").fit()
    images["model"]["fusion"] = "concat"  # two ResNets, but late fusion
    with pytest.raises(ValueError, match="model.fusion: mmtm"):
        build_trainer(config_from_dict(images), tmp_path / "b").fit()
    with pytest.raises(ValueError, match="method.rebalance_steps must be an int >= 1"):
        Greedy(rebalance_steps=0)


# ---------------------------------------------------------------- runs

def _strip(records):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


def test_resume_equals_uninterrupted(images, tmp_path, resume_check):
    # Crash in epoch 2: the window opened at the last step of epoch 1 must carry over.
    _, wf, at_crash, wc = resume_check(images, tmp_path, crash_epoch=2)
    assert at_crash["method"]["remaining"] == 2
    assert wf["method"] == wc["method"]


def test_cli_end_to_end(images, tmp_path):
    raw = copy.deepcopy(images)
    raw["train"]["epochs"] = 3
    cfg = tmp_path / "greedy.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(cfg), "--run-dir", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "reports.jsonl", "summary.json",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    records = read_jsonl(run / "metrics.jsonl")
    assert set(records[0]["train"]) == {"ce_a", "ce_v", "total"}
    reports = [r["greedy"] for r in read_jsonl(run / "reports.jsonl")]
    assert [r["steps"] for r in reports] == [4, 4, 4]
    # epsilon 0, windows of 2: none in epoch 0; epoch 1 re-balances steps 1-2 (decided after
    # step 0) and decides again after step 3
    assert reports[0]["rebalanced_steps"] == {"a": 0, "v": 0}
    assert sum(reports[1]["rebalanced_steps"].values()) == 2
    assert all(v > 0 for r in reports for v in r["m_main"].values())
    state = torch.load(run / "checkpoints/last.pt", weights_only=False)["model"]
    assert int(state["fusion.0.num_updates"]) == 12  # one update per training step
