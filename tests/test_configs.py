"""Every shipped config loads and trains for an epoch on CPU.

Configs of datasets the user downloads (CREMA-D, Kinetics-Sounds, UCF-101, MOSI/MOSEI) run on
tiny files in the same formats, written by the test, with narrow encoders and small inputs; avdigits
and avmnist configs run on the real FSDD recordings when ../shared/datasets/fsdd is present.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mmrelearn.config import load_config
from mmrelearn.models import ResNet18Encoder
from mmrelearn.train import train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
FSDD = ROOT.parent / "shared" / "datasets" / "fsdd"
#: the paper's lambda and H (Sec. 4.2) for its datasets' full-size configs.
PAPER = {"cremad": (3.0, 20), "kinetics_sounds": (7.0, 20), "ucf101": (7.0, 20)}
SMALL_AUDIO = "{preset: crema_d, sample_rate: 8000, duration: 0.25, n_fft: 64, hop_length: 32}"


def _data_name(path: Path) -> str:
    return yaml.safe_load(path.read_text())["data"]["name"]


def _weights(tmp_path: Path) -> Path:
    """A torchvision-layout resnet18 state dict (random values) standing in for ImageNet's."""
    state = ResNet18Encoder((3, 32, 32)).state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / "resnet18.pth")
    return tmp_path / "resnet18.pth"


def _affect_pickle(tmp_path: Path, name: str) -> Path:
    """A tiny MultiBench-layout MOSI/MOSEI pickle: 4 steps, both sentiment signs per split."""
    import pickle

    dims = {"vision": 20, "audio": 5, "text": 300} if name == "mosi" else \
        {"vision": 35, "audio": 74, "text": 300}
    rng = np.random.default_rng(0)
    data = {}
    for split, n in (("train", 8), ("valid", 4), ("test", 4)):
        data[split] = {m: rng.normal(size=(n, 4, d)).astype(np.float32) for m, d in dims.items()}
        data[split]["labels"] = np.linspace(-2.5, 2.5, n).reshape(n, 1)
        data[split]["id"] = np.arange(n)
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(pickle.dumps(data))
    return path


def _tiny_overrides(name: str, tmp_path: Path) -> list[str]:
    """Point a config at tiny media of its format and shrink it to seconds on a CPU."""
    import mediafiles

    if name in ("mosi", "mosei"):
        return [f"data.path={_affect_pickle(tmp_path, name)}"]
    if name not in ("avdigits", "avmnist", *PAPER):
        return []
    if name in ("avdigits", "avmnist"):
        if not FSDD.is_dir():
            pytest.skip(f"the FSDD recordings are not at {FSDD}")
        return [f"data.root={FSDD}"]
    if name == "ucf101":
        weights = _weights(tmp_path)
        (tmp_path / "ucf").mkdir()
        return [f"data.root={mediafiles.make_ucf_tree(tmp_path / 'ucf')}", "data.image_size=8",
                "data.frames=2", "data.val_fraction=0.5", f"model.encoders.rgb.pretrained={weights}",
                f"model.encoders.flow.pretrained={weights}"]
    pytest.importorskip("av")
    common = [f"data.cache={tmp_path / 'cache'}", "data.image_size=16", "data.progress=false",
              "model.encoders.audio.width=4", "model.encoders.visual.width=4"]
    if name == "cremad":
        raw = mediafiles.make_cremad_raw(tmp_path / "raw")
        return [*common, f"data.raw={raw}", f"data.audio={SMALL_AUDIO}", "data.split_by=group"]
    raw = mediafiles.make_ks_raw(tmp_path / "raw")
    lines = [f"videos/{stem}.mp4,{label}" for stem, label in mediafiles.KS_CLIPS]
    for k, (stem, label) in enumerate(mediafiles.KS_CLIPS[::2]):  # a third clip per class
        mediafiles.write_mp4(raw / "videos" / f"{stem[0]}3.mp4", k)
        lines.append(f"videos/{stem[0]}3.mp4,{label}")
    (raw / "nine.csv").write_text("\n".join(lines) + "\n")
    return [*common, f"data.raw={raw}", f"data.list_file={raw / 'nine.csv'}",
            "data.val_fraction=0.34", "data.test_fraction=0.33",
            f"data.audio={SMALL_AUDIO.replace('crema_d', 'kinetics_sounds')[:-1]}, "
            f"win_length: null, n_mels: 16}}"]


def test_configs_exist():
    names = {_data_name(p) for p in CONFIGS}
    assert {"mfeat", "avdigits", "avmnist", "cremad", "kinetics_sounds", "ucf101",
            "mosi"} <= names


@pytest.mark.parametrize("path", [p for p in CONFIGS if _data_name(p) in PAPER],
                         ids=lambda p: p.name)
def test_paper_configs_follow_the_paper(path):
    cfg = load_config(path)
    lam, every = PAPER[cfg.data["name"]]
    assert cfg.method["name"] == "dnr" and cfg.method["lam"] == lam
    assert cfg.optim.name == "sgd" and cfg.optim.momentum == 0.9
    if "cpu" not in path.name:  # the GPU-sized settings of the paper
        assert cfg.method["every"] == every and cfg.optim.lr == 1e-3
        assert all(e["width"] == 64 for e in cfg.model.encoders.values())


def test_mosi_config_follows_the_paper():
    """Table 3 left: three modalities, Transformer encoders, concat; lambda 8, H 5 (Sec. 4.2)."""
    cfg = load_config(ROOT / "configs" / "mosi_dnr.yaml")
    assert cfg.data["name"] == "mosi" and len(cfg.data["modalities"]) == 3
    assert {e["type"] for e in cfg.model.encoders.values()} == {"transformer"}
    assert cfg.model.fusion == "concat"
    assert cfg.method["name"] == "dnr" and cfg.method["lam"] == 8.0 and cfg.method["every"] == 5
    assert cfg.optim.name == "sgd" and cfg.optim.momentum == 0.9 and cfg.optim.lr == 1e-3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_trains_one_epoch(path, tmp_path, one_thread):
    over = _tiny_overrides(_data_name(path), tmp_path)
    cfg = load_config(path, ["train.epochs=1", "train.progress=false", "train.num_workers=0",
                             *over])
    summary = train(cfg, run_dir=tmp_path / "run")
    assert 0.0 <= summary["test"]["acc"] <= 1.0
    assert (tmp_path / "run/summary.json").is_file()
