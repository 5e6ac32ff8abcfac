"""MBT and its ViT streams: shapes, the bottleneck as the only cross-modal path, the classifier,
the block against torchvision's formula, config checks, and ImageNet-layout weight loading from
files the tests write (timm and torchvision keys, positional interpolation, 1-channel patches).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmrelearn.config import ConfigError, config_from_dict
from mmrelearn.models import MBTModel, ViTEncoder, build_model
from mmrelearn.models.vit_pretrained import resize_pos_embed

VIT = {"type": "vit", "width": 8, "layers": 4, "heads": 2, "patch_size": 4}
SHAPES = {"img": (1, 8, 8), "spec": (8, 12)}  # an image (C, H, W) and a spectrogram (H, W)


def _model(fusion_layer: int = 2, bottlenecks: int = 3, **vit) -> MBTModel:
    torch.manual_seed(0)
    spec = {**VIT, **vit}
    return build_model({"img": spec, "spec": spec}, SHAPES, 5, fusion="mbt",
                       mbt={"fusion_layer": fusion_layer, "bottlenecks": bottlenecks}).eval()


def _inputs(seed: int = 0, b: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"img": torch.randn(b, 1, 8, 8, generator=g), "spec": torch.randn(b, 8, 12, generator=g)}


def test_shapes_and_parameter_ownership():
    model = _model()
    out = model(_inputs())
    assert out.logits.shape == (3, 5)
    assert {m: z.shape for m, z in out.features.items()} == {"img": (3, 8), "spec": (3, 8)}
    assert {m: lg.shape for m, lg in out.unimodal_logits.items()} == {"img": (3, 5), "spec": (3, 5)}
    assert model.encoders["img"].grid == (2, 2) and model.encoders["spec"].grid == (2, 3)
    trace = model.layer_tokens(_inputs())
    assert len(trace) == 4
    assert {k: v.shape for k, v in trace[-1].items()} == {
        "img": (3, 5, 8), "spec": (3, 7, 8), "bottleneck": (3, 3, 8)}
    outside = sorted(n for n, _ in model.named_parameters() if not n.startswith("encoders."))
    assert outside == ["fusion.bottleneck", "unimodal_heads.img.bias", "unimodal_heads.img.weight",
                       "unimodal_heads.spec.bias", "unimodal_heads.spec.weight"]
    assert model.head is None


def test_the_bottleneck_is_the_only_path_between_modalities():
    model = _model(fusion_layer=2)
    x, y = _inputs(0), _inputs(0)
    y["img"] = torch.randn(3, 1, 8, 8)  # only modality img changes
    with torch.no_grad():
        tx, ty = model.layer_tokens(x), model.layer_tokens(y)
    for i in (0, 1):  # uni-modal layers: spec's tokens and the bottleneck are untouched
        assert torch.equal(tx[i]["spec"], ty[i]["spec"]), i
        assert torch.equal(tx[i]["bottleneck"], ty[i]["bottleneck"]), i
        assert not torch.allclose(tx[i]["img"], ty[i]["img"])
    for i in (2, 3):  # fused layers: img reaches spec through the bottleneck
        assert not torch.allclose(tx[i]["bottleneck"], ty[i]["bottleneck"]), i
    assert not torch.allclose(tx[3]["spec"], ty[3]["spec"])  # via layer 2's bottleneck
    # layer 2's spec tokens read the bottleneck as it was after layer 1 (unchanged)
    assert torch.equal(tx[2]["spec"], ty[2]["spec"])


def test_without_fused_layers_each_modality_is_its_stream_alone():
    model = _model(fusion_layer=4)
    x, y = _inputs(0), _inputs(0)
    y["img"] = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        fx, fy = model.encode(x), model.encode(y)
        assert torch.equal(fx["spec"], fy["spec"])
        assert torch.allclose(fx["spec"], model.encoders["spec"](x["spec"]), atol=1e-6)


def test_logits_are_the_mean_of_the_cls_heads():
    model = _model()
    x = _inputs()
    with torch.no_grad():
        out, trace = model(x), model.layer_tokens(x)
        for m in ("img", "spec"):
            cls = model.encoders[m].norm(trace[-1][m])[:, 0]  # the CLS output
            assert torch.allclose(out.features[m], cls, atol=1e-6)
            assert torch.allclose(out.unimodal_logits[m], model.unimodal_heads[m](cls), atol=1e-6)
    mean = (out.unimodal_logits["img"] + out.unimodal_logits["spec"]) / 2
    assert torch.allclose(out.logits, mean, atol=1e-6)


def test_mean_pool_reads_the_patch_tokens():
    model = _model(pool="mean")
    x = _inputs()
    with torch.no_grad():
        out, trace = model(x), model.layer_tokens(x)
    pooled = model.encoders["spec"].norm(trace[-1]["spec"])[:, 1:].mean(dim=1)
    assert torch.allclose(out.features["spec"], pooled, atol=1e-6)


def test_block_matches_torchvision_encoder_block_formula():
    """Same weights in nn.MultiheadAttention (torchvision's block): same output, so the
    torchvision in_proj_weight -> qkv mapping keeps q, k, v and the head split."""
    torch.manual_seed(0)
    enc = ViTEncoder((3, 8, 8), width=8, layers=1, heads=2, patch_size=4).eval()
    blk = enc.blocks[0]
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(blk.attn.qkv.weight)
        mha.in_proj_bias.copy_(blk.attn.qkv.bias)
        mha.out_proj.weight.copy_(blk.attn.proj.weight)
        mha.out_proj.bias.copy_(blk.attn.proj.bias)
        x = torch.randn(2, 5, 8)
        h = blk.norm1(x)
        h = mha(h, h, h, need_weights=False)[0] + x
        ref = h + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(h))))
        assert torch.allclose(blk(x), ref, atol=1e-6)


@pytest.mark.parametrize("kw, match", [
    ({"width": 16, "heads": 2}, "one width and one number of layers"),
    ({"layers": 2}, "one width and one number of layers"),
])
def test_streams_must_share_width_and_depth(kw, match):
    with pytest.raises(ValueError, match=match):
        build_model({"img": VIT, "spec": {**VIT, **kw}}, SHAPES, 5, fusion="mbt")


def test_build_and_config_errors():
    with pytest.raises(ValueError, match="fusion_layer must be an int in \\[0, 4\\]"):
        build_model({"img": VIT, "spec": VIT}, SHAPES, 5, fusion="mbt", mbt={"fusion_layer": 5})
    with pytest.raises(ValueError, match="bottlenecks must be a positive int"):
        build_model({"img": VIT, "spec": VIT}, SHAPES, 5, fusion="mbt", mbt={"bottlenecks": 0})
    with pytest.raises(ValueError, match="'mbt' needs vit encoders"):
        build_model({"img": VIT, "spec": {"type": "mlp"}}, SHAPES, 5, fusion="mbt")
    with pytest.raises(ValueError, match="only used by 'mbt' fusion"):
        build_model({"img": VIT, "spec": VIT}, SHAPES, 5, mbt={"bottlenecks": 2})
    with pytest.raises(ValueError, match="not supported"):
        ViTEncoder((2, 1, 8, 8))
    with pytest.raises(ValueError, match="token grid"):
        _model()({"img": torch.randn(1, 1, 4, 8), "spec": torch.randn(1, 8, 12)})
    with pytest.raises(ValueError, match="unknown vit preset"):
        ViTEncoder((8, 8), preset="vit_huge")
    with pytest.raises(ValueError, match="only used with pretrained"):
        ViTEncoder((8, 8), patch_size=4, pos_interpolation="bilinear")
    raw = {"data": {"name": "synthetic"}, "model": {"fusion": "mbt", "encoders": {"m0": VIT}}}
    cfg = config_from_dict(raw)
    assert cfg.model.mbt == {"bottlenecks": 4, "fusion_layer": 8}  # MBT's ViT-Base setting
    raw["model"]["mbt"] = {"bottleneck": 2}
    with pytest.raises(ConfigError, match="model.mbt: unknown key.*bottleneck"):
        config_from_dict(raw)
    raw["model"].update(fusion="concat", mbt={"bottlenecks": 2})
    with pytest.raises(ConfigError, match="only used with model.fusion: mbt"):
        config_from_dict(raw)


def test_vit_base_preset():
    enc = ViTEncoder((3, 224, 224), preset="vit_base", layers=1)  # one block keeps it light
    assert enc.out_dim == 768 and enc.grid == (14, 14) and enc.num_tokens == 197
    assert enc.blocks[0].attn.heads == 12 and enc.blocks[0].mlp.fc1.out_features == 3072
    assert enc.patch_embed.proj.kernel_size == (16, 16)


# ---------------------------------------------------------------- pretrained weights

def _timm_file(tmp_path, grid: int = 2, width: int = 8, layers: int = 2):
    """A timm-layout ViT state dict of random values (patch 4, RGB, grid x grid, a head)."""
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) for k, v in
             ViTEncoder((3, 4 * grid, 4 * grid), width=width, layers=layers, heads=2,
                        patch_size=4).state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.randn(10, width), torch.randn(10)
    torch.save(state, tmp_path / "timm.pth")
    return tmp_path / "timm.pth", state


def _to_torchvision(state: dict, legacy_mlp: bool = False) -> dict:
    """The same weights under torchvision's ``vit_b_16`` key names (written out by hand)."""
    fc1, fc2 = ("linear_1", "linear_2") if legacy_mlp else ("0", "3")
    out = {"class_token": state["cls_token"], "conv_proj.weight": state["patch_embed.proj.weight"],
           "conv_proj.bias": state["patch_embed.proj.bias"],
           "encoder.pos_embedding": state["pos_embed"], "encoder.ln.weight": state["norm.weight"],
           "encoder.ln.bias": state["norm.bias"], "heads.head.weight": state["head.weight"],
           "heads.head.bias": state["head.bias"]}
    for i in range(2):
        p, b = f"encoder.layers.encoder_layer_{i}.", f"blocks.{i}."
        for t in ("weight", "bias"):
            out[f"{p}ln_1.{t}"] = state[f"{b}norm1.{t}"]
            out[f"{p}ln_2.{t}"] = state[f"{b}norm2.{t}"]
            out[f"{p}self_attention.out_proj.{t}"] = state[f"{b}attn.proj.{t}"]
            out[f"{p}mlp.{fc1}.{t}"] = state[f"{b}mlp.fc1.{t}"]
            out[f"{p}mlp.{fc2}.{t}"] = state[f"{b}mlp.fc2.{t}"]
        out[f"{p}self_attention.in_proj_weight"] = state[f"{b}attn.qkv.weight"]
        out[f"{p}self_attention.in_proj_bias"] = state[f"{b}attn.qkv.bias"]
    return out


def _stream(shape, path, **kw) -> ViTEncoder:
    return ViTEncoder(shape, width=8, layers=2, heads=2, patch_size=4, pretrained=str(path), **kw)


def _same_except(enc: ViTEncoder, state: dict, skip: tuple[str, ...]) -> None:
    for k, v in enc.state_dict().items():
        if k not in skip:
            assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("layout", ["timm", "torchvision", "torchvision_legacy"])
def test_loads_both_layouts_exactly(tmp_path, layout):
    path, state = _timm_file(tmp_path)
    if layout != "timm":
        path = tmp_path / "tv.pth"
        torch.save({"model": _to_torchvision(state, layout.endswith("legacy"))}, path)
    enc = _stream((3, 8, 8), path)  # same grid and channels: every tensor as in the file
    _same_except(enc, state, ())


def test_pos_interpolation_and_one_channel_patches(tmp_path):
    path, state = _timm_file(tmp_path, grid=2)
    enc = _stream((12, 16), path)  # a spectrogram: one channel, grid 3 x 4
    _same_except(enc, state, ("pos_embed", "patch_embed.proj.weight"))
    w = enc.patch_embed.proj.weight
    assert w.shape == (8, 1, 4, 4) and torch.equal(w, state["patch_embed.proj.weight"].sum(1, True))
    pos, file_pos = enc.pos_embed.detach(), state["pos_embed"]
    assert pos.shape == (1, 1 + 12, 8) and torch.equal(pos[:, 0], file_pos[:, 0])  # CLS kept
    grid = file_pos[:, 1:].reshape(1, 2, 2, 8).permute(0, 3, 1, 2)  # (1, W, 2, 2)
    want = F.interpolate(grid, size=(3, 4), mode="bicubic", align_corners=False)
    assert torch.allclose(pos[:, 1:], want.permute(0, 2, 3, 1).reshape(1, 12, 8), atol=1e-6)
    bil = _stream((12, 16), path, pos_interpolation="bilinear").pos_embed.detach()
    want = F.interpolate(grid, size=(3, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(bil[:, 1:], want.permute(0, 2, 3, 1).reshape(1, 12, 8), atol=1e-6)
    const = torch.full((1, 5, 3), 0.5)  # a constant grid stays constant; CLS untouched
    const[0, 0] = 7.0
    out = resize_pos_embed(const, (3, 5))
    assert out.shape == (1, 16, 3) and torch.allclose(out[0, 1:], torch.full((15, 3), 0.5))
    assert torch.equal(out[0, 0], const[0, 0])


def test_the_same_weights_go_into_every_stream(tmp_path):
    path, state = _timm_file(tmp_path)
    spec = {**VIT, "layers": 2, "pretrained": str(path)}
    model = build_model({"img": spec, "spec": spec}, {"img": (3, 8, 8), "spec": (8, 8)}, 5,
                        fusion="mbt", mbt={"fusion_layer": 1})
    a, s = model.encoders["img"].state_dict(), model.encoders["spec"].state_dict()
    for k in a:
        if k != "patch_embed.proj.weight":
            assert torch.equal(a[k], s[k]) and torch.equal(a[k], state[k]), k


def test_weight_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth not found"):
        _stream((3, 8, 8), tmp_path / "absent.pth")
    path, state = _timm_file(tmp_path)

    def write(s):
        torch.save(s, tmp_path / "bad.pth")
        return tmp_path / "bad.pth"

    with pytest.raises(ValueError, match="keys unknown to the timm.*dist_token"):
        _stream((3, 8, 8), write({**state, "dist_token": torch.zeros(1, 1, 8)}))
    with pytest.raises(ValueError, match="unexpected \\['blocks.0.extra.weight'\\]"):
        _stream((3, 8, 8), write({**state, "blocks.0.extra.weight": torch.zeros(1)}))
    tv = _to_torchvision(state)
    with pytest.raises(ValueError, match="keys unknown to the torchvision.*encoder.extra"):
        _stream((3, 8, 8), write({**tv, "encoder.extra": torch.zeros(1)}))
    with pytest.raises(ValueError, match="missing \\['norm.weight'\\]"):
        _stream((3, 8, 8), write({k: v for k, v in state.items() if k != "norm.weight"}))
    with pytest.raises(ValueError, match="neither a timm ViT"):
        _stream((3, 8, 8), write({"conv1.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match="has 2 blocks, the stream has 3"):
        ViTEncoder((3, 8, 8), width=8, layers=3, heads=2, patch_size=4, pretrained=str(path))
    with pytest.raises(ValueError, match="patch_embed.proj.weight has shape .*needs"):
        ViTEncoder((3, 8, 8), width=8, layers=2, heads=2, patch_size=2, pretrained=str(path))
    with pytest.raises(ValueError, match="cls_token has shape \\(1, 1, 8\\).*\\(1, 1, 16\\)"):
        ViTEncoder((3, 8, 8), width=16, layers=2, heads=2, patch_size=4, pretrained=str(path))
    with pytest.raises(ValueError, match="square grid"):
        _stream((3, 8, 8), write({**state, "pos_embed": torch.zeros(1, 4, 8)}))


def test_avmnist_mbt_config_is_the_narrow_table3_setting():
    from pathlib import Path

    from mmrelearn.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "avmnist_mbt_dnr.yaml")
    assert cfg.model.fusion == "mbt" and cfg.model.mbt == {"bottlenecks": 4, "fusion_layer": 2}
    for enc in cfg.model.encoders.values():
        assert (enc["type"], enc["width"], enc["layers"], enc["pretrained"]) == ("vit", 64, 4, None)
    assert cfg.method["name"] == "dnr" and (cfg.method["lam"], cfg.method["every"]) == (3.0, 20)
