"""Config loading: unknown keys, wrong types, dotted overrides, registered sections."""
from __future__ import annotations

import pytest
import yaml

from mmrelearn.config import (ConfigError, apply_overrides, check_type, config_from_dict,
                              load_config)


def test_tiny_config_resolves_defaults(tiny_raw):
    cfg = config_from_dict(tiny_raw)
    assert cfg.train.epochs == 5 and cfg.optim.lr == 0.05
    assert cfg.method == {"name": "dnr", "lam": 3.0, "every": 2, "max_times": 3,
                          "strength": "tanh", "n_init": 1, "kmeans_seed": 0, "scale": "minmax",
                          "max_samples": None, "buffers": "keep", "momentum": "keep"}
    assert cfg.model.encoders["m1"]["type"] == "mlp"
    assert cfg.model.encoders["m1"]["dropout"] == 0.1


@pytest.mark.parametrize("path,key,valid", [
    (("train",), "epochz", "epochs"),
    ((), "sed", "seed"),
    (("optim",), "learning_rate", "lr"),
    (("method",), "lamda", "lam"),
    (("data",), "modalitiez", "num_samples"),
    (("model", "encoders", "m0"), "hiden", "hidden"),
])
def test_unknown_key_is_named_with_valid_keys(tiny_raw, path, key, valid):
    node = tiny_raw
    for p in path:
        node = node[p]
    node[key] = 1
    with pytest.raises(ConfigError) as err:
        config_from_dict(tiny_raw)
    assert repr(key) in str(err.value) and valid in str(err.value)


@pytest.mark.parametrize("section,key,value,expected", [
    ("train", "epochs", "ten", "train.epochs: expected int"),
    ("train", "epochs", 2.5, "train.epochs: expected int"),
    ("train", "progress", "yes", "train.progress: expected bool"),
    ("optim", "lr", "fast", "optim.lr: expected float"),
    ("method", "every", 1.5, "method.every: expected int"),
    ("data", "dims", 6, "data.dims: expected a list"),
    ("train", "select_metric", "val_loss", "train.select_metric: expected one of"),
    ("data", "val_fraction", "lots", "data.val_fraction: expected float"),
    ("data", "split_by", "speaker", "data.split_by: expected one of"),
    ("data", "standardize", "yes", "data.standardize: expected bool"),
    ("data", "test_groups", "theo", "data.test_groups: expected Sequence"),
])
def test_wrong_type_is_named(tiny_raw, section, key, value, expected):
    tiny_raw[section][key] = value
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        config_from_dict(tiny_raw)


def test_int_is_accepted_where_float_expected(tiny_raw):
    tiny_raw["optim"]["lr"] = 1
    assert config_from_dict(tiny_raw).optim.lr == 1.0 and isinstance(
        config_from_dict(tiny_raw).optim.lr, float)


def test_unknown_registered_names(tiny_raw):
    tiny_raw["method"]["name"] = "magic"
    with pytest.raises(ConfigError, match=r"method\.name: 'magic' is not one of \[.*'dnr'"):
        config_from_dict(tiny_raw)
    tiny_raw["method"] = {"name": "joint"}
    tiny_raw["model"]["encoders"]["m0"]["type"] = "perceiver"
    with pytest.raises(ConfigError, match=r"model\.encoders\.m0\.type: 'perceiver'.*'mlp'"):
        config_from_dict(tiny_raw)
    tiny_raw["model"]["encoders"]["m0"]["type"] = "mlp"
    tiny_raw["data"]["name"] = "imagenet"
    with pytest.raises(ConfigError, match=r"data\.name: 'imagenet'.*'mfeat'"):
        config_from_dict(tiny_raw)


def test_dotted_overrides():
    raw = {"method": {"name": "dnr"}, "train": {"epochs": 3}}
    out = apply_overrides(raw, ["method.lam=7", "train.epochs=9", "data.modalities=[fac, fou]",
                                "method.max_times=null"])
    assert out["method"] == {"name": "dnr", "lam": 7, "max_times": None}
    assert out["train"]["epochs"] == 9 and out["data"]["modalities"] == ["fac", "fou"]
    assert raw["train"]["epochs"] == 3  # the input is not modified
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(raw, ["method.lam"])


def test_load_config_file_names_file(tmp_path, tiny_raw):
    path = tmp_path / "c.yaml"
    tiny_raw["train"]["batchsize"] = 3
    path.write_text(yaml.safe_dump(tiny_raw))
    with pytest.raises(ConfigError, match=rf"{path}: train: unknown key\(s\) \['batchsize'\]"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_override_through_load_config(tmp_path, tiny_raw):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    cfg = load_config(path, ["method.lam=7", "train.epochs=2"])
    assert cfg.method["lam"] == 7.0 and cfg.train.epochs == 2


def test_check_type_optional_and_nested():
    from typing import Optional
    assert check_type(None, Optional[int], "k") is None
    assert check_type([1, 2], list[int], "k") == [1, 2]
    with pytest.raises(ConfigError, match=r"k\[1\]: expected int"):
        check_type([1, "x"], list[int], "k")
    with pytest.raises(ConfigError, match="k: expected int"):
        check_type(True, int, "k")


def test_scientific_notation_without_a_dot_is_a_float(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-3 as the string "1e-3"; a float key accepts it as 0.001
    from mmrelearn.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("name: x\ndata: {name: synthetic}\nmodel: {encoders: {m0: {type: mlp}, "
                    "m1: {type: mlp}}}\nmethod: {name: dnr, lam: 5e0}\noptim: {lr: 1e-3}\n")
    cfg = load_config(path, ["optim.weight_decay=2E-4"])
    assert cfg.optim.lr == 0.001 and cfg.optim.weight_decay == 0.0002
    assert cfg.method["lam"] == 5.0
