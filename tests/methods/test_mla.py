"""MLA: the worked example by hand (projection and entropy weights), the projected head gradient
in training_step, each of a batch's K steps changing only its encoder and the shared head,
fixed and dynamic fusion, resume, the CLI (train and eval), refusals."""
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
from mmrelearn.methods.mla import MLA, default_weights, entropy_weights, gs_alpha, owm_update
from mmrelearn.models import ConcatFusion, MultimodalModel, build_model
from mmrelearn.train import build_trainer
from mmrelearn.train.checkpoint import read_jsonl
from conftest import fit_ctx as _fit_ctx, method_raw, identity_encoder  # noqa: E402


T = torch.tensor


def _raw(raw, **method):
    return method_raw(raw, "mla", **method)


def test_worked_example_by_hand():
    # d = 2, P = I, exp_count = 1, b = 0: alpha = 0.1; r = (1, 0): k = (1, 0)^T, r k = 1;
    # P = I - diag(1, 0) / 1.1 = diag(0.090909, 1); ||P||_F = sqrt(0.0082645 + 1) = 1.004124;
    # P = diag(0.090536, 0.995893)
    assert gs_alpha(0, 10) == pytest.approx(0.1)
    P = owm_update(torch.eye(2, dtype=torch.float64), T([1.0, 0.0], dtype=torch.float64), 0.1)
    assert torch.allclose(P, torch.diag(T([0.090536, 0.995893], dtype=torch.float64)),
                          atol=1e-6)
    # the gradient [[1, 1]] becomes [[0.090536, 0.995893]]
    assert torch.allclose(T([[1.0, 1.0]], dtype=torch.float64) @ P.T,
                          T([[0.090536, 0.995893]], dtype=torch.float64), atol=1e-6)
    # next update, b = 5 of N_b = 10, r = (0, 1): alpha = 0.1^1.5 = 0.031623;
    # k = (0, 0.995893)^T, r k = 0.995893; P_22 = 0.995893 - 0.991803 / 1.027516 = 0.030650;
    # normalised P = diag(0.947195, 0.320659)
    alpha = gs_alpha(5, 10)
    assert alpha == pytest.approx(0.031623, abs=1e-6)
    P = owm_update(P, T([0.0, 1.0], dtype=torch.float64), alpha)
    assert torch.allclose(P, torch.diag(T([0.947195, 0.320659], dtype=torch.float64)),
                          atol=1e-6)
    # entropy fusion: softmax(u_a) = (0.9, 0.1), e_a = 0.325083; softmax(u_v) = (0.5, 0.5),
    # e_v = 0.693147; w_a = exp(0.368064) / (exp(0.368064) + 1) = 1.444935 / 2.444935 =
    # 0.590991, w_v = 0.409009
    u_a, u_v = T([[math.log(9.0), 0.0]]), T([[0.0, 0.0]])
    w = entropy_weights([u_a, u_v])  # (K, B, 1)
    assert w.flatten().tolist() == pytest.approx([0.590991, 0.409009], abs=1e-6)


def test_release_denominator_differs_off_the_diagonal():
    # P = I, r = (1, 1), alpha = 0.1, k = (1, 1)^T.
    # scalar: r k = 2, P = I - ones / 2.1 = [[0.523810, -0.476190], ...], ||P||_F = 1.001134:
    # [[0.523217, -0.475650], [-0.475650, 0.523217]]
    # release (elementwise alpha + k r = 1.1 everywhere): P = I - ones / 1.1 =
    # [[0.090909, -0.909091], ...], ||P||_F = 1.292061: [[0.070360, -0.703598], ...]
    eye, r = torch.eye(2, dtype=torch.float64), T([1.0, 1.0], dtype=torch.float64)
    scalar = owm_update(eye, r, 0.1)
    assert torch.allclose(scalar, T([[0.523217, -0.475650], [-0.475650, 0.523217]],
                                    dtype=torch.float64), atol=1e-6)
    release = owm_update(eye, r, 0.1, "release_outer")
    assert torch.allclose(release, T([[0.070360, -0.703598], [-0.703598, 0.070360]],
                                     dtype=torch.float64), atol=1e-6)
    # on the worked example (diagonal k k^T and k r) both agree
    e1 = T([1.0, 0.0], dtype=torch.float64)
    assert torch.allclose(owm_update(eye, e1, 0.1), owm_update(eye, e1, 0.1, "release_outer"))


def _identity_model(method):
    model = MultimodalModel(nn.ModuleDict({"a": identity_encoder(2), "v": identity_encoder(2)}),
                            ConcatFusion({"a": 2, "v": 2}), 2)
    model.method_modules = nn.ModuleDict(method.extra_modules(model, 2))
    with torch.no_grad():
        model.method_modules["head"].weight.copy_(T([[1.0, -1.0], [0.5, 2.0]]))
        model.method_modules["head"].bias.copy_(T([0.1, -0.1]))
    return model


@pytest.mark.parametrize("project", [True, False])
def test_training_step_projects_the_shared_heads_weight_gradient(project):
    method = MLA(gs_projection=project)
    model = _identity_model(method)
    head = model.method_modules["head"]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # H stays put: plain grads comparable
    seen = []
    original = opt.step
    opt.step = lambda: (seen.append((head.weight.grad.clone(), head.bias.grad.clone())),
                        original())
    ctx = _fit_ctx(model=model, optimizer=opt, train_loader=range(10))
    x = {"a": T([[1.0, 0.0], [1.0, 0.0]]), "v": T([[0.0, 2.0], [0.0, 0.0]])}
    y = T([0, 1])
    method.on_train_epoch_start(ctx)
    terms = method.training_step(ctx, x, y)
    assert set(terms) == {"ce_a", "ce_v"} and method.exp_count == 2
    plain = [torch.autograd.grad(F.cross_entropy(head(x[m]), y), [head.weight, head.bias])
             for m in ("a", "v")]
    # step 1 (a): exp_count = 0, never projected
    assert torch.allclose(seen[0][0], plain[0][0]) and torch.allclose(seen[0][1], plain[0][1])
    # step 2 (v): b = 0, alpha = 0.1, r = mean z_v = (0, 1): k = (0, 1)^T, r k = 1;
    # P = diag(1, 1 - 1 / 1.1) = diag(1, 0.090909) / 1.004124 = diag(0.995893, 0.090536)
    P = torch.diag(T([0.995893, 0.090536]))
    expected = plain[1][0] @ P.T if project else plain[1][0]
    assert torch.allclose(seen[1][0], expected, atol=1e-6)
    assert torch.allclose(seen[1][1], plain[1][1])  # the bias gradient is not projected
    state = method.state_dict()
    assert state["exp_count"] == 2
    if project:
        assert torch.allclose(state["P"], P, atol=1e-6)
    else:
        assert torch.equal(state["P"], torch.eye(2))
    assert all(p.grad is None for p in model.parameters())  # cleared at batch end


def _step_spy(trainer):
    """Record, for each optimizer step, which groups of parameters changed."""
    model, opt = trainer.model, trainer.optimizer
    groups = {"m0": model.encoders["m0"], "m1": model.encoders["m1"],
              "head": model.method_modules["head"], "fused": model.head}
    changed = []
    original = opt.step

    def step():
        before = {g: [p.detach().clone() for p in mod.parameters()] for g, mod in groups.items()}
        original()
        changed.append({g for g, mod in groups.items()
                        if any(not torch.equal(b, p) for b, p in zip(before[g],
                                                                      mod.parameters()))})

    opt.step = step
    return changed


@pytest.mark.parametrize("carry", [False, True])
def test_each_step_changes_only_the_stepped_encoder_and_the_head(tiny_raw, tmp_path, carry):
    raw = _raw(tiny_raw, release_momentum_carry=carry)
    raw["optim"].update(momentum=0.9, weight_decay=1e-3)
    trainer = build_trainer(config_from_dict(raw), tmp_path)
    method, ctx = trainer.method, trainer.ctx
    changed = _step_spy(trainer)
    method.on_fit_start(ctx)
    method.on_train_epoch_start(ctx)
    trainer.model.train()
    for i, (x, y) in enumerate(trainer.loaders["train"]):
        method.training_step(ctx, x, y)
        if i == 2:
            break
    if not carry:  # the fused head is never used, never stepped
        assert changed == [{"m0", "head"}, {"m1", "head"}] * 3
    else:  # the release: m0 moves again by momentum and weight decay in m1's step
        assert changed == [{"m0", "head"}, {"m0", "m1", "head"}] * 3


def test_fixed_and_dynamic_fusion():
    method = MLA()
    model = _identity_model(method)
    head = model.method_modules["head"]
    x = {"a": T([[1.0, 0.0], [0.0, 3.0]]), "v": T([[2.0, 1.0], [0.0, 0.0]])}
    u_a, u_v = head(x["a"]), head(x["v"])
    with torch.no_grad():
        assert torch.allclose(method.predict(model, x), 0.5 * u_a + 0.5 * u_v)
        weighted = MLA(weights=[0.2, 0.8]).predict(model, x)
        assert torch.allclose(weighted, 0.2 * u_a + 0.8 * u_v)
        # per sample: each row weighted by its own entropies
        dyn = MLA(fusion="dynamic").predict(model, x)
        for i in range(2):
            w = entropy_weights([u_a[i:i + 1], u_v[i:i + 1]])
            assert torch.allclose(dyn[i], w[0, 0] * u_a[i] + w[1, 0] * u_v[i])
        # the release's batch entropy: one weight per batch, so a sample's prediction
        # changes with its batch-mates; per sample it does not
        rel = MLA(fusion="dynamic", entropy="release_batch")
        alone = {m: v[:1] for m, v in x.items()}
        assert not torch.allclose(rel.predict(model, x)[0], rel.predict(model, alone)[0])
        assert torch.allclose(dyn[0], MLA(fusion="dynamic").predict(model, alone)[0])


def test_three_modalities():
    # the release's 0.35 / 0.25 / 0.40 in encoder order (a, v, t); four or more: 1/K
    assert default_weights(3) == [0.35, 0.25, 0.40] and default_weights(4) == [0.25] * 4
    enc = {"type": "mlp", "hidden": [4]}
    model = build_model({m: enc for m in "avt"}, {m: (3,) for m in "avt"}, 2)
    method = MLA()
    model.method_modules = nn.ModuleDict(method.extra_modules(model, 2))
    ctx = _fit_ctx(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                   train_loader=range(4))
    method.on_fit_start(ctx)
    method.on_train_epoch_start(ctx)
    x = {m: torch.randn(5, 3, generator=torch.Generator().manual_seed(i))
         for i, m in enumerate("avt")}
    terms = method.training_step(ctx, x, T([0, 1, 0, 1, 1]))
    assert set(terms) == {"ce_a", "ce_v", "ce_t"} and method.exp_count == 3
    with torch.no_grad():
        u = method.unimodal_logits(model, x)
        assert torch.allclose(method.predict(model, x),
                              0.35 * u["a"] + 0.25 * u["v"] + 0.40 * u["t"])


def test_resume_equals_uninterrupted(tiny_raw, tmp_path, resume_check):
    raw = _raw(tiny_raw)
    raw["train"]["epochs"] = 3
    _, full, _, _ = resume_check(raw, tmp_path, crash_epoch=2)
    assert full["method"]["exp_count"] == 3 * 4 * 2  # epochs x batches x modalities
    assert "method_modules.head.weight" in full["model"]


def test_cli_train_and_eval(tiny_raw, tmp_path, cli_train, capsys):
    raw = _raw(tiny_raw, fusion="dynamic")
    raw["train"]["epochs"] = 2
    run = cli_train(raw, tmp_path / "run")
    assert set(read_jsonl(run / "metrics.jsonl")[0]["train"]) == {"ce_m0", "ce_m1", "total"}
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0  # restores the shared head from best.pt
    assert json.loads(capsys.readouterr().out)["val"] == summary["val"]


def test_refusals(tiny_raw, tmp_path, refuses_one_modality):
    for key, bad in (("gs_projection", 1), ("gs_denominator", "outer"), ("fusion", "mean"),
                     ("entropy", "batch"), ("release_momentum_carry", "yes"),
                     ("weights", "xyz"), ("weights", []), ("weights", [0.5, -1]),
                     ("weights", [0, 0])):
        with pytest.raises(ConfigError, match=f"method.{key}"):
            MLA(**{key: bad})
    with pytest.raises(ConfigError, match="method.weights.*dynamic"):
        MLA(fusion="dynamic", weights=[0.5, 0.5])
    raw = _raw(tiny_raw, weights=[0.2, 0.3, 0.5])
    trainer = build_trainer(config_from_dict(raw), tmp_path / "w")
    with pytest.raises(ValueError, match="3 values.*2 modalities"):
        trainer.fit()
    assert not (tmp_path / "w/metrics.jsonl").exists()
    mid = SimpleNamespace(head=None, encoders={})  # MMTM, MBT: fused inside the encoders
    with pytest.raises(ValueError, match="fuses inside its encoders"):
        MLA().extra_modules(mid, 3)
    raw = _raw(tiny_raw)
    raw["model"]["encoders"]["m1"]["hidden"] = [8]
    with pytest.raises(ValueError, match=r"mla needs one head shared by every modality.*"
                                         r"\{'m0': 16, 'm1': 8\}"):
        build_trainer(config_from_dict(raw), tmp_path / "dims")
    raw["model"]["encoders"]["m1"]["hidden"] = [16]
    refuses_one_modality(raw, tmp_path / "one")  # edits raw: last
