"""Bad input leaves no half-made run.

Every leaf key of every shipped config is set in turn to a value of the wrong type and, for
numbers, to out-of-range values (negative; 0 where a positive value is required; above the
upper bound of a fraction); ``train()`` must raise an error that names the key before any run
directory exists. Lists count as leaves: a number replaces the list, and a bad first item
(-1, or the name "xyz") replaces its first item.

The configs are prepared as tests/test_configs.py prepares them (tiny media in the formats of
the datasets a user downloads; avdigits/avmnist skipped without the FSDD recordings), with
``train.epochs=1`` and ``train.num_workers=0``. To stay fast, every error must come before
training (``Trainer.fit`` is replaced by a failure), and a config's data are built once and
reused for the bad values outside its ``data`` section: the memo is keyed on the whole data
section and the method's holdout, so a bad data value always reaches the real builder.
"""
from __future__ import annotations

import copy
import inspect
import re
import shutil
from pathlib import Path

import pytest
import yaml

from mmrelearn.cli import main
from mmrelearn.config import ConfigError, apply_overrides, config_from_dict
from mmrelearn.methods import METHODS
from mmrelearn.train import RunExistsError, run as run_mod, train
from mmrelearn.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
ERRORS = (ConfigError, ValueError, TypeError, FileNotFoundError)

#: leaf keys that need a positive value: 0 is tried as well as a negative value.
POSITIVE = {"epochs", "batch_size", "eval_batch_size", "lr", "every", "n_init", "width",
            "heads", "hidden", "step_size", "gamma", "num_samples", "num_classes", "dims",
            "image_size", "frames", "sample_rate", "duration", "n_fft", "hop_length", "n_mels",
            "energy_kept", "mlp_ratio", "patch_size", "channels", "bottlenecks",
            "flow_channels", "split", "super_epoch", "rebalance_steps", "holdout",
            "proto_fraction"}
#: leaf keys with an upper bound, and a value above it.
ABOVE = {"val_fraction": 1.0, "test_fraction": 1.0, "dropout": 1.0, "momentum": 1.5,
         "energy_kept": 1.5, "holdout": 1.0, "proto_fraction": 1.5}
#: (key, kind) pairs whose "bad" value is in fact valid, each with the reason. Any other
#: value this test tries must be refused.
VALID = {
    ("name", "choice"): "any string names a run",
    ("output_dir", "choice"): "any folder can hold runs",
    ("data.cache", "choice"): "any folder can hold a cache (it is created)",
    ("data.audio_noise.snr_db", "negative"): "noise louder than the signal is a valid SNR",
    ("model.encoders.*.patch_size", "type"): "an int means a square patch",
}


def _leaves(node: dict, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _bad_values(key: str, value):
    """(kind, value) pairs that the config check or a builder must refuse."""
    leaf = key.rsplit(".", 1)[-1]
    if isinstance(value, bool):
        return [("type", "xyz")]
    if isinstance(value, (int, float)):
        out = [("type", "xyz"), ("negative", -1)]
        out += [("zero", 0)] if leaf in POSITIVE else []
        return out + ([("above", ABOVE[leaf])] if leaf in ABOVE else [])
    if isinstance(value, str):
        return [("type", 7), ("choice", "xyz")]
    if isinstance(value, list) and value:
        first = -1 if all(isinstance(v, (int, float)) for v in value) else "xyz"
        out = [("type", 7), ("item", [first, *value[1:]])]
        return out + ([("zero", [0, *value[1:]])] if leaf in POSITIVE and first == -1 else [])
    return [("type", "xyz")]  # None


def _set(raw: dict, key: str, value) -> dict:
    raw = copy.deepcopy(raw)
    *parents, leaf = key.split(".")
    node = raw
    for p in parents:
        node = node[p]
    node[leaf] = value
    return raw


class _Trained(Exception):
    """Raised instead of training: the bad value got through every check."""


@pytest.fixture
def no_training(monkeypatch):
    """Trainer.fit raises _Trained; a config's data are built once per data section."""
    def fit(self):
        raise _Trained("every check passed; training would start")

    monkeypatch.setattr(Trainer, "fit", fit)
    real, memo = run_mod.build_data_for, {}

    def build_data_for(cfg, method):
        key = (repr(cfg.data), method.holdout_fraction)
        if key not in memo:
            memo[key] = real(cfg, method)
        return memo[key]

    monkeypatch.setattr(run_mod, "build_data_for", build_data_for)


def _prepared(path: Path, tmp_path: Path) -> dict:
    from test_configs import _data_name, _tiny_overrides  # tiny media, as for one epoch

    over = _tiny_overrides(_data_name(path), tmp_path)
    return apply_overrides(yaml.safe_load(path.read_text()), [
        "train.epochs=1", "train.progress=false", "train.num_workers=0",
        f"output_dir={tmp_path / 'runs'}", *over])


def _problem(raw: dict, key: str, runs: Path, dotted: bool = False):
    """None if ``raw`` fails as it must, naming ``key`` (its leaf, or all of it with
    ``dotted``); else what went wrong."""
    name = key if dotted else key.rsplit(".", 1)[-1]
    try:
        train(config_from_dict(raw))
        problem = "no error"
    except ERRORS as err:
        before = r"(?<![\w.])" if dotted else r"(?<!\w)"  # "audio_noise.seed" names seed
        named = re.search(rf"{before}{re.escape(name)}(?!\w)", str(err))
        problem = None if named else f"{type(err).__name__} not naming {name!r}: {err}"
    except _Trained:
        problem = "accepted: training would start"
    except Exception as err:  # noqa: BLE001 - an obscure error is a finding too
        problem = f"unexpected {type(err).__name__}: {err}"
    if runs.exists():
        shutil.rmtree(runs)
        problem = (problem or "") + " (and a run directory was created)"
    return problem


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_bad_value_fails_before_a_run_directory_exists(path, tmp_path, no_training,
                                                            one_thread):
    raw = _prepared(path, tmp_path)
    runs = tmp_path / "runs"
    with pytest.raises(_Trained):  # the config itself is good
        train(config_from_dict(raw))
    shutil.rmtree(runs)
    found, tried = [], 0
    for key, value in _leaves(raw):
        for kind, bad in _bad_values(key, value):
            if (key, kind) in VALID or (re.sub(r"^model\.encoders\.\w+", "model.encoders.*",
                                               key), kind) in VALID:
                continue
            tried += 1
            problem = _problem(_set(raw, key, bad), key, runs)
            if problem:
                found.append(f"{key}={bad!r} ({kind}): {problem}")
    assert tried > 20
    assert not found, "\n".join(found)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_option_is_checked_when_the_method_is_built(method, tiny_raw, tmp_path,
                                                                 no_training):
    """Every constructor option of every method, at its default and then bad: the error
    names ``method.<key>`` (types from the config check, ranges from the constructor)."""
    options = {n: p.default for n, p in inspect.signature(METHODS[method]).parameters.items()}
    runs = tmp_path / "runs"
    raw = {**tiny_raw, "output_dir": str(runs), "method": {"name": method, **options}}
    found = []
    for key, value in options.items():
        for kind, bad in _bad_values(key, value):
            problem = _problem(_set(raw, f"method.{key}", bad), f"method.{key}", runs, True)
            if problem:
                found.append(f"method.{key}={bad!r} ({kind}): {problem}")
    assert not found, "\n".join(found)


# ---------------------------------------------------------------- the run directory

MFEAT = str(ROOT / "configs" / "mfeat_dnr.yaml")


def test_bad_modality_then_good_command_then_no_resume_needed(tmp_path, capsys):
    """The issue's sequence: a failed start must not block the corrected command."""
    run_dir = tmp_path / "run"
    common = ["train", "-c", MFEAT, "--run-dir", str(run_dir), "--set", "train.epochs=1",
              "--set", "train.progress=false", "--set", "train.monitor_purity=false"]
    assert main([*common, "--set", "data.modalities=[fac,xyz]"]) == 2
    assert "modalities" in capsys.readouterr().err and not run_dir.exists()
    assert main([*common, "--set", "method.lam=-1"]) == 2
    assert "method.lam must be a number >= 0, got -1" in capsys.readouterr().err
    assert not run_dir.exists()
    assert main(common) == 0 and (run_dir / "summary.json").is_file()


def test_a_directory_without_a_finished_epoch_is_replaced(tiny_raw, tmp_path, caplog):
    tiny_raw["train"]["epochs"] = 1
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text("name: an earlier start\n")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "tra')  # cut by a kill
    (tmp_path / "checkpoints" / ".last.pt.x1.tmp").write_bytes(b"half")
    train(config_from_dict(tiny_raw), run_dir=tmp_path)
    assert "no finished epoch" in caplog.text
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["name"] == "tiny"
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("finished", ["checkpoint", "metrics"])
def test_a_directory_with_a_finished_epoch_is_refused(tiny_raw, tmp_path, finished):
    (tmp_path / "config.yaml").write_text("name: earlier\n")
    if finished == "checkpoint":
        (tmp_path / "checkpoints").mkdir()
        (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    else:
        (tmp_path / "metrics.jsonl").write_text('{"epoch": 0}\n')
    with pytest.raises(RunExistsError, match="already holds a run; resume it with --resume"):
        train(config_from_dict(tiny_raw), run_dir=tmp_path)
    assert (tmp_path / "config.yaml").read_text() == "name: earlier\n"
