"""PMR: prototype logits, PCE, the weaker-modality rule, the momentum update, gradients, resume."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mmrelearn.config import config_from_dict
from mmrelearn.methods.pmr import PMR, pce_coefficients, prototype_logits, prototype_scores
from mmrelearn.models import ModelOutput
from mmrelearn.train import build_trainer
from mmrelearn.train.checkpoint import read_jsonl


def _pmr_raw(raw, **method):
    raw["method"] = {"name": "pmr", **method}
    raw["train"]["monitor_purity"] = False
    return raw


def test_prototype_logits_and_pce_by_hand():
    z = torch.tensor([[0.0, 1.0], [3.0, 4.0]])
    protos = torch.tensor([[0.0, 0.0], [0.0, 4.0], [3.0, 0.0]])
    # row 0: distances 1, 3, sqrt(9 + 1); row 1: 5, 3, 4
    expected = torch.tensor([[-1.0, -3.0, -math.sqrt(10.0)], [-5.0, -3.0, -4.0]])
    logits = prototype_logits(z, protos)
    assert torch.allclose(logits, expected)
    y = torch.tensor([0, 1])
    ce0 = 1.0 + math.log(math.exp(-1) + math.exp(-3) + math.exp(-math.sqrt(10)))
    ce1 = 3.0 + math.log(math.exp(-5) + math.exp(-3) + math.exp(-4))
    pce = torch.nn.functional.cross_entropy(logits, y)
    assert float(pce) == pytest.approx((ce0 + ce1) / 2, rel=1e-6)


def test_scores_rho_and_the_weaker_modality():
    y = torch.tensor([0, 0])
    a = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])  # p[y] = 3/4 twice
    v = torch.zeros(2, 2)  # p[y] = 1/2 twice
    s = prototype_scores({"a": a, "v": v}, y)
    assert s["a"] == pytest.approx(1.5) and s["v"] == pytest.approx(1.0)
    # rho = s_a / s_v = 1.5 > 1: v is weaker; release: alpha, paper: gamma = rho - 1 = 0.5
    assert pce_coefficients(s, 2.0, "release") == {"a": 0.0, "v": 2.0}
    assert pce_coefficients(s, 2.0, "paper") == pytest.approx({"a": 0.0, "v": 0.5})
    # rho < 1: a is weaker; beta = 1/rho - 1, clipped at 1 (s_v / s_a = 5 -> 4 -> 1)
    assert pce_coefficients({"a": 0.2, "v": 1.0}, 1.0, "paper") == pytest.approx(
        {"a": 1.0, "v": 0.0})
    assert pce_coefficients({"a": 0.8, "v": 1.0}, 1.0, "paper") == pytest.approx(
        {"a": 1.0 / 0.8 - 1.0, "v": 0.0})
    # rho = 1: nobody is weaker
    assert pce_coefficients({"a": 1.0, "v": 1.0}, 1.0, "release") == {"a": 0.0, "v": 0.0}
    # K = 3: every modality is compared with the best one
    s3 = {"a": 2.0, "v": 1.0, "t": 1.6}
    assert pce_coefficients(s3, 3.0, "release") == {"a": 0.0, "v": 3.0, "t": 3.0}
    assert pce_coefficients(s3, 3.0, "paper") == pytest.approx({"a": 0.0, "v": 1.0, "t": 0.25})


def _fixed_output():
    # one-dimensional features, two classes, prototypes 0 and 2 for both modalities
    feats = {"a": torch.tensor([[0.5], [1.5]]), "v": torch.tensor([[1.0], [1.0]])}
    return ModelOutput(logits=torch.zeros(2, 2), features=feats), torch.tensor([0, 1])


@pytest.mark.parametrize("form", ["release", "paper"])
def test_loss_terms_by_hand(form):
    method = PMR(alpha=2.0, form=form, entropy_epochs=1, entropy_weight=0.1)
    method.prototypes = {m: torch.tensor([[0.0], [2.0]]) for m in ("a", "v")}
    output, y = _fixed_output()
    terms = method.loss_terms(SimpleNamespace(epoch=0), output, y)
    sig = 1.0 / (1.0 + math.exp(-1.0))  # a: logits (-0.5, -1.5) / (-1.5, -0.5): p[y] = sigma(1)
    rho = 2 * sig / 1.0  # v: logits (-1, -1): p[y] = 1/2 twice
    assert terms["ce"] == pytest.approx(math.log(2.0))
    pce_v = math.log(2.0)
    coef = 2.0 if form == "release" else rho - 1.0
    assert float(terms["pce"]) == pytest.approx(coef * pce_v, rel=1e-6)
    if form == "paper":  # entropy of the dominant modality a, maximised with weight 0.1
        h = -(sig * math.log(sig) + (1 - sig) * math.log(1 - sig))
        assert float(terms["entropy"]) == pytest.approx(-0.1 * h, rel=1e-6)
        after = method.loss_terms(SimpleNamespace(epoch=1), output, y)  # past E_r = 1
        assert float(after["entropy"]) == 0.0
    else:
        assert "entropy" not in terms
    # outside the modulation epochs only CE acts
    late = PMR(alpha=2.0, form=form, modulation_ends=0)
    late.prototypes = method.prototypes
    assert float(late.loss_terms(SimpleNamespace(epoch=1), output, y)["pce"]) == 0.0


class _Identity(nn.Module):
    """Encoders that return their input; encode checks it runs in eval mode."""

    def __init__(self):
        super().__init__()
        self.encoders = nn.ModuleDict({"a": nn.Identity(), "v": nn.Identity()})

    def encode(self, inputs):
        assert not self.training
        return {m: inputs[m] for m in self.encoders}


def _proto_ctx(batches, epoch):
    return SimpleNamespace(model=_Identity().train(), num_classes=3, epoch=epoch,
                           device=torch.device("cpu"), train_loader=batches)


@pytest.mark.parametrize("n_batches,fraction,n_used", [
    (25, 0.1, 2), (5, 0.1, 1), (10, 0.2, 2), (100, 0.29, 29), (3, 1.0, 3)])
def test_prototype_batches_are_floor_of_the_fraction_at_least_one(n_batches, fraction, n_used):
    # batch i holds one class-0 sample with features (i, -i): the prototype is the mean of
    # 0 .. n_used - 1, i.e. (n_used - 1) / 2
    batches = [({"a": torch.tensor([[float(i)]]), "v": torch.tensor([[-float(i)]])},
                torch.tensor([0])) for i in range(n_batches)]
    method = PMR(proto_fraction=fraction)
    method.on_train_epoch_start(_proto_ctx(batches, epoch=0))
    mean = (n_used - 1) / 2
    assert float(method.prototypes["a"][0, 0]) == pytest.approx(mean)
    assert float(method.prototypes["v"][0, 0]) == pytest.approx(-mean)


def test_prototypes_momentum_from_epoch_two_and_absent_class_exact():
    big = torch.full((1, 2), 1e6)
    batches = [({"a": torch.tensor([[1.0, 0.0], [3.0, 0.0]]),
                 "v": torch.tensor([[0.0, 2.0], [0.0, 4.0]])}, torch.tensor([0, 0])),
               ({"a": torch.tensor([[0.0, 5.0]]), "v": torch.tensor([[1.0, 1.0]])},
                torch.tensor([1]))]
    batches += [({"a": big, "v": big}, torch.tensor([2]))] * 8  # never read: 10 batches, 20%
    method = PMR(momentum=0.2, proto_fraction=0.2)  # floor(2.0) = 2 batches
    ctx = _proto_ctx(batches, epoch=0)
    method.on_train_epoch_start(ctx)
    assert ctx.model.training  # mode restored
    # first refresh: plain class means; class 2 was not seen -> zero (and a warning)
    means_a = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    means_v = torch.tensor([[0.0, 3.0], [1.0, 1.0]])
    assert torch.equal(method.prototypes["a"], torch.cat([means_a, torch.zeros(1, 2)]))
    assert torch.equal(method.prototypes["v"], torch.cat([means_v, torch.zeros(1, 2)]))
    old = {"a": torch.tensor([[10.0, 10.0], [20.0, 20.0], [7.0, 7.0]]), "v": torch.zeros(3, 2)}
    # the refresh at the start of epoch 1 (after epoch 0): no momentum, the plain means;
    # absent class 2 keeps its old prototype
    method.prototypes = dict(old)
    method.on_train_epoch_start(_proto_ctx(batches, epoch=1))
    assert torch.equal(method.prototypes["a"], torch.cat([means_a, old["a"][2:]]))
    assert torch.equal(method.prototypes["v"], torch.cat([means_v, old["v"][2:]]))
    # from epoch 2 on: c = 0.8 c_new + 0.2 c_old; absent class 2 keeps its old prototype
    for epoch in (2, 3):
        method.prototypes = dict(old)
        method.on_train_epoch_start(_proto_ctx(batches, epoch=epoch))
        expected_a = torch.tensor([[0.8 * 2 + 0.2 * 10, 0.2 * 10],
                                   [0.2 * 20, 0.8 * 5 + 0.2 * 20], [7.0, 7.0]])
        assert torch.allclose(method.prototypes["a"], expected_a)
        assert torch.allclose(method.prototypes["v"],
                              torch.tensor([[0, 2.4], [0.8, 0.8], [0, 0]]))
    state = method.state_dict()
    other = PMR()
    other.load_state_dict(state)
    assert all(torch.equal(other.prototypes[m], method.prototypes[m]) for m in ("a", "v"))


def test_pce_gradient_reaches_only_the_weaker_encoder(tiny_raw, tmp_path):
    trainer = build_trainer(config_from_dict(_pmr_raw(tiny_raw)), tmp_path)
    model, method, ctx = trainer.model, trainer.method, trainer.ctx
    method.on_fit_start(ctx)
    method.on_train_epoch_start(ctx)
    inputs, y = next(iter(trainer.loaders["diag_train"]))
    output = model(inputs)
    terms = method.loss_terms(ctx, output, y)
    scores = {m: float(torch.softmax(prototype_logits(z.detach(), method.prototypes[m]), 1)
                       .gather(1, y[:, None]).sum()) for m, z in output.features.items()}
    assert scores["m0"] > scores["m1"]  # m0 is the well separated modality, m1 the weaker
    model.zero_grad(set_to_none=True)
    terms["pce"].backward()
    for p in model.encoders["m1"].parameters():
        assert p.grad is not None
    assert any(float(p.grad.abs().sum()) > 0 for p in model.encoders["m1"].parameters())
    for p in [*model.encoders["m0"].parameters(), *model.head.parameters()]:
        assert p.grad is None or float(p.grad.abs().sum()) == 0.0


def test_resume_equals_uninterrupted(tiny_raw, tmp_path, resume_check):
    raw = _pmr_raw(tiny_raw, momentum=0.5, form="paper", entropy_epochs=2)
    raw["train"]["epochs"] = 4
    _, wf, _, wc = resume_check(raw, tmp_path, crash_epoch=2)
    for m, p in wf["method"]["prototypes"].items():
        assert torch.equal(p, wc["method"]["prototypes"][m])


def test_cli_end_to_end(tiny_raw, tmp_path, cli_train):
    raw = _pmr_raw(tiny_raw, form="paper", entropy_epochs=1)
    raw["train"]["epochs"] = 2
    cli_train(raw, tmp_path / "run")
    records = read_jsonl(tmp_path / "run/metrics.jsonl")
    assert set(records[0]["train"]) == {"ce", "pce", "entropy", "total"}


def test_refuses_a_single_modality(tiny_raw, tmp_path, refuses_one_modality):
    refuses_one_modality(_pmr_raw(tiny_raw), tmp_path)
    with pytest.raises(ValueError, match="form"):
        PMR(form="other")


def test_prototypes_see_every_class_on_class_sorted_splits(tiny_raw, tmp_path):
    """The training split is stored sorted by class; the prototype batches must still cover
    every class (they come from the shuffled loader, as in the authors' release)."""
    from mmrelearn.config import config_from_dict
    from mmrelearn.train import build_trainer

    tiny_raw["method"] = {"name": "pmr", "proto_fraction": 0.25}
    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path)
    trainer.method.on_train_epoch_start(trainer.ctx)
    for protos in trainer.method.prototypes.values():
        assert bool((protos.abs().sum(1) > 0).all())
