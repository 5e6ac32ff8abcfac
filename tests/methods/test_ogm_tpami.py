"""OGM, journal version: the release rule by hand (worked example, tie, OGM+), the warm-up,
which gradients change, resume, CLI, refusals."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mmrelearn.config import ConfigError
from mmrelearn.methods.ogm_ge import OGMGE, ogm_coefficients
from mmrelearn.methods.ogm_tpami import OGMTPAMI, tpami_coefficients
from mmrelearn.models import ConcatFusion, MultimodalModel, build_model
from mmrelearn.train.checkpoint import read_jsonl
from conftest import method_raw  # noqa: E402

CPU = torch.device("cpu")


def _raw(raw, **method):
    return method_raw(raw, "ogm_tpami", **method)


def test_worked_example_and_the_release_rule_by_hand():
    # rho_1 = 30 / 20 = 1.5 > 1, alpha 0.8: k_1 = 1 - tanh(1.2) = 1 - 0.833655 = 0.166345
    k = tpami_coefficients({"a": 30.0, "v": 20.0}, 0.8, "release")
    assert k["a"] == pytest.approx(0.166345, abs=1e-6) and k["v"] == 1.0
    # mirror: rho_1 = 2/3 <= 1, so modality 2 leads with s_2 / s_1 = 1.5
    k = tpami_coefficients({"a": 20.0, "v": 30.0}, 0.8, "release")
    assert k["a"] == 1.0 and k["v"] == pytest.approx(0.166345, abs=1e-6)
    # a tie shrinks modality 2 by 1 - tanh(0.8) = 0.335963 (ogm_ge's CVPR rule: modality 1)
    assert tpami_coefficients({"a": 3.0, "v": 3.0}, 0.8, "release") == pytest.approx(
        {"a": 1.0, "v": 0.335963}, abs=1e-6)
    assert ogm_coefficients({"a": 3.0, "v": 3.0}, 0.8, "release") == pytest.approx(
        {"a": 0.335963, "v": 1.0}, abs=1e-6)
    # OGM+: the other modality x4, the leader x1 (at a tie modality 1 is "the other")
    assert tpami_coefficients({"a": 30.0, "v": 20.0}, 0.8, "release", plus=True) == {
        "a": 1.0, "v": 4.0}
    assert tpami_coefficients({"a": 3.0, "v": 3.0}, 0.8, "release", plus=True) == {
        "a": 4.0, "v": 1.0}
    # K > 2: rho_m = s_m / min s, as ogm_ge's 'min' rule
    s3 = {"a": 6.0, "v": 3.0, "t": 2.0}
    assert tpami_coefficients(s3, 0.8, "min") == pytest.approx(
        {"a": 1 - math.tanh(2.4), "v": 1 - math.tanh(1.2), "t": 1.0})


class _ConvEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)
        self.out_dim = 4


def _model_with_grads():
    model = MultimodalModel(nn.ModuleDict({"a": _ConvEncoder(), "v": _ConvEncoder()}),
                            ConcatFusion({"a": 4, "v": 4}), 3)
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    return model


def _step(method, epoch, scores):
    model = _model_with_grads()
    ctx = SimpleNamespace(model=model, epoch=epoch, device=CPU)
    method.on_fit_start(ctx)
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    method.scores = scores
    method.on_before_optimizer_step(ctx)
    return model, before


def test_warm_up_then_only_the_leaders_conv_kernels_shrink():
    method = OGMTPAMI(ge=False)  # modulation_starts 6, ends 60
    for epoch in (0, 5, 61):
        model, before = _step(method, epoch, {"a": 30.0, "v": 20.0})
        assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters())
    model, before = _step(method, 6, {"a": 30.0, "v": 20.0})
    k = 1 - math.tanh(1.2)
    for name, p in model.named_parameters():
        if name == "encoders.a.conv.weight":
            assert torch.allclose(p.grad, k * before[name])
        else:  # conv biases, the other encoder, the head: untouched
            assert torch.equal(p.grad, before[name]), name


def test_plus_multiplies_the_weaker_modality_by_four():
    method = OGMTPAMI(ge=False, plus=True)
    model, before = _step(method, 6, {"a": 30.0, "v": 20.0})
    assert torch.equal(model.encoders["v"].conv.weight.grad,
                       4.0 * before["encoders.v.conv.weight"])
    assert torch.equal(model.encoders["a"].conv.weight.grad, before["encoders.a.conv.weight"])


def test_ogm_ge_defaults_are_unchanged():
    ge, tp = OGMGE(), OGMTPAMI()
    assert (ge.starts, ge.ends, ge.alpha, ge.ge, ge.conv_only) == (0, 50, 0.8, True, True)
    assert (tp.starts, tp.ends, tp.alpha, tp.ge, tp.conv_only) == (6, 60, 0.8, True, True)
    ge.scores = tp.scores = {"a": 3.0, "v": 3.0}  # a tie: CVPR shrinks a, TPAMI shrinks v
    assert ge.coefficients() == pytest.approx({"a": 1 - math.tanh(0.8), "v": 1.0})
    assert tp.coefficients() == pytest.approx({"a": 1.0, "v": 1 - math.tanh(0.8)})


def test_resume_equals_uninterrupted(tiny_raw, tmp_path, resume_check):
    raw = _raw(tiny_raw, conv_only=False, seed=5, modulation_starts=1, modulation_ends=2)
    raw["train"]["epochs"] = 4
    rf, wf, _, wc = resume_check(raw, tmp_path, crash_epoch=2)
    assert [r["report"]["ogm_tpami"]["modulated"] for r in rf] == [False, True, True, False]
    assert torch.equal(wf["method"]["generator"], wc["method"]["generator"])


def test_cli_end_to_end(tiny_raw, tmp_path, cli_train):
    raw = _raw(tiny_raw, conv_only=False, modulation_starts=1)
    raw["train"]["epochs"] = 2
    cli_train(raw, tmp_path / "run")
    reports = read_jsonl(tmp_path / "run/reports.jsonl")
    assert [r["ogm_tpami"]["modulated"] for r in reports] == [False, True]
    assert all(0 < v <= 1 for r in reports for v in r["ogm_tpami"]["k_mean"].values())


def test_refusals():
    with pytest.raises(ConfigError, match="method.plus"):
        OGMTPAMI(plus=True, rule="min")
    with pytest.raises(ConfigError, match="method.alpha"):
        OGMTPAMI(alpha=-1.0)
    enc = {"type": "mlp", "hidden": [4]}
    three = build_model({m: enc for m in "avt"}, {m: (3,) for m in "avt"}, 2)
    with pytest.raises(ValueError, match="OGM\\+.*two modalities"):
        OGMTPAMI(plus=True).on_fit_start(SimpleNamespace(model=three, device=CPU))
    with pytest.raises(ValueError, match="ogm_tpami.rule='release' is the two-modality rule"):
        OGMTPAMI(rule="release").on_fit_start(SimpleNamespace(model=three, device=CPU))
    OGMTPAMI(conv_only=False).on_fit_start(SimpleNamespace(model=three, device=CPU))  # K > 2
    one = build_model({"a": enc}, {"a": (3,)}, 2)
    with pytest.raises(ValueError, match="ogm_tpami needs at least 2 modalities"):
        OGMTPAMI().on_fit_start(SimpleNamespace(model=one, device=CPU))
    sum_model = build_model({m: enc for m in "av"}, {m: (3,) for m in "av"}, 2, fusion="sum")
    with pytest.raises(ValueError, match="no per-modality slice"):
        OGMTPAMI().on_fit_start(SimpleNamespace(model=sum_model, device=CPU))
