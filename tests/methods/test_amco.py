"""AMCo: the worked example by hand (mask schedule and dependence), the mask on the dependent
modality's split logits and the gradients it blocks, flags updated after each step, unmasked
prediction through L*, the schedule in a run, resume, the CLI (train and eval), refusals."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mmrelearn.cli import main
from mmrelearn.config import ConfigError, config_from_dict
from mmrelearn.methods.amco import AMCo, dependence, live_split_logits, mask_schedule
from mmrelearn.models import ConcatFusion, MultimodalModel, build_model
from mmrelearn.train import build_trainer
from mmrelearn.train.checkpoint import read_jsonl
from conftest import fit_ctx as _fit_ctx, method_raw, identity_encoder  # noqa: E402


T = torch.tensor


def _raw(raw, **method):
    return method_raw(raw, "amco", **method)


def test_worked_example_by_hand():
    # C = 6, eps = 0.3, epoch 1: l grows by 1 / 10 after each batch
    method = AMCo()
    ctx = SimpleNamespace(epoch=1, num_classes=6)
    method.on_train_epoch_start(ctx)
    seen = []
    for _ in range(4):
        seen.append(method.l)
        method._pending, method._used = {"a": 0.1, "v": 0.9}, ({"a": False, "v": False}, 0)
        method.on_train_batch_end(ctx, {})
    assert seen[:3] == [0.0, 0.1, 0.2]
    # batch 2: l = 0.2, p = sin(pi/2 * 0.2/0.3) = sin(pi/3) = 0.866025, N = int(5.196) = 5
    p, n = mask_schedule(seen[2], 0.3, 6)
    assert p == pytest.approx(0.866025, abs=1e-6) and n == 5
    # batch 3: l = 0.30000000000000004, clamped to eps: p = 1, N = 6 (every class masked)
    assert seen[3] == 0.30000000000000004
    assert mask_schedule(seen[3], 0.3, 6) == (1.0, 6)
    # dependence (K = 2, C = 2): out_a = (2, 0), out_v = (0, 0): one softmax over the four
    # logits, D_a = (e^2 + 1) / (e^2 + 3) = 8.389056 / 10.389056 = 0.807490 > 0.5
    d = dependence({"a": T([[2.0, 0.0]]), "v": T([[0.0, 0.0]])})
    assert d["a"] == pytest.approx(0.807490, abs=1e-6)
    assert d["v"] == pytest.approx(1 - 0.807490, abs=1e-6)
    method._pending, method._used = d, ({"a": False, "v": False}, 0)
    method.on_train_batch_end(ctx, {})
    assert method.dependent == {"a": True, "v": False}  # audio is masked in the next step


def test_saturation_is_found_and_flagged():
    # eps 0.3: epoch 0 never masks; epoch 1 reaches l >= eps at batch 3 (as published)
    assert AMCo()._saturation(epochs=4, batches=4) == (1, 3)
    assert AMCo()._saturation(epochs=1, batches=100) is None
    assert AMCo(increment=0.0)._saturation(epochs=50, batches=10) is None
    # eps 3, increment 0.1: epoch 1 would need 30 batches (l = 0.1 b), epoch 2 needs 15
    assert AMCo(eps=3.0)._saturation(epochs=3, batches=20) == (2, 15)


def _model(method, num_classes=4):
    model = MultimodalModel(nn.ModuleDict({"a": identity_encoder(2), "v": identity_encoder(2)}),
                            ConcatFusion({"a": 2, "v": 2}), num_classes)
    model.method_modules = nn.ModuleDict(method.extra_modules(model, num_classes))
    x = {"a": T([[1.0, 2.0], [-1.0, 0.5], [0.3, -2.0]]), "v": T([[0.5, 0.1], [0.2, -0.4],
                                                              [1.0, 1.0]])}
    return model, x, T([0, 1, 3])


def _ctx(model, epoch=1):
    return _fit_ctx(model=model, epoch=epoch, num_classes=4,
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_the_dependent_modality_is_masked_and_learns_less():
    torch.manual_seed(0)
    method = AMCo()
    model, x, y = _model(method)
    ctx = _ctx(model)
    method.dependent = {"a": True, "v": False}
    method.l = 0.15  # p = sin(pi/4) = 0.707107, N = int(2.828) = 2 of C = 4
    out = method.forward(ctx, x)
    live = live_split_logits(model, model.encode(x))
    zero_cols = (out.unimodal_logits["a"] == 0).all(0)  # the same classes for every sample
    assert int(zero_cols.sum()) == 2 and int((out.unimodal_logits["a"] == 0).sum()) == 2 * 3
    assert torch.allclose(out.unimodal_logits["a"][:, ~zero_cols], live["a"][:, ~zero_cols])
    assert torch.equal(out.unimodal_logits["v"], live["v"])  # not dependent: unmasked
    lstar = model.method_modules["linear_star"]
    assert torch.allclose(out.logits, lstar(out.unimodal_logits["a"] + live["v"]))
    terms = method.loss_terms(ctx, out, y)
    assert set(terms) == {"ce", "ce_a", "ce_v"}
    sum(terms.values()).backward()
    g = model.head.weight.grad  # (C, 4): columns 0-1 are a's slice, 2-3 v's
    assert torch.equal(g[zero_cols, :2], torch.zeros(2, 2))  # masked classes learn nothing
    assert (g[~zero_cols, :2] != 0).all() and (g[:, 2:] != 0).all()
    # saturated (l >= eps, N = C): a's split logits are all zero, its slice gets no gradient
    model.zero_grad(set_to_none=True)
    method.l = 0.3
    out = method.forward(ctx, x)
    assert torch.equal(out.unimodal_logits["a"], torch.zeros(3, 4))
    sum(method.loss_terms(ctx, out, y).values()).backward()
    assert torch.equal(model.head.weight.grad[:, :2], torch.zeros(4, 2))


def test_flags_follow_each_step_and_prediction_is_unmasked():
    torch.manual_seed(0)
    method = AMCo()
    model, x, y = _model(method)
    x["a"] = 5 * x["a"]  # a dominates the concatenated softmax
    ctx = _ctx(model)
    method.on_fit_start(SimpleNamespace(model=model, epochs=1, train_loader=range(4)))
    assert method.dependent == {"a": False, "v": False}  # nothing masked before the first step
    seen = []
    forward = method.forward

    def spy(ctx, inputs):
        seen.append((dict(method.dependent), forward(ctx, inputs)))
        return seen[-1][1]

    method.forward = spy
    method.on_train_epoch_start(ctx)
    method.l = 0.15  # epoch 1: l = 0.15, 0.25, 0.35: N = 2, 3, 4 of C = 4
    for step in range(3):
        terms = method.training_step(ctx, x, y)
        method.on_train_batch_end(ctx, {k: float(v.detach()) for k, v in terms.items()})
        used, out = seen[-1]
        zeros = int((out.unimodal_logits["a"] == 0).all(0).sum())
        assert zeros == ((2, 3, 4)[step] if used["a"] else 0)
        # the flags for the next step: D_m > sigma of this step's (masked) logits
        assert method.dependent == {m: d > 0.5 for m, d in
                                    dependence(out.unimodal_logits).items()}
    assert [u for u, _ in seen] == [{"a": False, "v": False}] + [{"a": True, "v": False}] * 2
    method.dependent = {"a": True, "v": True}
    method.l = 0.3  # everything would be masked in training
    with torch.no_grad():
        pred = method.predict(model, x)
        assert torch.allclose(pred, model.method_modules["linear_star"](model(x).logits),
                              atol=1e-6)


def test_three_modalities():
    enc = {"type": "mlp", "hidden": [4]}
    model = build_model({m: enc for m in "avt"}, {m: (3,) for m in "avt"}, 2)
    method = AMCo()
    model.method_modules = nn.ModuleDict(method.extra_modules(model, 2))
    ctx = SimpleNamespace(model=model, epoch=1, num_classes=2, epochs=2, train_loader=range(4))
    method.on_fit_start(ctx)
    x = {m: torch.randn(5, 3, generator=torch.Generator().manual_seed(i))
         for i, m in enumerate("avt")}
    out = method.forward(ctx, x)
    live = live_split_logits(model, model.encode(x))  # b / 3 in each
    assert torch.allclose(sum(live.values()), model(x).logits, atol=1e-6)
    assert set(out.unimodal_logits) == {"a", "v", "t"}
    assert sum(method._pending.values()) == pytest.approx(1.0)  # D_m share one softmax


def test_resume_and_the_schedule_in_a_run(tiny_raw, tmp_path, resume_check):
    raw = _raw(tiny_raw)
    raw["train"]["epochs"] = 4  # 120 training samples: 4 batches of 32 per epoch, C = 3
    records, full, _, _ = resume_check(raw, tmp_path, crash_epoch=2)
    share = [r["report"]["amco"]["masked_class_share"] for r in records]
    # N per batch (C = 3): epoch 0: l = 0 always: 0, 0, 0, 0
    # epoch 1: l = 0, 0.1, 0.2, 0.3: p = 0, 0.5 (sin(pi/6) = 0.49999999999999994: N = 1),
    # 0.866025 (N = 2), 1 (N = 3): 6 / 12
    # epoch 2: l = 0, 0.2, 0.4, 0.6: N = 0, 2, 3, 3: 8 / 12; epoch 3: N = 0, 3, 3, 3: 9 / 12
    assert share == pytest.approx([0.0, 6 / 12, 8 / 12, 9 / 12])
    rep = records[0]["report"]["amco"]
    assert rep["masked_fraction"] == {"m0": 0.0, "m1": 0.0}  # N = 0 all of epoch 0
    assert set(rep["dependence_mean"]) == {"m0", "m1"}
    for r in records:
        amco = r["report"]["amco"]
        for m in ("m0", "m1"):
            assert 0 <= amco["masked_fraction"][m] <= amco["dependent_fraction"][m] <= 1
    assert set(full["method"]) == {"l", "dependent", "generator"}
    assert "method_modules.linear_star.weight" in full["model"]


def test_cli_train_and_eval(tiny_raw, tmp_path, cli_train, capsys):
    raw = _raw(tiny_raw)
    raw["train"]["epochs"] = 2
    run = cli_train(raw, tmp_path / "run")
    assert set(read_jsonl(run / "metrics.jsonl")[0]["train"]) == {
        "ce", "ce_m0", "ce_m1", "total"}
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0  # L* restored from best.pt with the model
    assert json.loads(capsys.readouterr().out)["val"] == summary["val"]


def test_refusals(tiny_raw, tmp_path, refuses_one_modality):
    for key, bad in (("sigma", -0.1), ("sigma", 1.5), ("eps", 0), ("increment", -1),
                     ("seed", -1), ("eps", "xyz")):
        with pytest.raises(ConfigError, match=f"method.{key}"):
            AMCo(**{key: bad})
    raw = _raw(tiny_raw)
    raw["model"]["fusion"] = "sum"
    with pytest.raises(ValueError, match="concatenation head.*SumFusion"):
        build_trainer(config_from_dict(raw), tmp_path / "sum")
    assert not (tmp_path / "sum").exists()
    mid = SimpleNamespace(head=None, fusion=None)  # MMTM, MBT: no fused head
    with pytest.raises(ValueError, match="concatenation head"):
        AMCo().extra_modules(mid, 3)
    del raw["model"]["fusion"]  # concat again
    refuses_one_modality(raw, tmp_path / "one")  # edits raw: last
