"""AGM: coefficients and Shapley split by hand, gradient scaling, clipping, BatchNorm, resume."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmrelearn.methods.agm import AGM, ScaleGrad, agm_coefficients, shapley_values
from mmrelearn.models import ConcatFusion, MultimodalModel, build_model
from mmrelearn.train.checkpoint import read_jsonl

CPU = torch.device("cpu")
E = math.exp


def _agm_raw(raw, **method):
    raw["method"] = {"name": "agm", **method}
    raw["train"]["monitor_purity"] = False
    return raw


def test_coefficients_by_hand_two_modalities():
    # ratio_a = exp(s_v - s_a) = exp(0.7); opt_a = exp(S_v - S_a) = exp(0.1); v mirrored
    k = agm_coefficients({"a": 0.5, "v": 1.2}, {"a": 0.8, "v": 0.9}, 1.5)
    assert k["a"] == pytest.approx(E(1.5 * (E(0.1) - E(0.7))))
    assert k["v"] == pytest.approx(E(1.5 * (E(-0.1) - E(-0.7))))
    # cap 10: opt_a - ratio_a = exp(5) - 1 = 147.4 -> 10
    k = agm_coefficients({"a": 0.0, "v": 0.0}, {"a": 0.0, "v": 5.0}, 1.5)
    assert k["a"] == pytest.approx(E(15.0)) and k["v"] == pytest.approx(E(1.5 * (E(-5) - 1)))


def test_coefficients_by_hand_three_modalities():
    # mean s = 2: ratio_m = exp(3/2 (2 - s_m)) = exp(1.5), 1, exp(-1.5); opt = 1 (equal means)
    k = agm_coefficients({"a": 1.0, "v": 2.0, "t": 3.0}, {"a": 1.0, "v": 1.0, "t": 1.0}, 0.5)
    assert k == pytest.approx({"a": E(0.5 * (1 - E(1.5))), "v": 1.0,
                               "t": E(0.5 * (1 - E(-1.5)))})
    # cap 7: opt_a = exp(3/2 * (3 - 0)) = exp(4.5) = 90, ratio 1 -> min(89, 7) = 7
    k = agm_coefficients({m: 1.0 for m in "avt"}, {"a": 0.0, "v": 0.0, "t": 9.0}, 0.5)
    assert k["a"] == pytest.approx(E(3.5)) and k["t"] == pytest.approx(E(0.5 * (E(-9) - 1)))


def test_shapley_values_by_hand():
    v2 = {frozenset("a"): torch.tensor(3.0), frozenset("v"): torch.tensor(5.0),
          frozenset("av"): torch.tensor(11.0)}
    phi = shapley_values(v2, ["a", "v"])
    # m_a = (total - f(0, v) + f(a, 0)) / 2 = (11 - 5 + 3) / 2
    assert float(phi["a"]) == 4.5 and float(phi["v"]) == 6.5
    vals = {"a": 1, "v": 2, "t": 4, "av": 10, "at": 20, "vt": 40, "avt": 100}
    v3 = {frozenset(k): torch.tensor(float(x)) for k, x in vals.items()}
    phi = shapley_values(v3, ["a", "v", "t"])
    # weights |S|!(K-|S|-1)!/K!: 1/3 alone, 1/6 with one other, 1/3 with both others
    expected = {"a": 1 / 3 * 1 + 1 / 6 * (10 - 2) + 1 / 6 * (20 - 4) + 1 / 3 * (100 - 40),
                "v": 1 / 3 * 2 + 1 / 6 * (10 - 1) + 1 / 6 * (40 - 4) + 1 / 3 * (100 - 20),
                "t": 1 / 3 * 4 + 1 / 6 * (20 - 1) + 1 / 6 * (40 - 2) + 1 / 3 * (100 - 10)}
    assert {m: float(p) for m, p in phi.items()} == pytest.approx(expected)
    assert sum(expected.values()) == pytest.approx(100.0)


def _mlp_model(mods, seed=0):
    torch.manual_seed(seed)
    enc = {"type": "mlp", "hidden": [8]}  # Linear -> BatchNorm1d -> ReLU
    return build_model({m: enc for m in mods}, {m: (5,) for m in mods}, 3)


def _inputs(mods, n=8):
    gen = torch.Generator().manual_seed(1)
    return ({m: torch.randn(n, 5, generator=gen) for m in mods},
            torch.arange(n) % 3)


@pytest.mark.parametrize("mods", [("a", "v"), ("a", "v", "t")])
def test_forward_decomposition_sums_to_total(mods):
    model = _mlp_model(mods).train()
    inputs, _ = _inputs(mods)
    ref = copy.deepcopy(model)
    total = ref(inputs).logits  # train mode, one BatchNorm update
    method = AGM()
    ctx = SimpleNamespace(model=model, epoch=0, device=CPU)
    method.on_fit_start(ctx)
    out = method.forward(ctx, inputs)
    assert model.training  # mode restored after the eval-mode masked passes
    assert torch.allclose(out.logits, total, atol=1e-5)
    assert torch.allclose(sum(method.parts.values()), total, atol=1e-5)
    if len(mods) == 2:  # m_a = (total - f(0, v) + f(a, 0)) / 2 with eval-mode masked passes
        ref.eval()
        zero = {m: torch.zeros_like(x) for m, x in inputs.items()}
        f_a0 = ref({"a": inputs["a"], "v": zero["v"]}).logits
        f_0v = ref({"a": zero["a"], "v": inputs["v"]}).logits
        assert torch.allclose(method.parts["a"], (total - f_0v + f_a0) / 2, atol=1e-6)
        assert torch.allclose(method.parts["v"], (total - f_a0 + f_0v) / 2, atol=1e-6)
    # BatchNorm running stats: exactly one (train-mode) update, none from the masked passes
    for (name, b1), b2 in zip(model.named_buffers(), ref.buffers()):
        assert torch.equal(b1, b2), name


def test_loss_terms_scores_coefficients_and_running_means_by_hand():
    method = AGM(alpha=1.5, modulation_ends=1)
    y = torch.tensor([0, 0])
    # a: p[y] = 3/4 twice -> s_a = -log(3/4); v: p[y] = e^-100 / (1 + e^-100) -> clipped 1e-8
    parts = {"a": torch.tensor([[math.log(3.0), 0.0]] * 2),
             "v": torch.tensor([[-100.0, 0.0]] * 2)}
    s_a, s_v = -math.log(0.75), -math.log(1e-8)
    method.running = {"a": 0.0, "v": 0.0}
    method.parts = parts
    terms = method.loss_terms(SimpleNamespace(epoch=0), None, y)
    # step 1: opt = exp(0 - 0) = 1
    assert method.k["a"] == pytest.approx(E(1.5 * min(1 - E(s_v - s_a), 10)))
    assert method.k["v"] == pytest.approx(E(1.5 * min(1 - E(s_a - s_v), 10)))
    assert method.k["v"] == pytest.approx(E(1.5))  # v far behind: 1 - exp(s_a - s_v) ~ 1
    assert method.running == pytest.approx({"a": s_a, "v": s_v}) and method.steps == 1
    summed = parts["a"] + parts["v"]
    assert float(terms["ce"]) == pytest.approx(float(F.cross_entropy(summed, y)))
    # step 2 with swapped scores: opt from the step-1 means, then the means average
    method.parts = {"a": parts["v"], "v": parts["a"]}
    method.loss_terms(SimpleNamespace(epoch=1), None, y)
    assert method.k["a"] == pytest.approx(E(1.5 * min(E(s_v - s_a) - E(s_a - s_v), 10)))
    assert method.running == pytest.approx({"a": (s_a + s_v) / 2, "v": (s_v + s_a) / 2})
    # outside the modulation epochs: k = 1, the running means still move
    method.loss_terms(SimpleNamespace(epoch=2), None, y)
    assert method.k == {"a": 1.0, "v": 1.0} and method.steps == 3
    assert method.running["a"] == pytest.approx((s_a + 2 * s_v) / 3)


def test_scale_grad_is_identity_forward_and_scales_backward():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = ScaleGrad.apply(x, 2.5)
    assert torch.equal(y, x.detach())
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([2.5, 5.0, 7.5]))


class _LinearEncoder(nn.Module):
    """Bias-free linear map: z(0) = 0, so m_a = W_a z_a + b / 2 depends on encoder a only."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 4, bias=False)
        self.out_dim = 4

    def forward(self, x):
        return self.lin(x)


def test_encoder_gradients_are_scaled_by_exactly_k():
    torch.manual_seed(0)
    encs = nn.ModuleDict({"a": _LinearEncoder(), "v": _LinearEncoder()})
    model = MultimodalModel(encs, ConcatFusion({"a": 4, "v": 4}), 3)
    inputs, y = _inputs(("a", "v"))
    grads, ks = {}, {}
    for alpha in (1.5, 0.0):  # alpha = 0 forces k = 1
        net = copy.deepcopy(model)
        method = AGM(alpha=alpha, clip=False)
        ctx = SimpleNamespace(model=net, epoch=0, device=CPU)
        method.on_fit_start(ctx)
        out = method.forward(ctx, inputs)
        method.loss_terms(ctx, out, y)["ce"].backward()
        grads[alpha] = {n: p.grad.clone() for n, p in net.named_parameters()}
        ks[alpha] = method.k
    k = ks[1.5]
    assert ks[0.0] == {"a": 1.0, "v": 1.0} and abs(k["a"] - 1) > 0.01 and abs(k["v"] - 1) > 0.01
    g, g1 = grads[1.5], grads[0.0]
    for m in ("a", "v"):
        assert torch.allclose(g[f"encoders.{m}.lin.weight"], k[m] * g1[f"encoders.{m}.lin.weight"],
                              rtol=1e-5, atol=1e-7)
    w, w1 = g["head.weight"], g1["head.weight"]
    assert torch.allclose(w[:, :4], k["a"] * w1[:, :4], rtol=1e-5, atol=1e-7)
    assert torch.allclose(w[:, 4:], k["v"] * w1[:, 4:], rtol=1e-5, atol=1e-7)
    assert torch.allclose(g["head.bias"], (k["a"] + k["v"]) / 2 * g1["head.bias"], atol=1e-7)


def test_clip_only_when_a_head_gradient_entry_leaves_unit_interval():
    model = _mlp_model(("a", "v"))
    ctx = SimpleNamespace(model=model, epoch=0, device=CPU)

    def set_grads(head_value):
        for p in model.parameters():
            p.grad = torch.full_like(p, 10.0)  # global norm far above 1
        model.head.weight.grad = torch.full_like(model.head.weight, 0.5)
        model.head.weight.grad[0, 0] = head_value

    def norm():
        return float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm())

    for value in (1.0, -1.0):  # on the boundary: inside [-1, 1], no clipping
        set_grads(value)
        before = norm()
        AGM().on_before_optimizer_step(ctx)
        assert norm() == before
    for value in (1.5, -1.01):
        set_grads(value)
        AGM().on_before_optimizer_step(ctx)
        assert norm() == pytest.approx(1.0, abs=1e-5)
        set_grads(value)
        before = norm()
        AGM(clip=False).on_before_optimizer_step(ctx)
        assert norm() == before


def test_resume_equals_uninterrupted(tiny_raw, tmp_path, resume_check):
    raw = _agm_raw(tiny_raw)
    raw["train"]["epochs"] = 4
    _, wf, _, wc = resume_check(raw, tmp_path, crash_epoch=2)
    assert wf["method"] == wc["method"] and wf["method"]["steps"] == 4 * 4  # 120 / 32 -> 4


def test_cli_end_to_end(tiny_raw, tmp_path, cli_train):
    raw = _agm_raw(tiny_raw)
    raw["train"]["epochs"] = 2
    cli_train(raw, tmp_path / "run")
    reports = read_jsonl(tmp_path / "run/reports.jsonl")
    assert [r["epoch"] for r in reports] == [0, 1]
    assert set(reports[-1]["agm"]["k_mean"]) == {"m0", "m1"}


def test_refuses_a_single_modality(tiny_raw, tmp_path, refuses_one_modality):
    refuses_one_modality(_agm_raw(tiny_raw), tmp_path)
