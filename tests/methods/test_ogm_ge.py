"""OGM / OGM-GE: coefficients by hand, which gradients change, GE noise, resume, CLI, refusals."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mmrelearn.config import config_from_dict
from mmrelearn.methods.ogm_ge import OGMGE, ogm_coefficients
from mmrelearn.models import ConcatFusion, MultimodalModel, build_model
from mmrelearn.train import build_trainer, train
from mmrelearn.train.checkpoint import read_jsonl

CPU = torch.device("cpu")


def _ogm_raw(raw, **method):
    raw["method"] = {"name": "ogm_ge", **method}
    raw["train"]["monitor_purity"] = False
    return raw


def test_coefficients_by_hand_two_modalities():
    # s_a = 6, s_v = 3: rho_v = 1/2, rho_a = 2 -> a dominant, k_a = 1 - tanh(0.8 * 2)
    k = ogm_coefficients({"a": 6.0, "v": 3.0}, 0.8, "release")
    assert k["a"] == pytest.approx(1.0 - math.tanh(1.6)) and k["v"] == 1.0
    k = ogm_coefficients({"a": 2.0, "v": 5.0}, 0.1, "release")  # rho_v = 2.5
    assert k["a"] == 1.0 and k["v"] == pytest.approx(1.0 - math.tanh(0.25))
    # the K > 2 rule gives the same k for K = 2 (rho_dom = s_dom / s_other in both rules)
    for s in ({"a": 6.0, "v": 3.0}, {"a": 2.0, "v": 5.0}, {"a": 1.0, "v": 1.01}):
        assert ogm_coefficients(s, 0.8, "min") == pytest.approx(ogm_coefficients(s, 0.8, "release"))
    # they differ only at an exact tie: the release's else-branch modulates a with rho_a = 1
    assert ogm_coefficients({"a": 3.0, "v": 3.0}, 0.8, "release") == pytest.approx(
        {"a": 1.0 - math.tanh(0.8), "v": 1.0})
    assert ogm_coefficients({"a": 3.0, "v": 3.0}, 0.8, "min") == {"a": 1.0, "v": 1.0}


def test_coefficients_by_hand_three_modalities():
    # rho_m = s_m / min s = 6/2, 3/2, 2/2 -> the minimum keeps 1
    k = ogm_coefficients({"a": 6.0, "v": 3.0, "t": 2.0}, 0.8, "min")
    assert k == pytest.approx({"a": 1.0 - math.tanh(2.4), "v": 1.0 - math.tanh(1.2), "t": 1.0})
    method = OGMGE(rule="auto")
    method.scores = {"a": 6.0, "v": 3.0, "t": 2.0}
    assert method._rule() == "min"
    method.scores = {"a": 6.0, "v": 3.0}
    assert method._rule() == "release"


def _resnet_model():
    torch.manual_seed(0)
    spec = {"type": "resnet18", "width": 2, "small_input": True}
    return build_model({"a": spec, "v": spec}, {"a": (1, 8, 8), "v": (1, 8, 8)}, 3)


def _backward(method, model, epoch=0):
    ctx = SimpleNamespace(model=model, epoch=epoch, device=CPU)
    method.on_fit_start(ctx)
    gen = torch.Generator().manual_seed(1)
    inputs = {m: torch.randn(6, 1, 8, 8, generator=gen) for m in ("a", "v")}
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    out = model(inputs)
    sum(method.loss_terms(ctx, out, y).values()).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    method.on_before_optimizer_step(ctx)
    return ctx, out, y, before


def test_ogm_scales_only_the_dominant_encoders_conv_kernels():
    model = _resnet_model()
    method = OGMGE(alpha=0.8, ge=False)
    _, out, y, before = _backward(method, model)
    # split logits by hand: feature sizes 8 * width = 16, columns 0:16 and 16:32, bias / 2
    w, b = model.head.weight.detach(), model.head.bias.detach()
    s = {}
    for m, cols in (("a", slice(0, 16)), ("v", slice(16, 32))):
        logits = out.features[m].detach() @ w[:, cols].T + b / 2
        s[m] = float(torch.softmax(logits, 1)[torch.arange(6), y].sum())
    dom, other = ("a", "v") if s["a"] > s["v"] else ("v", "a")
    k = 1.0 - math.tanh(0.8 * s[dom] / s[other])
    assert method.k == pytest.approx({dom: k, other: 1.0}, rel=1e-6)
    n_conv = 0
    for name, p in model.named_parameters():
        if name.startswith(f"encoders.{dom}.") and p.grad.dim() == 4:
            assert torch.allclose(p.grad, k * before[name], rtol=1e-5, atol=0), name
            n_conv += 1
        else:  # other encoder, BatchNorm weights/biases, head: untouched
            assert torch.equal(p.grad, before[name]), name
    assert n_conv == 20  # ResNet-18: stem + 16 block convs + 3 downsample convs


def test_nothing_changes_outside_the_modulation_epochs():
    model = _resnet_model()
    method = OGMGE(ge=True, modulation_starts=2, modulation_ends=3)
    for epoch in (1, 4):
        model.zero_grad(set_to_none=True)
        _, _, _, before = _backward(method, model, epoch=epoch)
        assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters())


class _ConvEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(32, 32, 5)  # 25,600 kernel entries, bias of 32
        self.out_dim = 4


def _big_grad_model(scale_a=3.0, scale_v=0.5):
    encs = nn.ModuleDict({"a": _ConvEncoder(), "v": _ConvEncoder()})
    model = MultimodalModel(encs, ConcatFusion({"a": 4, "v": 4}), 3)
    gen = torch.Generator().manual_seed(0)
    for m, scale in (("a", scale_a), ("v", scale_v)):
        for p in model.encoders[m].parameters():
            p.grad = scale * torch.randn(p.shape, generator=gen) + 1.0
    return model


def test_ge_noise_has_the_original_gradients_std():
    model = _big_grad_model()
    method = OGMGE(alpha=0.8, ge=True, seed=3)
    ctx = SimpleNamespace(model=model, epoch=0, device=CPU)
    method.on_fit_start(ctx)
    before = {n: p.grad.clone() for n, p in model.encoders.named_parameters(prefix="encoders")}
    method.scores = {"a": 6.0, "v": 3.0}
    method.on_before_optimizer_step(ctx)
    k = {"a": 1.0 - math.tanh(1.6), "v": 1.0}
    for m in ("a", "v"):
        g0 = before[f"encoders.{m}.conv.weight"]
        noise = model.encoders[m].conv.weight.grad - k[m] * g0
        std = float(g0.std()) + 1e-8  # std of the ORIGINAL gradient, not of k * g
        # 25,600 draws: the sample std is within ~1% of sigma, the mean within ~0.6% sigma
        assert float(noise.std()) == pytest.approx(std, rel=0.03)
        assert abs(float(noise.mean())) < 0.03 * std
        assert torch.equal(model.encoders[m].conv.bias.grad, before[f"encoders.{m}.conv.bias"])
    # same seed, same noise; the state continues the stream after a reload
    other_model = _big_grad_model()
    other = OGMGE(alpha=0.8, ge=True, seed=3)
    other.on_fit_start(SimpleNamespace(model=other_model, epoch=0, device=CPU))
    other.scores = method.scores
    other.on_before_optimizer_step(SimpleNamespace(model=other_model, epoch=0, device=CPU))
    assert all(torch.equal(p.grad, q.grad) for p, q in
               zip(model.encoders.parameters(), other_model.encoders.parameters()))
    resumed = OGMGE(alpha=0.8, ge=True, seed=3)
    resumed.load_state_dict(method.state_dict())
    resumed.on_fit_start(ctx)
    assert torch.equal(torch.randn(5, generator=resumed.gen), torch.randn(5, generator=method.gen))


def test_conv_only_false_scales_every_encoder_gradient():
    model = _big_grad_model()
    method = OGMGE(alpha=0.8, ge=False, conv_only=False)
    ctx = SimpleNamespace(model=model, epoch=0, device=CPU)
    method.on_fit_start(ctx)
    before = {n: p.grad.clone() for n, p in model.encoders.named_parameters(prefix="encoders")}
    method.scores = {"a": 6.0, "v": 3.0}
    method.on_before_optimizer_step(ctx)
    k_a = 1.0 - math.tanh(1.6)
    for name in ("conv.weight", "conv.bias"):
        assert torch.equal(model.encoders["a"].get_parameter(name).grad,
                           before[f"encoders.a.{name}"] * k_a)
        assert torch.equal(model.encoders["v"].get_parameter(name).grad,
                           before[f"encoders.v.{name}"])


def test_resume_equals_uninterrupted(tiny_raw, tmp_path, resume_check):
    # MLP encoders have no conv kernels: conv_only=False so that GE noise really acts
    raw = _ogm_raw(tiny_raw, conv_only=False, ge=True, seed=5, modulation_ends=2)
    raw["train"]["epochs"] = 4
    rf, wf, _, wc = resume_check(raw, tmp_path, crash_epoch=2)
    assert [r["report"]["ogm_ge"]["modulated"] for r in rf] == [True, True, True, False]
    assert torch.equal(wf["method"]["generator"], wc["method"]["generator"])


def test_cli_end_to_end(tiny_raw, tmp_path, cli_train):
    raw = _ogm_raw(tiny_raw, conv_only=False)
    raw["train"]["epochs"] = 2
    cli_train(raw, tmp_path / "run")
    reports = read_jsonl(tmp_path / "run/reports.jsonl")
    assert [r["epoch"] for r in reports] == [0, 1]
    for r in reports:
        k = r["ogm_ge"]["k_mean"]
        assert set(k) == {"m0", "m1"} and all(0 < v <= 1 for v in k.values())


def test_sum_fusion_uses_unimodal_heads_as_probes(tiny_raw, tmp_path):
    raw = _ogm_raw(tiny_raw, conv_only=False)
    raw["model"].update(fusion="sum", unimodal_heads=True)
    raw["train"]["epochs"] = 1
    train(config_from_dict(raw), run_dir=tmp_path)
    assert set(read_jsonl(tmp_path / "metrics.jsonl")[0]["train"]) == {"ce", "probe_ce", "total"}


def test_refusals(tiny_raw, tmp_path):
    raw = _ogm_raw(tiny_raw)
    raw["model"]["fusion"] = "sum"
    trainer = build_trainer(config_from_dict(raw), tmp_path / "sum")
    with pytest.raises(ValueError, match="no per-modality slice.*unimodal_heads=True"):
        trainer.fit()
    assert not (tmp_path / "sum/metrics.jsonl").exists()
    enc = {"type": "mlp", "hidden": [4]}
    three = build_model({m: enc for m in "avt"}, {m: (3,) for m in "avt"}, 2)
    with pytest.raises(ValueError, match="two-modality rule"):
        OGMGE(rule="release").on_fit_start(SimpleNamespace(model=three, device=CPU))
    one = build_model({"a": enc}, {"a": (3,)}, 2)
    with pytest.raises(ValueError, match="at least 2 modalities"):
        OGMGE().on_fit_start(SimpleNamespace(model=one, device=CPU))
    with pytest.raises(ValueError, match="rule"):
        OGMGE(rule="max")
