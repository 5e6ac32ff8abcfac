"""The sequence Transformer encoder: shapes, the trailing-zeros padding rule, presets, errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmrelearn.models import TransformerEncoder, build_model
from mmrelearn.models.transformer import sinusoidal_encoding, valid_lengths

SMALL = {"width": 8, "layers": 1, "heads": 2, "dropout": 0.0}


def _seq(b: int = 3, t: int = 5, f: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, f, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("pool", ["last", "mean", "cls"])
def test_output_shape_for_each_pool(pool):
    enc = TransformerEncoder((5, 4), pool=pool, **SMALL)
    assert enc.out_dim == 8
    assert enc(_seq()).shape == (3, 8)
    assert enc(_seq(t=2)).shape == (3, 8)  # other lengths than input_shape's T
    assert (enc.cls is not None) == (pool == "cls")


def test_valid_lengths_follow_the_trailing_zeros_rule():
    x = _seq(b=4, t=5)
    x[0, 3:] = 0  # two padding steps
    x[1, 1] = 0  # an all-zero step inside the sequence stays valid
    x[2] = 0  # nothing valid
    assert valid_lengths(x).tolist() == [3, 5, 0, 5]


@pytest.mark.parametrize("pool", ["last", "mean", "cls"])
@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "none"])
def test_appended_padding_leaves_features_unchanged(pool, positional):
    torch.manual_seed(0)
    max_len = 9 if positional == "learned" else None
    enc = TransformerEncoder((5, 4), pool=pool, positional=positional, max_len=max_len,
                             **SMALL).eval()
    x = _seq()
    x[0, 3:] = 0  # sample 0 has 3 valid steps, the others 5
    padded = torch.cat([x, torch.zeros(3, 4, 4)], dim=1)  # 4 more padding steps
    with torch.no_grad():
        assert torch.allclose(enc(x), enc(padded), atol=1e-5)
        # the padding inside x is masked too: sample 0 equals its unpadded 3-step version
        assert torch.allclose(enc(x)[:1], enc(x[:1, :3]), atol=1e-5)


def test_last_pool_is_the_last_valid_step_and_mean_the_valid_mean():
    torch.manual_seed(0)
    enc = TransformerEncoder((4, 3), pool="last", positional="none", **SMALL).eval()
    x = _seq(b=1, t=4, f=3)
    x[0, 2:] = 0
    with torch.no_grad():
        h = enc.encoder(enc.proj(x[:, :2]))  # (1, 2, W): the two valid steps alone
        assert torch.allclose(enc(x), h[:, 1], atol=1e-5)
        enc.options["pool"] = "mean"
        assert torch.allclose(enc(x), h.mean(dim=1), atol=1e-5)


@pytest.mark.parametrize("pool", ["last", "mean", "cls"])
def test_no_valid_step_gives_zero_features_not_nan(pool):
    enc = TransformerEncoder((5, 4), pool=pool, **SMALL)
    x = _seq()
    x[1] = 0
    for mode in (enc.train, enc.eval):
        mode()
        z = enc(x)
        assert torch.isfinite(z).all()
        assert torch.equal(z[1], torch.zeros(8)) and z[0].abs().sum() > 0


@pytest.mark.parametrize("pool", ["last", "mean", "cls"])
def test_gradient_reaches_every_parameter(pool):
    enc = TransformerEncoder((5, 4), pool=pool, positional="learned", **SMALL)
    x = _seq()
    x[0, 2:] = 0
    x[2] = 0
    enc(x).square().sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert enc.proj.weight.grad.abs().sum() > 0


def test_conv1_projection_is_the_same_linear_map():
    torch.manual_seed(0)
    lin = TransformerEncoder((5, 4), projection="linear", **SMALL).eval()
    conv = TransformerEncoder((5, 4), projection="conv1", **SMALL).eval()
    state = lin.state_dict()
    state["proj.conv.weight"] = state.pop("proj.weight").unsqueeze(2)  # (W, F) -> (W, F, 1)
    state["proj.conv.bias"] = state.pop("proj.bias")
    conv.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(lin(_seq()), conv(_seq()), atol=1e-6)


def test_sinusoidal_encoding_values():
    pe = sinusoidal_encoding(3, 4)
    t, i = 2, 1  # column 2i = 2: sin(t / 10000^(2i/4)), column 3: cos of the same
    assert pe.shape == (3, 4)
    assert math.isclose(pe[t, 2].item(), math.sin(t / 10000 ** 0.5), rel_tol=1e-5)
    assert math.isclose(pe[t, 3].item(), math.cos(t / 10000 ** 0.5), rel_tol=1e-5)
    assert sinusoidal_encoding(2, 5).shape == (2, 5)  # odd widths too


def test_multibench_mosi_preset():
    enc = TransformerEncoder((50, 20), preset="multibench_mosi")
    assert enc.out_dim == 40  # width 2F: 20 -> 40
    conv = enc.proj.conv
    assert conv.kernel_size == (1,) and conv.bias is None
    assert len(enc.encoder.layers) == 5 and enc.encoder.layers[0].self_attn.num_heads == 5
    assert enc.encoder.layers[0].linear1.out_features == 2048
    assert enc.options["positional"] == "none" and enc.options["pool"] == "last"
    # explicit options override the preset
    assert TransformerEncoder((50, 5), preset="multibench_mosi", layers=1).options["layers"] == 1


def test_ff_defaults_to_four_times_width():
    enc = TransformerEncoder((5, 4), **SMALL)
    assert enc.encoder.layers[0].linear1.out_features == 32


@pytest.mark.parametrize("kwargs, match", [
    ({"pool": "max"}, r"pool must be one of \['last', 'mean', 'cls'\]"),
    ({"projection": "conv3"}, "projection must be one of"),
    ({"positional": "rope"}, "positional must be one of"),
    ({"padding": "lengths"}, "padding must be one of"),
    ({"width": 10, "heads": 4}, "width 10 must be divisible by heads 4"),
    ({"layers": 0}, "layers must be a positive int"),
    ({"dropout": 1.0}, r"dropout must be a float in \[0, 1\)"),
    ({"bias": "yes"}, "bias must be a bool"),
    ({"max_len": 9}, "max_len is only used with positional: learned"),
    ({"preset": "mult"}, "unknown transformer preset 'mult'"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerEncoder((5, 4), **kwargs)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"input_shape must be \(T, F\)"):
        TransformerEncoder((4,))
    enc = TransformerEncoder((5, 4), positional="learned", **SMALL)
    with pytest.raises(ValueError, match=r"expects input \(B, T, 4\)"):
        enc(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="6 steps but only 5 learned positions"):
        enc(torch.randn(2, 6, 4))
    with pytest.raises(ValueError, match="width 41 must be divisible by heads 5"):
        TransformerEncoder((50, 20), preset="multibench_mosi", width=41)


def test_built_from_a_spec():
    model = build_model({"audio": {"type": "transformer", **SMALL},
                         "text": {"type": "transformer", "pool": "cls", **SMALL}},
                        {"audio": (5, 4), "text": (5, 6)}, num_classes=2)
    out = model({"audio": _seq(), "text": _seq(f=6)})
    assert out.logits.shape == (3, 2)
    assert all(isinstance(model.encoders[m], TransformerEncoder) for m in ("audio", "text"))
    with pytest.raises(ValueError, match="does not accept key"):
        build_model({"a": {"type": "transformer", "depth": 2}}, {"a": (5, 4)}, num_classes=2)
    assert isinstance(model.encoders["audio"].encoder, nn.TransformerEncoder)
