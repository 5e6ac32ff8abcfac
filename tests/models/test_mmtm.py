"""MMTM mid-fusion model: shapes, gates, running-average replacement, build_model checks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mmrelearn.models import (ModelOutput, MMTMModel, MultimodalModel, ResNet18Encoder,
                              build_model)
from mmrelearn.models.mmtm import MMTM

W = 2  # stage widths 2, 4, 8, 16: tiny and fast
RES = {"type": "resnet18", "width": W, "small_input": True}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    # tiny convolutions run ~100x slower on 2 busy cores with 2 threads than with 1
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(shapes=((1, 8, 8), (1, 8, 8)), classes=3) -> MMTMModel:
    encs = nn.ModuleDict({m: ResNet18Encoder(s, width=W, small_input=True)
                          for m, s in zip("av", shapes)})
    return MMTMModel(encs, classes)


def _inputs(b=4, shapes=((1, 8, 8), (1, 8, 8))):
    return {m: torch.randn(b, *s) for m, s in zip("av", shapes)}


# ---------------------------------------------------------------- shapes and contract

@pytest.mark.parametrize("shapes", [((1, 8, 8), (1, 8, 8)), ((8, 8), (3, 1, 8, 8)),
                                    ((3, 8, 8), (8, 9))])
def test_shapes_and_contract(shapes):
    model = _model(shapes)
    assert isinstance(model, MultimodalModel) and model.modalities == ["a", "v"]
    assert all(isinstance(e, ResNet18Encoder) for e in model.encoders.values())
    assert model.head is None and set(model.unimodal_heads) == {"a", "v"}
    # one block after each of layer2..4; bottleneck int(2 * (c0 + c1) / 4) = c0 for c0 = c1
    assert len(model.fusion) == 3
    for block, c in zip(model.fusion, (2 * W, 4 * W, 8 * W)):
        assert block.squeeze.in_features == 2 * c and block.squeeze.out_features == c
        assert [g.out_features for g in block.gates] == [c, c]
    x = _inputs(shapes=shapes)
    out = model(x)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (4, 3)
    assert {m: f.shape for m, f in out.features.items()} == {"a": (4, 8 * W), "v": (4, 8 * W)}
    uni = out.unimodal_logits
    torch.testing.assert_close(out.logits, (uni["a"] + uni["v"]) / 2)
    model.eval()
    with torch.no_grad():
        enc, out = model.encode(x), model(x)
    for m in "av":
        torch.testing.assert_close(enc[m], out.features[m])
        torch.testing.assert_close(out.unimodal_logits[m], model.unimodal_heads[m](enc[m]))


def test_encoders_alone_still_run_without_mmtm():
    model = _model().eval()
    x = _inputs()
    with torch.no_grad():
        plain = model.encoders["a"](x["a"])
        fused = model.encode(x)["a"]
        for block in model.fusion:  # gates of exactly 1 everywhere: MMTM is the identity
            for g in block.gates:
                g.weight.zero_()
                g.bias.fill_(100.0)
        identity = model.encode(x)["a"]
    assert plain.shape == (4, 8 * W) and not torch.allclose(plain, fused)
    torch.testing.assert_close(identity, plain)


def test_missing_input_and_bad_rebalance_name():
    model = _model()
    with pytest.raises(ValueError, match="missing input for modality"):
        model({"a": torch.randn(2, 1, 8, 8)})
    with pytest.raises(ValueError, match="rebalance must be one of"):
        model(_inputs(), rebalance="x")


def test_model_refuses_other_encoders():
    encs = nn.ModuleDict({"a": ResNet18Encoder((1, 8, 8), width=W), "b": nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="exactly two ResNet18Encoder"):
        MMTMModel(encs, 3)


# ---------------------------------------------------------------- gates

def test_gates_are_sigmoids_in_0_1_and_scale_option():
    block = MMTM(4, 6)
    x0, x1 = torch.randn(5, 4, 3, 3), torch.randn(5, 6, 2, 2)
    g0, g1 = block.compute_gates(x0, x1)
    assert g0.shape == (5, 4) and g1.shape == (5, 6)
    assert bool(((g0 > 0) & (g0 < 1)).all() and ((g1 > 0) & (g1 < 1)).all())
    # the gate by hand: z = [mean_hw x0; mean_hw x1], e = relu(W z + b), g = sigmoid(W_k e + b_k)
    z = torch.cat([x0.mean(dim=(2, 3)), x1.mean(dim=(2, 3))], dim=1)
    e = torch.relu(z @ block.squeeze.weight.T + block.squeeze.bias)
    torch.testing.assert_close(g1, torch.sigmoid(e @ block.gates[1].weight.T + block.gates[1].bias))
    # forward multiplies every channel by its gate
    y0, y1 = block.eval()(x0, x1)
    torch.testing.assert_close(y0, x0 * g0[:, :, None, None])
    torch.testing.assert_close(y1, x1 * g1[:, :, None, None])
    double = MMTM(4, 6, gate_scale=2.0)
    double.load_state_dict(block.state_dict())
    torch.testing.assert_close(double.compute_gates(x0, x1)[0], 2 * g0)


def test_running_average_is_mean_of_batch_means_in_train_mode_only():
    block = MMTM(2, 3).train()
    xs = [(torch.randn(4, 2, 2, 2), torch.randn(4, 3, 2, 2)) for _ in range(3)]
    means = []
    for x0, x1 in xs:
        g0, g1 = block.compute_gates(x0, x1)
        means.append((g0.mean(0), g1.mean(0)))
        block(x0, x1)
    assert int(block.num_updates) == 3
    torch.testing.assert_close(block.running_gate0, (means[0][0] + means[1][0] + means[2][0]) / 3)
    torch.testing.assert_close(block.running_gate1, (means[0][1] + means[1][1] + means[2][1]) / 3)
    before = block.running_gate0.clone()
    block.eval()(*xs[0])
    assert int(block.num_updates) == 3 and torch.equal(block.running_gate0, before)
    # the model updates them only when the branches train too (not in feature extraction)
    model = _model()
    model.encoders.eval()
    with torch.no_grad():
        model.encode(_inputs())
    assert all(int(b.num_updates) == 0 for b in model.fusion)
    model.train()(_inputs())
    assert all(int(b.num_updates) == 1 for b in model.fusion)
    assert "fusion.0.running_gate0" in model.state_dict()


def test_video_gates_are_per_clip():
    # branch 1 has T = 3 frames per sample: squeeze averages over frames and space, the gate
    # of sample b multiplies each of its frames
    block = MMTM(2, 2).eval()
    x0, x1 = torch.randn(2, 2, 3, 3), torch.randn(2 * 3, 2, 3, 3)
    g0, g1 = block.compute_gates(x0, x1, 1, 3)
    z1 = x1.view(2, 3, 2, 9).mean(dim=(1, 3))
    z = torch.cat([x0.mean(dim=(2, 3)), z1], dim=1)
    e = torch.relu(block.squeeze(z))
    torch.testing.assert_close(g1, torch.sigmoid(block.gates[1](e)))
    _, y1 = block(x0, x1, 1, 3)
    torch.testing.assert_close(y1.view(2, 3, 2, 3, 3), x1.view(2, 3, 2, 3, 3)
                               * g1[:, None, :, None, None])


# ---------------------------------------------------------------- re-balancing

@pytest.mark.parametrize("branch", [0, 1])
def test_rebalance_replaces_only_the_chosen_branch_gates(branch):
    block = MMTM(3, 3).eval()  # eval: no update, the running gates stay as set below
    block.running_gate0.copy_(torch.tensor([0.1, 0.2, 0.3]))
    block.running_gate1.copy_(torch.tensor([0.7, 0.8, 0.9]))
    x0, x1 = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    gates = block.compute_gates(x0, x1)
    out = block(x0, x1, rebalance=branch)
    other = 1 - branch
    xs = (x0, x1)
    avg = block.running_gate(branch)
    torch.testing.assert_close(out[branch], xs[branch] * avg[None, :, None, None])
    torch.testing.assert_close(out[other], xs[other] * gates[other][:, :, None, None])


def test_rebalanced_gate_is_detached_in_the_model():
    model = _model().train()
    x, y = _inputs(), torch.tensor([0, 1, 2, 0])
    model(x)  # one update so the running gates are not zero
    out = model(x, rebalance="a")
    nn.functional.cross_entropy(out.logits, y).backward()
    for block in model.fusion:
        assert block.gates[0].weight.grad is None  # branch a's gate no longer acts
        assert block.gates[1].weight.grad.abs().sum() > 0
        assert block.squeeze.weight.grad.abs().sum() > 0  # still feeds branch v's gate
    assert all(p.grad is not None for p in model.encoders["a"].parameters())


def test_rebalance_changes_branch_a_features_only_through_its_gates():
    model = _model().eval()
    x = _inputs()
    with torch.no_grad():
        for block in model.fusion:  # running gates = 1: a re-balanced branch is ungated
            block.running_gate0.fill_(1.0)
        out = model(x, rebalance="a")
        e = model.encoders["a"]
        plain = e(x["a"])  # branch a alone, no MMTM at all
    torch.testing.assert_close(out.features["a"], plain)


def test_bypass_parameters_are_shared_layer_and_own_gate():
    model = _model()
    ids = {m: {id(p) for p in model.bypass_parameters(m)} for m in "av"}
    for block in model.fusion:
        shared = {id(p) for p in block.squeeze.parameters()}
        assert shared <= ids["a"] and shared <= ids["v"]
        assert {id(p) for p in block.gates[0].parameters()} <= ids["a"] - ids["v"]
        assert {id(p) for p in block.gates[1].parameters()} <= ids["v"] - ids["a"]
    assert len(ids["a"]) == 3 * 4  # (squeeze, gate) x (weight, bias) x 3 blocks


# ---------------------------------------------------------------- build_model

def test_build_model_mmtm():
    model = build_model({"a": RES, "v": RES}, {"a": (1, 8, 8), "v": (8, 8)}, 5, fusion="mmtm")
    assert isinstance(model, MMTMModel) and model.modalities == ["a", "v"]
    assert model(_inputs(shapes=((1, 8, 8), (8, 8)))).logits.shape == (4, 5)


@pytest.mark.parametrize("encoders, shapes", [
    ({"a": RES, "v": RES, "t": RES}, {"a": (1, 8, 8), "v": (1, 8, 8), "t": (1, 8, 8)}),
    ({"a": RES, "v": {"type": "mlp"}}, {"a": (1, 8, 8), "v": (5,)}),
    ({"a": {"type": "mlp"}, "v": {"type": "mlp"}}, {"a": (5,), "v": (5,)}),
    ({"a": RES}, {"a": (1, 8, 8)})])
def test_build_model_mmtm_refuses_other_encoders(encoders, shapes):
    with pytest.raises(ValueError, match="'mmtm' needs exactly two resnet18 encoders"):
        build_model(encoders, shapes, 3, fusion="mmtm")


def test_build_model_lists_mmtm_among_valid_fusions():
    with pytest.raises(ValueError, match=r"valid fusions: \['concat', 'mbt', 'mmtm', 'sum'\]"):
        build_model({"a": RES}, {"a": (1, 8, 8)}, 3, fusion="attn")
    with pytest.raises(ValueError, match="fusion_dim"):
        build_model({"a": RES, "v": RES}, {"a": (1, 8, 8), "v": (1, 8, 8)}, 3, fusion="mmtm",
                    fusion_dim=4)
