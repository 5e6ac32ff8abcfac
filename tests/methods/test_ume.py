"""UME: the ensemble by hand, predictions equal the mean of the teachers' logits, no joint step,
the teacher runs resumed at any point and reused (a UMT run's too), CLI and eval, three
modalities, refusals."""
from __future__ import annotations

import copy
import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch

from mmrelearn.cli import main
from mmrelearn.config import config_from_dict
from mmrelearn.methods.ume import UME, ensemble_logits
from mmrelearn.train import build_trainer, load_run_config, train
from mmrelearn.train.checkpoint import load_checkpoint, read_jsonl

TEACHERS = ("teacher_m0", "teacher_m1")


def _ume_raw(raw, epochs=2, **method):
    raw["method"] = {"name": "ume", **method}
    raw["train"].update(epochs=epochs, monitor_purity=False)
    return raw


def test_the_ensemble_by_hand():
    # u_a = (2, 0), u_v = (0, 4): mean of the logits (1, 2)
    u = {"a": torch.tensor([[2.0, 0.0]]), "v": torch.tensor([[0.0, 4.0]])}
    assert torch.equal(ensemble_logits(u), torch.tensor([[1.0, 2.0]]))
    # probabilities: softmax(2, 0) = (0.880797, 0.119203), softmax(0, 4) = (0.017986,
    # 0.982014); their mean (0.449391, 0.550609), returned as its log
    probs = ensemble_logits(u, "probs")
    assert probs.exp() == pytest.approx(torch.tensor([[0.449391, 0.550609]]), abs=1e-6)
    assert probs.softmax(1) == pytest.approx(probs.exp(), abs=1e-7)
    assert float(probs[0, 1]) == pytest.approx(math.log(0.550609), abs=1e-5)


def _teacher_logits(run_dir, teacher, loader_split="test"):
    """Logits of a teacher run's own model (its best.pt) on its own loader, in eval mode."""
    d = run_dir / "prerequisites" / teacher
    trainer = build_trainer(load_run_config(d), d / "x")
    trainer.model.load_state_dict(load_checkpoint(d / "checkpoints/best.pt")["model"])
    trainer.model.eval()
    with torch.no_grad():
        return [trainer.model(x).logits for x, _ in trainer.loaders[loader_split]]


def test_predictions_are_the_mean_of_the_teachers_logits(tiny_raw, tmp_path):
    raw = _ume_raw(tiny_raw)
    run = tmp_path / "run"
    summary = train(config_from_dict(raw), run_dir=run)
    mean = [(a + b) / 2 for a, b in zip(*(_teacher_logits(run, t) for t in TEACHERS))]
    trainer = build_trainer(config_from_dict(raw), tmp_path / "x")
    trainer.model.load_state_dict(load_checkpoint(run / "checkpoints/best.pt")["model"])
    trainer.model.eval()
    right = n = 0
    with torch.no_grad():
        for (inputs, y), expected in zip(trainer.loaders["test"], mean):
            got = trainer.method.predict(trainer.model, inputs)
            assert torch.allclose(got, expected, atol=1e-6)
            right += int(expected.argmax(1).eq(y).sum())
            n += len(y)
    assert summary["test"]["acc"] == pytest.approx(right / n)
    # the parent took no step: 0 passes of its own, the teachers' 2 x 2
    assert summary["passes"] == {"run": 0.0, "prerequisites": 4.0, "total": 4.0}
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["train"] for r in records] == [{"total": 0}, {"total": 0}]
    assert records[0]["val"] == records[1]["val"] and summary["best_epoch"] == 0


def test_the_teachers_are_the_model_and_never_change(tiny_raw, tmp_path):
    run = tmp_path / "run"
    train(config_from_dict(_ume_raw(tiny_raw, epochs=3)), run_dir=run)
    last = load_checkpoint(run / "checkpoints/last.pt")["model"]
    for m in ("m0", "m1"):
        teacher = load_checkpoint(run / f"prerequisites/teacher_{m}/checkpoints/best.pt")
        for k, v in teacher["model"].items():  # encoders.m.* and head.*
            key = k if k.startswith("encoders.") else f"method_modules.heads.{m}.{k[5:]}"
            assert torch.equal(last[key], v), key


def test_probability_averaging(tiny_raw, tmp_path):
    raw = _ume_raw(tiny_raw, epochs=1, average="probs")
    run = tmp_path / "run"
    summary = train(config_from_dict(raw), run_dir=run)
    mean = [(a.softmax(1) + b.softmax(1)) / 2
            for a, b in zip(*(_teacher_logits(run, t, "val") for t in TEACHERS))]
    trainer = build_trainer(config_from_dict(raw), tmp_path / "x")
    y = torch.cat([y for _, y in trainer.loaders["val"]])
    acc = float(torch.cat(mean).argmax(1).eq(y).float().mean())
    assert summary["val"]["acc"] == pytest.approx(acc)
    loss = float(torch.nn.functional.nll_loss(torch.cat(mean).log(), y))
    assert summary["val"]["loss"] == pytest.approx(loss, rel=1e-5)


def test_resume_equals_uninterrupted(tiny_raw, tmp_path, resume_check):
    raw = _ume_raw(tiny_raw, epochs=2, teacher_epochs=1)  # the crash hits the parent only
    _, wf, at_crash, _ = resume_check(raw, tmp_path, crash_epoch=1)
    assert at_crash["method"] == wf["method"] == {"loaded": True}


@pytest.mark.parametrize("where", ["teacher_m1", "parent"])
def test_a_crash_during_a_teacher_or_before_the_parent_resumes(tiny_raw, tmp_path, where,
                                                                crash_run, strip_time):
    raw = _ume_raw(tiny_raw)
    full = train(config_from_dict(raw), run_dir=tmp_path / "full")
    name = "teacher_m1" if where == "teacher_m1" else "cut"
    crash_run(raw, tmp_path / "cut", 1 if where == "teacher_m1" else 0,
              when=lambda t: t.run_dir.name == name)
    resumed = train(run_dir=tmp_path / "cut", resume=True)
    for key in ("best_epoch", "val", "test", "test_last_epoch", "passes"):
        assert resumed[key] == full[key], key
    for sub in ("", *(f"prerequisites/{t}" for t in TEACHERS)):
        assert strip_time(read_jsonl(tmp_path / "cut" / sub / "metrics.jsonl")) == strip_time(
            read_jsonl(tmp_path / "full" / sub / "metrics.jsonl")), sub


def test_a_umt_runs_teachers_are_reused(tiny_raw, tmp_path):
    # the teachers' configs do not depend on the parent's method: the same runs serve both
    umt = copy.deepcopy(tiny_raw)
    umt["method"] = {"name": "umt"}
    umt["train"].update(epochs=2, monitor_purity=False)
    train(config_from_dict(umt), run_dir=tmp_path / "umt")
    shutil.copytree(tmp_path / "umt/prerequisites", tmp_path / "ume/prerequisites")
    mtimes = {t: (tmp_path / "ume/prerequisites" / t / "summary.json").stat().st_mtime_ns
              for t in TEACHERS}
    summary = train(config_from_dict(_ume_raw(tiny_raw)), run_dir=tmp_path / "ume")
    for t in TEACHERS:
        assert (tmp_path / "ume/prerequisites" / t / "summary.json").stat().st_mtime_ns == mtimes[t]
    assert summary["passes"]["prerequisites"] == 4.0


def test_cli_train_then_eval_restores_the_ensemble(tiny_raw, tmp_path, cli_train, capsys):
    run = cli_train(_ume_raw(tiny_raw, epochs=1), tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    for split in ("val", "test"):
        assert out[split]["acc"] == pytest.approx(summary[split]["acc"])
        assert out[split]["loss"] == pytest.approx(summary[split]["loss"])


def test_three_modalities(tiny_raw, tmp_path):
    raw = _ume_raw(tiny_raw, epochs=1)
    raw["data"].update(dims=[6, 6, 6], separations=[3.0, 1.0, 0.5])
    raw["model"]["encoders"]["m2"] = {"type": "mlp", "hidden": [8]}  # sizes may differ
    run = tmp_path / "run"
    train(config_from_dict(raw), run_dir=run)
    logits = [_teacher_logits(run, f"teacher_m{k}", "val") for k in range(3)]
    mean = [sum(ls) / 3 for ls in zip(*logits)]
    trainer = build_trainer(config_from_dict(raw), tmp_path / "x")
    trainer.model.load_state_dict(load_checkpoint(run / "checkpoints/best.pt")["model"])
    trainer.model.eval()
    with torch.no_grad():
        for (inputs, _), expected in zip(trainer.loaders["val"], mean):
            assert torch.allclose(trainer.method.predict(trainer.model, inputs), expected,
                                  atol=1e-6)


def test_refusals(tiny_raw, tmp_path):
    for key, bad in (("average", "votes"), ("teacher_epochs", -1)):
        with pytest.raises(ValueError, match=f"method.{key}"):
            UME(**{key: bad})
    with pytest.raises(RuntimeError, match="extra_modules"):
        UME().prerequisites()
    with pytest.raises(ValueError, match="fused head"):
        UME().extra_modules(SimpleNamespace(encoders={"a": None, "v": None}, head=None), 3)
    raw = _ume_raw(copy.deepcopy(tiny_raw))
    raw["data"].update(dims=[6], separations=[3.0])
    raw["model"]["encoders"] = {"m0": raw["model"]["encoders"]["m0"]}
    with pytest.raises(ValueError, match="at least 2 modalities"):
        train(config_from_dict(raw), run_dir=tmp_path / "one")
    assert not (tmp_path / "one").exists()
    trainer = build_trainer(config_from_dict(_ume_raw(tiny_raw)), tmp_path / "bare")
    with pytest.raises(ValueError, match="teacher runs"):
        trainer.fit()
