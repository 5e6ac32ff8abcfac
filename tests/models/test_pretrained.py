"""ImageNet initialisation from a local torchvision-layout file the tests write."""
from __future__ import annotations

import pytest
import torch

from mmrelearn.models import ResNet18Encoder, build_model
from mmrelearn.models.pretrained import adapt_first_conv


def _torchvision_file(tmp_path, wrap=True, prefix="module.", drop=None):
    """A resnet18 state dict in torchvision's layout (with fc), random values, saved."""
    torch.manual_seed(0)
    rgb = ResNet18Encoder((3, 32, 32), width=64)
    state = {k: (0.1 * torch.randn_like(v) if v.is_floating_point() else v)
             for k, v in rgb.state_dict().items()}
    for k in state:  # valid BatchNorm statistics
        if k.endswith("running_var"):
            state[k] = state[k].abs() + 0.5
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    if drop:
        del state[drop]
    state = {prefix + k: v for k, v in state.items()}
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save({"state_dict": state} if wrap else state, path)
    plain = {k[len(prefix):]: v for k, v in state.items()}
    return path, plain


def test_adapt_first_conv_exact():
    w = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).view(2, 3, 1, 1)  # rows 0,1,2 / 3,4,5
    assert adapt_first_conv(w, 1).flatten().tolist() == [3.0, 12.0]
    assert adapt_first_conv(w, 2).view(2, 2).tolist() == [[1.0, 1.0], [4.0, 4.0]]
    assert torch.equal(adapt_first_conv(w, 3), w)
    with pytest.raises(ValueError, match="RGB kernels"):
        adapt_first_conv(torch.zeros(2, 1, 3, 3), 1)


def test_rgb_load_copies_every_tensor_and_drops_fc(tmp_path):
    path, plain = _torchvision_file(tmp_path)
    enc = ResNet18Encoder((3, 32, 32), width=64, pretrained=str(path))
    own = enc.state_dict()
    assert set(own) == set(plain) - {"fc.weight", "fc.bias"}
    assert all(torch.equal(own[k], plain[k]) for k in own)


def test_one_channel_encoder_matches_rgb_on_grey_input(tmp_path):
    path, plain = _torchvision_file(tmp_path, wrap=False, prefix="")
    grey = ResNet18Encoder((32, 32), width=64, pretrained=str(path)).eval()
    rgb = ResNet18Encoder((3, 32, 32), width=64, pretrained=str(path)).eval()
    assert torch.equal(grey.conv1.weight, plain["conv1.weight"].sum(dim=1, keepdim=True))
    x = torch.rand(2, 32, 32)
    with torch.no_grad():
        a, b = grey(x), rgb(x.unsqueeze(1).expand(2, 3, 32, 32))
    assert b.abs().max() > 0.1  # a non-trivial response
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_flow_encoder_gets_mean_kernels(tmp_path):
    path, plain = _torchvision_file(tmp_path)
    flow = ResNet18Encoder((2, 2, 32, 32), width=64, pretrained=str(path))
    mean = plain["conv1.weight"].mean(dim=1, keepdim=True)
    assert torch.equal(flow.conv1.weight, mean.repeat(1, 2, 1, 1))
    assert torch.equal(flow.layer4[1].conv2.weight, plain["layer4.1.conv2.weight"])


def test_build_model_passes_pretrained(tmp_path):
    path, plain = _torchvision_file(tmp_path)
    model = build_model({"a": {"type": "resnet18", "pretrained": str(path)},
                         "v": {"type": "resnet18", "width": 4}},
                        {"a": (32, 32), "v": (3, 16, 16)}, num_classes=3)
    assert torch.equal(model.encoders["a"].layer1[0].conv1.weight, plain["layer1.0.conv1.weight"])


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        ResNet18Encoder((32, 32), pretrained=str(tmp_path / "nothere.pth"))


def test_mismatched_keys_are_listed(tmp_path):
    path, _ = _torchvision_file(tmp_path, drop="layer4.1.bn2.weight")
    with pytest.raises(ValueError, match=r"missing \['layer4.1.bn2.weight'\]"):
        ResNet18Encoder((3, 32, 32), pretrained=str(path))


@pytest.mark.parametrize("kwargs", [{"width": 32}, {"small_input": True}])
def test_shape_mismatch_names_key(tmp_path, kwargs):
    path, _ = _torchvision_file(tmp_path)
    with pytest.raises(ValueError, match=r"has shape .* needs"):
        ResNet18Encoder((3, 32, 32), pretrained=str(path), **kwargs)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="mapping of parameter names"):
        ResNet18Encoder((3, 32, 32), pretrained=str(path))
    path.write_text("not a torch file")
    with pytest.raises(ValueError, match="cannot be read"):
        ResNet18Encoder((3, 32, 32), pretrained=str(path))
