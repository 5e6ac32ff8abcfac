"""Models: encoder shapes, ResNet-18 layout and size, fusion, MultimodalModel, build_model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mmrelearn.models import (ENCODERS, FUSIONS, ConcatFusion, MLPEncoder, ModelOutput,
                              MultimodalModel, ResNet18Encoder, SumFusion, build_model)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- encoders

def test_mlp_shapes_and_layers():
    enc = MLPEncoder((2, 3), hidden=[8, 5], dropout=0.5)
    assert enc.out_dim == 5
    assert enc(torch.randn(4, 2, 3)).shape == (4, 5)
    kinds = [type(m) for m in enc.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout] * 2
    plain = MLPEncoder((6,), hidden=(7,), batchnorm=False)
    assert [type(m) for m in plain.net] == [nn.Linear, nn.ReLU]


@pytest.mark.parametrize("kwargs, name", [
    ({"input_shape": ()}, "input_shape"), ({"input_shape": (3, 0)}, "input_shape"),
    ({"hidden": []}, "hidden"), ({"hidden": [4, -1]}, "hidden"),
    ({"dropout": 1.0}, "dropout"), ({"batchnorm": 1}, "batchnorm")])
def test_mlp_rejects_bad_args(kwargs, name):
    args = {"input_shape": (6,), **kwargs}
    with pytest.raises(ValueError, match=name):
        MLPEncoder(**args)


@pytest.mark.parametrize("shape", [(20, 18), (3, 20, 18), (2, 3, 20, 18)])
def test_resnet_shapes(shape):
    enc = ResNet18Encoder(shape, width=4)
    assert enc.out_dim == 32
    assert enc.conv1.in_channels == (1 if len(shape) == 2 else 3)
    assert enc(torch.randn(2, *shape)).shape == (2, 32)


def test_resnet_small_input_stem():
    enc = ResNet18Encoder((1, 16, 15), width=4, small_input=True)
    assert enc.conv1.kernel_size == (3, 3) and enc.conv1.stride == (1, 1)
    assert isinstance(enc.maxpool, nn.Identity)
    assert enc(torch.randn(3, 1, 16, 15)).shape == (3, 32)
    std = ResNet18Encoder((1, 16, 15), width=4)
    assert std.conv1.kernel_size == (7, 7) and isinstance(std.maxpool, nn.MaxPool2d)


def test_resnet_frame_pooling_is_mean_of_frame_features():
    enc = ResNet18Encoder((3, 3, 16, 16), width=4).eval()  # eval: BN uses running stats
    clip = torch.randn(2, 3, 3, 16, 16)  # (B, T, C, H, W)
    with torch.no_grad():
        pooled = enc(clip)
        per_frame = torch.stack([enc.forward_frames(clip[:, t]) for t in range(3)], dim=1)
    torch.testing.assert_close(pooled, per_frame.mean(dim=1))


def test_resnet_rejects_wrong_channels():
    enc = ResNet18Encoder((3, 16, 16), width=4)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        enc(torch.randn(2, 1, 16, 16))


def test_resnet18_parameter_count_and_torchvision_layout():
    # torchvision resnet18: 11,689,512 params; its fc is Linear(512, 1000):
    # 512 * 1000 + 1000 = 513,000. Without fc: 11,689,512 - 513,000 = 11,176,512.
    enc = ResNet18Encoder((3, 224, 224), width=64)
    assert sum(p.numel() for p in enc.parameters()) == 11_176_512
    sd = enc.state_dict()
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert sd["layer2.0.downsample.1.running_var"].shape == (128,)
    assert sd["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert "layer1.0.downsample.0.weight" not in sd and not any(k.startswith("fc") for k in sd)
    assert torch.all(enc.layer3[1].bn2.weight == 1) and torch.all(enc.layer3[1].bn2.bias == 0)


# ---------------------------------------------------------------- fusion

def test_concat_fusion_order_and_slices():
    fuse = ConcatFusion({"b": 2, "a": 3})
    assert fuse.out_dim == 5 and fuse.slices == {"b": (0, 2), "a": (2, 5)}
    za, zb = torch.randn(4, 3), torch.randn(4, 2)
    out = fuse({"a": za, "b": zb})  # dict order of the input must not matter
    torch.testing.assert_close(out[:, 0:2], zb)
    torch.testing.assert_close(out[:, 2:5], za)


def test_sum_fusion_is_sum_of_projections():
    fuse = SumFusion({"a": 3, "b": 5})
    assert fuse.out_dim == 5 and isinstance(fuse.proj, nn.ModuleDict)
    za, zb = torch.randn(4, 3), torch.randn(4, 5)
    want = za @ fuse.proj["a"].weight.T + fuse.proj["a"].bias \
        + zb @ fuse.proj["b"].weight.T + fuse.proj["b"].bias
    torch.testing.assert_close(fuse({"a": za, "b": zb}), want)
    assert SumFusion({"a": 3, "b": 5}, dim=7).out_dim == 7


def test_fusion_missing_modality():
    with pytest.raises(ValueError, match="'b'"):
        ConcatFusion({"a": 2, "b": 2})({"a": torch.randn(1, 2)})
    assert FUSIONS == {"concat": ConcatFusion, "sum": SumFusion}


# ---------------------------------------------------------------- MultimodalModel

def _two_modality_model(unimodal_heads: bool) -> MultimodalModel:
    encs = nn.ModuleDict({"audio": MLPEncoder((6,), hidden=[4]),
                          "visual": MLPEncoder((2, 3), hidden=[5])})
    return MultimodalModel(encs, ConcatFusion({"audio": 4, "visual": 5}), 3, unimodal_heads)


def test_multimodal_forward_output():
    model = _two_modality_model(unimodal_heads=True)
    inputs = {"audio": torch.randn(8, 6), "visual": torch.randn(8, 2, 3)}
    out = model(inputs)
    assert isinstance(out, ModelOutput) and model.modalities == ["audio", "visual"]
    assert out.logits.shape == (8, 3)
    assert {m: z.shape for m, z in out.features.items()} == {"audio": (8, 4), "visual": (8, 5)}
    assert {m: u.shape for m, u in out.unimodal_logits.items()} == {"audio": (8, 3),
                                                                     "visual": (8, 3)}
    # the fused logits are the head applied to the concatenated features
    fused = torch.cat([out.features["audio"], out.features["visual"]], dim=1)
    torch.testing.assert_close(out.logits, model.head(fused))
    torch.testing.assert_close(out.unimodal_logits["visual"],
                               model.unimodal_heads["visual"](out.features["visual"]))
    model.eval()
    enc = model.encode(inputs)
    torch.testing.assert_close(enc["audio"], model.encoders["audio"](inputs["audio"]))


def test_multimodal_without_heads_and_no_stashed_state():
    model = _two_modality_model(unimodal_heads=False)
    before = set(vars(model))
    out = model({"audio": torch.randn(2, 6), "visual": torch.randn(2, 2, 3)})
    assert model.unimodal_heads is None and out.unimodal_logits is None
    assert set(vars(model)) == before


def test_multimodal_missing_input_names_modality():
    model = _two_modality_model(unimodal_heads=False)
    with pytest.raises(ValueError, match="visual") as err:
        model({"audio": torch.randn(2, 6)})
    assert "audio" in str(err.value)


# ---------------------------------------------------------------- build_model

def test_build_model_three_modalities_sum_fusion():
    model = build_model(
        {"a": {"type": "mlp", "hidden": [4]},
         "v": {"type": "resnet18", "width": 4, "small_input": True},
         "s": {"type": "resnet18", "width": 2}},
        {"a": (5,), "v": (2, 1, 8, 8), "s": (16, 16)}, num_classes=4,
        fusion="sum", fusion_dim=6, unimodal_heads=True)
    assert model.modalities == ["a", "v", "s"] and model.fusion.out_dim == 6
    out = model({"a": torch.randn(3, 5), "v": torch.randn(3, 2, 1, 8, 8),
                 "s": torch.randn(3, 16, 16)})
    assert out.logits.shape == (3, 4)
    assert {m: z.shape[1] for m, z in out.features.items()} == {"a": 4, "v": 32, "s": 16}
    assert set(out.unimodal_logits) == {"a", "v", "s"}
    assert set(ENCODERS) == {"mlp", "resnet18", "lenet", "transformer", "vit"}


def test_build_model_concat_slices_follow_encoders():
    model = build_model({"x": {"type": "mlp", "hidden": [3]}, "y": {"type": "mlp"}},
                        {"x": (2,), "y": (2,)}, num_classes=2)
    assert model.fusion.slices == {"x": (0, 3), "y": (3, 131)}  # mlp default hidden = (128,)


@pytest.mark.parametrize("encoders, shapes, kw, names", [
    ({"a": {"type": "cnn"}}, {"a": (3,)}, {}, ["'a'", "'cnn'", "mlp", "resnet18"]),
    ({"a": {"hidden": [2]}}, {"a": (3,)}, {}, ["'a'", "None", "mlp"]),
    ({"a": {"type": "mlp"}}, {"a": (3,), "b": (3,)}, {}, ["'b'"]),
    ({"a": {"type": "mlp"}, "c": {"type": "mlp"}}, {"a": (3,)}, {}, ["'c'"]),
    ({"a": {"type": "mlp"}}, {"a": (3,)}, {"fusion": "attn"}, ["'attn'", "concat", "sum"]),
    ({"a": {"type": "mlp", "widht": 3}}, {"a": (3,)}, {}, ["'a'", "widht", "hidden", "dropout"]),
    ({"a": {"type": "resnet18", "input_shape": (3,)}}, {"a": (3, 8, 8)}, {}, ["'a'",
                                                                             "input_shape"]),
    ({"a": {"type": "mlp"}}, {"a": (3,)}, {"fusion_dim": 4}, ["fusion_dim", "'concat'"]),
])
def test_build_model_errors_name_the_culprit(encoders, shapes, kw, names):
    with pytest.raises(ValueError) as err:
        build_model(encoders, shapes, num_classes=2, **kw)
    for name in names:
        assert name in str(err.value), (name, str(err.value))
