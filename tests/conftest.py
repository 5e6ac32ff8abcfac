"""Shared fixtures: a tiny synthetic configuration that trains in about a second."""
from __future__ import annotations

import copy

import pytest

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "synthetic", "num_samples": 240, "num_classes": 3, "dims": [6, 6],
             "separations": [3.0, 1.0], "val_fraction": 0.25, "test_fraction": 0.25,
             "split_seed": 0},
    "model": {"encoders": {"m0": {"type": "mlp", "hidden": [16]},
                           "m1": {"type": "mlp", "hidden": [16], "dropout": 0.1}}},
    "method": {"name": "dnr", "lam": 3.0, "every": 2},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "train": {"epochs": 5, "batch_size": 32, "progress": False, "monitor_purity": True},
}


@pytest.fixture
def tiny_raw():
    """A fresh copy of the tiny raw config mapping (tests may edit it)."""
    return copy.deepcopy(TINY)


def _strip_time(records):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


@pytest.fixture
def strip_time():
    """``strip_time(records)``: metrics records without their wall times, for comparisons."""
    return _strip_time


def _crash_run(raw, run_dir, epoch, hook="_train_epoch", when=None):
    """Train ``raw`` into ``run_dir`` and interrupt it (KeyboardInterrupt, as a kill would) when
    ``Trainer.<hook>`` is called for ``epoch`` (any epoch if None) and ``when(trainer)`` holds;
    the trainer is restored afterwards."""
    from mmrelearn.config import config_from_dict
    from mmrelearn.train import loop as loop_mod
    from mmrelearn.train import train

    original = getattr(loop_mod.Trainer, hook)

    def crashing(self, e):
        if (epoch is None or e == epoch) and (when is None or when(self)):
            raise KeyboardInterrupt("simulated crash")
        return original(self, e)

    setattr(loop_mod.Trainer, hook, crashing)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(config_from_dict(raw), run_dir=run_dir)
    finally:
        setattr(loop_mod.Trainer, hook, original)


@pytest.fixture
def crash_run():
    """``crash_run(raw, run_dir, epoch, hook="_train_epoch", when=None)``: a run interrupted
    at ``epoch`` (see :func:`_crash_run`), left as a crash leaves it."""
    return _crash_run


@pytest.fixture
def resume_check():
    """Run ``raw`` uninterrupted and crashed in epoch ``crash_epoch`` then resumed; assert both
    end with identical summaries, metrics.jsonl (times aside) and final weights.

    Returns ``(full_records, full_last_ckpt, cut_last_ckpt_at_crash, resumed_last_ckpt)`` for
    method-specific checks.
    """
    import torch

    from mmrelearn.config import config_from_dict
    from mmrelearn.train import train
    from mmrelearn.train.checkpoint import read_jsonl

    def check(raw, tmp_path, crash_epoch):
        full = train(config_from_dict(raw), run_dir=tmp_path / "full")
        _crash_run(raw, tmp_path / "cut", crash_epoch)
        at_crash = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)
        assert at_crash["epoch"] == crash_epoch - 1
        assert not (tmp_path / "cut/summary.json").exists()
        resumed = train(run_dir=tmp_path / "cut", resume=True)
        for key in ("best_epoch", "val", "test", "test_last_epoch"):
            assert resumed[key] == full[key], key
        rf, rc = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("full", "cut"))
        assert _strip_time(rf) == _strip_time(rc)
        assert read_jsonl(tmp_path / "full/reports.jsonl") == read_jsonl(
            tmp_path / "cut/reports.jsonl")
        wf, wc = (torch.load(tmp_path / d / "checkpoints/last.pt", weights_only=True)
                  for d in ("full", "cut"))
        assert wf["model"].keys() == wc["model"].keys()
        assert all(torch.equal(wf["model"][k], wc["model"][k]) for k in wf["model"])
        return rf, wf, at_crash, wc

    return check


@pytest.fixture
def cli_train():
    """``cli_train(raw, run_dir)``: write ``raw`` as YAML, run ``mmrelearn train`` on it into
    ``run_dir`` through the CLI entry point, and check it finished."""
    import yaml

    from mmrelearn.cli import main

    def run(raw, run_dir):
        cfg = run_dir.parent / f"{run_dir.name}.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        assert main(["train", "-c", str(cfg), "--run-dir", str(run_dir)]) == 0
        assert (run_dir / "summary.json").is_file()
        return run_dir

    return run


@pytest.fixture
def one_thread():
    """Run the test with one torch thread: tiny convolutions are fastest on one thread, and on
    a busy 2-core runner two intra-op threads mostly wait for each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def refuses_one_modality():
    """``refuses_one_modality(raw, tmp_path)``: the method of ``raw`` on a one-modality copy of
    the tiny data must stop before its first epoch with an error naming the problem."""
    from mmrelearn.config import config_from_dict
    from mmrelearn.train import build_trainer

    def check(raw, tmp_path):
        raw["data"].update(dims=[6], separations=[3.0])
        raw["model"]["encoders"] = {"m0": raw["model"]["encoders"]["m0"]}
        trainer = build_trainer(config_from_dict(raw), tmp_path)
        with pytest.raises(ValueError, match="at least 2 modalities"):
            trainer.fit()
        assert not (tmp_path / "metrics.jsonl").exists()

    return check


@pytest.fixture
def reinit_run():
    """``reinit_run(raw, run_dir)``: train ``raw`` recording the model state around every epoch
    end, and check each D&R re-initialisation: every encoder parameter equals
    ``(1 - alpha) before + alpha init`` (alpha of its modality), every other tensor (heads,
    fusion, BatchNorm statistics) is untouched. Returns ``(trainer, init, seen)`` with
    ``seen[epoch] = (before, after, report)``."""
    import copy

    import torch

    from mmrelearn.config import config_from_dict
    from mmrelearn.train import build_trainer

    def run(raw, run_dir):
        trainer = build_trainer(config_from_dict(raw), run_dir)
        model, method = trainer.model, trainer.method
        init, seen = copy.deepcopy(model.state_dict()), {}
        original = method.on_train_epoch_end

        def spy(ctx):
            before = copy.deepcopy(model.state_dict())
            report = original(ctx)
            seen[ctx.epoch] = (before, copy.deepcopy(model.state_dict()), report)
            return report

        method.on_train_epoch_end = spy
        trainer.fit()
        for before, after, report in seen.values():
            if report is None or not report["dnr"]["applied"]:
                continue
            alphas = report["dnr"]["modalities"]
            for key in before:
                buffer = "running_" in key or "num_batches" in key
                if key.startswith("encoders.") and not buffer:
                    a = alphas[key.split(".")[1]]["alpha"]
                    expected = before[key] * (1 - a) + init[key] * a
                    assert torch.allclose(after[key], expected, atol=1e-7), key
                else:  # heads, fusion, BatchNorm statistics
                    assert torch.equal(before[key], after[key]), key
        return trainer, init, seen

    return run


# ---- helpers shared by the method tests (import them: ``from conftest import fit_ctx``)

def fit_ctx(**fields):
    """A FitContext of what a training step reads (precision 32), the loaders unused."""
    import torch

    from mmrelearn.methods.base import FitContext

    base = dict(device=torch.device("cpu"), num_classes=2, epochs=1, train_loader=range(1),
                diag_train_loader=(), val_loader=(), epoch=0)
    return FitContext(**{**base, **fields})


def method_raw(raw, name, **method):
    """``raw`` running method ``name`` with options ``method``, the purity monitor off."""
    raw["method"] = {"name": name, **method}
    raw["train"]["monitor_purity"] = False
    return raw


def identity_encoder(dim):
    """An encoder returning its (B, dim) input as features (``out_dim`` = dim)."""
    import torch

    class Identity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.out_dim = dim

        def forward(self, x):
            return x

    return Identity()
