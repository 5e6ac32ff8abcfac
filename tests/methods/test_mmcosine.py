"""MMCosine: cosine logits by hand (the worked example), training and evaluation with the same
logits (also through ``mmrelearn eval``), norm invariance, the NCE option, resume, CLI,
refusals."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmrelearn.cli import main
from mmrelearn.config import ConfigError, config_from_dict
from mmrelearn.methods.mmcosine import MMCosine, cosine_logits, nce_loss
from mmrelearn.models import ConcatFusion, MultimodalModel, build_model
from mmrelearn.train import build_trainer, train
from mmrelearn.train.checkpoint import load_checkpoint, read_jsonl
from conftest import method_raw, identity_encoder  # noqa: E402

CPU = torch.device("cpu")


def _raw(raw, **method):
    return method_raw(raw, "mmcosine", **method)


def _example_model(bias=(100.0, -100.0)):
    model = MultimodalModel(nn.ModuleDict({"a": identity_encoder(2), "v": identity_encoder(2)}),
                            ConcatFusion({"a": 2, "v": 2}), 2)
    with torch.no_grad():  # rows: class 0 = [W_a | W_v] = [(1, 0) | (1, 1)], class 1 below
        model.head.weight.copy_(torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 2.0, -1.0, 1.0]]))
        model.head.bias.copy_(torch.tensor(bias))
    return model


def test_worked_example_by_hand():
    model = _example_model()
    inputs = {"a": torch.tensor([[3.0, 4.0]]), "v": torch.tensor([[1.0, 0.0]])}
    # z_a -> (0.6, 0.8); W_a rows -> (1, 0), (0, 1): cos_a = (0.6, 0.8)
    # z_v = (1, 0); W_v rows -> (0.707107, 0.707107), (-0.707107, 0.707107):
    # cos_v = (0.707107, -0.707107)
    per = cosine_logits(model, model.encode(inputs), 10.0)
    assert torch.allclose(per["a"], torch.tensor([[6.0, 8.0]]))
    r = 10 / math.sqrt(2)
    assert torch.allclose(per["v"], torch.tensor([[r, -r]]))
    # out = 10 (0.6 + 0.707107, 0.8 - 0.707107) = (13.071068, 0.928932), whatever b is
    expected = torch.tensor([[13.071068, 0.928932]])
    method = MMCosine(scaling=10.0)
    assert torch.allclose(method.predict(model, inputs), expected, atol=1e-5)
    out = method.forward(SimpleNamespace(model=model), inputs)
    assert torch.allclose(out.logits, expected, atol=1e-5)
    # the plain head disagrees (b = (100, -100)); eval_plain_head reproduces the release
    plain = MMCosine(eval_plain_head=True).predict(model, inputs)
    assert torch.equal(plain, model(inputs).logits) and plain[0, 0] > 100


def test_norms_cannot_dominate_and_the_bias_gets_no_gradient():
    model = _example_model()
    method = MMCosine()
    inputs = {"a": torch.tensor([[3.0, 4.0], [1.0, -2.0]]), "v": torch.tensor([[1.0, 0.0],
                                                                             [0.5, 0.5]])}
    big = {"a": 100 * inputs["a"], "v": inputs["v"]}
    with torch.no_grad():
        model.head.weight[:, :2] *= 50  # a's weight norms grow too
    assert torch.allclose(method.predict(model, big), method.predict(_example_model(), inputs))
    ctx = SimpleNamespace(model=model)
    method.on_train_epoch_start(ctx)
    terms = method.loss_terms(ctx, method.forward(ctx, inputs), torch.tensor([0, 1]))
    sum(terms.values()).backward()
    assert model.head.bias.grad is None and model.head.weight.grad is not None


def test_sum_fusion_projects_then_compares_with_the_whole_weight():
    enc = {"type": "mlp", "hidden": [4]}
    model = build_model({m: enc for m in "av"}, {m: (3,) for m in "av"}, 2, fusion="sum")
    feats = {m: torch.randn(5, 4, generator=torch.Generator().manual_seed(i))
             for i, m in enumerate("av")}
    per = cosine_logits(model, feats, 2.0)
    w = F.normalize(model.head.weight, dim=1)  # (C, D)
    for m in "av":
        p = F.normalize(model.fusion.proj[m](feats[m]), dim=1)
        assert torch.allclose(per[m], 2.0 * p @ w.T)


def test_evaluation_scores_the_cosine_logits_it_trained_with(tiny_raw, tmp_path, cli_train,
                                                             capsys):
    raw = _raw(tiny_raw)
    raw["train"]["epochs"] = 2
    run = cli_train(raw, tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    trainer = build_trainer(config_from_dict(raw), tmp_path / "x")
    best = load_checkpoint(run / "checkpoints/best.pt")
    model = trainer.model
    model.load_state_dict(best["model"])
    with torch.no_grad():  # a bias that would make the plain head predict class 0 everywhere
        model.head.bias.copy_(torch.tensor([1e4, 0.0, 0.0]))
    model.eval()
    right = total = plain_zero = 0
    with torch.no_grad():
        for inputs, y in trainer.loaders["val"]:
            logits = sum(cosine_logits(model, model.encode(inputs), 10.0).values())
            right += int((logits.argmax(1) == y).sum())
            total += len(y)
            plain_zero += int((model(inputs).logits.argmax(1) == 0).sum())
    assert summary["val"]["acc"] == pytest.approx(right / total)
    assert plain_zero == total and right / total > 0.5  # the bias is ignored
    capsys.readouterr()  # the train command's output
    assert main(["eval", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["val"]["acc"] == pytest.approx(right / total)
    reports = read_jsonl(run / "reports.jsonl")
    assert [set(r["mmcosine"]["logit_y_mean"]) for r in reports] == [{"m0", "m1"}] * 2


def test_nce_by_hand():
    # f1 = f2 = ((1, 0), (0, 1)), y = (0, 1), t = 1: p = softmax((1, 0)) per row;
    # positive j = i: -log(e / (e + 1)); negative j != i: -log(1 - 1 / (e + 1))
    f = torch.eye(2)
    p_pos = math.e / (math.e + 1)
    expected = -math.log(p_pos + 1e-10) - math.log(1 - (1 - p_pos) + 1e-10)
    got = nce_loss(f, f, torch.tensor([0, 1]), temperature=1.0)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # one class only: no negatives, the release's 0/0 becomes 0
    same = nce_loss(f, f, torch.tensor([1, 1]), temperature=1.0)
    assert float(same) == pytest.approx(-0.5 * (math.log(p_pos) + math.log(1 - p_pos)))


def test_resume_equals_uninterrupted(tiny_raw, tmp_path, resume_check):
    raw = _raw(tiny_raw, scaling=15.0, lam=0.1)
    raw["train"]["epochs"] = 3
    rf, _, _, _ = resume_check(raw, tmp_path, crash_epoch=2)
    assert set(rf[0]["train"]) == {"ce", "nce", "total"}


def test_three_modalities_sum_their_cosines(tiny_raw, tmp_path):
    raw = _raw(tiny_raw)
    raw["data"].update(dims=[6, 6, 6], separations=[3.0, 1.0, 0.5])
    raw["model"]["encoders"]["m2"] = {"type": "mlp", "hidden": [8]}
    raw["train"]["epochs"] = 1
    train(config_from_dict(raw), run_dir=tmp_path)
    report = read_jsonl(tmp_path / "reports.jsonl")[0]["mmcosine"]
    assert set(report["logit_y_mean"]) == {"m0", "m1", "m2"}


def test_refusals(tiny_raw, tmp_path, refuses_one_modality):
    for key, bad in (("scaling", 0.0), ("lam", -1.0), ("eval_plain_head", 1)):
        with pytest.raises(ConfigError, match=f"method.{key}"):
            MMCosine(**{key: bad})
    refuses_one_modality(_raw(tiny_raw), tmp_path / "one")
    no_head = SimpleNamespace(encoders={"a": None, "v": None}, head=None, fusion=nn.Identity())
    with pytest.raises(ValueError, match="mmcosine needs per-modality cosine logits: it has no "
                                         "fused linear head"):
        MMCosine().on_fit_start(SimpleNamespace(model=no_head))
    odd = SimpleNamespace(encoders={"a": None, "v": None}, head=nn.Linear(2, 2),
                          fusion=nn.Identity())
    with pytest.raises(ValueError, match="Identity has neither a per-modality slice"):
        MMCosine().on_fit_start(SimpleNamespace(model=odd))
    enc = {"type": "mlp", "hidden": [4]}
    uneven = build_model({"a": enc, "v": {"type": "mlp", "hidden": [6]}},
                         {m: (3,) for m in "av"}, 2)
    with pytest.raises(ValueError, match="lam > 0.*equal size"):
        MMCosine(lam=0.5).on_fit_start(SimpleNamespace(model=uneven))
    MMCosine().on_fit_start(SimpleNamespace(model=uneven))  # unequal sizes are fine without NCE
