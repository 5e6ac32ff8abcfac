"""UMT: the worked example by hand, distillation pulls each encoder's features toward its frozen
teacher's (which never changes), the teacher runs as prerequisites (reused, resumed at any
point), the per-modality MSE report, CLI and eval, three modalities, refusals."""
from __future__ import annotations

import copy
import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
import yaml

from mmrelearn.cli import main
from mmrelearn.config import config_from_dict
from mmrelearn.methods.base import unimodal_weights as teacher_weights
from mmrelearn.methods.umt import UMT
from mmrelearn.models import ModelOutput
from mmrelearn.train import RunExistsError, build_trainer, train
from mmrelearn.train.checkpoint import load_checkpoint, read_jsonl

TEACHERS = ("teacher_m0", "teacher_m1")


def _umt_raw(raw, epochs=3, **method):
    raw["method"] = {"name": "umt", **method}
    raw["train"].update(epochs=epochs, monitor_purity=False)
    return raw


def _records(run_dir, strip_time):
    return strip_time(read_jsonl(run_dir / "metrics.jsonl"))


def test_worked_example_by_hand():
    # z^T = (1, 2), z = (0, 0): MSE = (1 + 4) / 2 = 2.5; lambda MSE = 10 * 2.5 = 25
    # fused logits (0, 0), y = 0: CE = ln 2
    method = UMT()
    method._targets = {"a": torch.tensor([[1.0, 2.0]])}
    out = ModelOutput(logits=torch.zeros(1, 2), features={"a": torch.zeros(1, 2)})
    terms = method.loss_terms(SimpleNamespace(), out, torch.tensor([0]))
    assert float(terms["distill_a"]) == pytest.approx(25.0)
    assert float(terms["ce"]) == pytest.approx(math.log(2.0))
    assert float(method._mse_sum["a"]) == pytest.approx(2.5)
    assert method.on_train_epoch_end(None) == {"umt": {"mse": {"a": 2.5}, "lam": 10.0}}


def _val_distance(raw, run_dir):
    """Mean squared distance of the student's val features to the teachers', last weights."""
    trainer = build_trainer(config_from_dict(raw), run_dir / "x")
    model = trainer.model
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints/last.pt")["model"])
    model.eval()
    teachers, dist = model.method_modules["teachers"], {}
    with torch.no_grad():
        for inputs, _ in trainer.loaders["val"]:
            for m, z in model(inputs).features.items():
                d = float(((z - teachers[m](inputs[m])) ** 2).mean())
                dist[m] = dist.get(m, 0.0) + d
    return dist


def test_distillation_pulls_features_to_the_frozen_teachers(tiny_raw, tmp_path):
    dist = {}
    for lam in (10.0, 0.0):
        raw = _umt_raw(tiny_raw, epochs=4, lam=lam)
        run = tmp_path / f"lam{lam}"
        train(config_from_dict(raw), run_dir=run)
        dist[lam] = _val_distance(raw, run)
        last = load_checkpoint(run / "checkpoints/last.pt")["model"]
        for m in ("m0", "m1"):  # teachers never change: weights and BatchNorm statistics
            encoder, _ = teacher_weights(run / f"prerequisites/teacher_{m}", m)
            for k, v in encoder.items():
                assert torch.equal(last[f"method_modules.teachers.{m}.{k}"], v), (m, k)
    # the same seed, teachers and batches: only the distillation term differs
    for m in ("m0", "m1"):
        assert dist[10.0][m] < 0.5 * dist[0.0][m], (m, dist)


def test_teacher_runs_and_the_mse_report(tiny_raw, tmp_path):
    raw = _umt_raw(tiny_raw, epochs=2, lam=4.0, teacher_epochs=3)
    summary = train(config_from_dict(raw), run_dir=tmp_path / "run")
    assert summary["prerequisites"] == {t: f"prerequisites/{t}" for t in TEACHERS}
    assert summary["passes"] == {"run": 2.0, "prerequisites": 6.0, "total": 8.0}
    for m in ("m0", "m1"):
        stored = yaml.safe_load((tmp_path / f"run/prerequisites/teacher_{m}/config.yaml")
                                .read_text())
        assert stored["data"]["modalities"] == [m] and stored["method"] == {"name": "joint"}
        assert stored["train"]["epochs"] == 3 and stored["model"]["fusion"] == "concat"
    records = read_jsonl(tmp_path / "run/metrics.jsonl")
    assert set(records[0]["train"]) == {"ce", "distill_m0", "distill_m1", "total"}
    for record in records:  # the report's MSE is the logged term over lambda
        mse = record["report"]["umt"]["mse"]
        for m in ("m0", "m1"):
            assert mse[m] == pytest.approx(record["train"][f"distill_{m}"] / 4.0, rel=1e-5)
    assert read_jsonl(tmp_path / "run/reports.jsonl")[1]["umt"]["lam"] == 4.0


def test_student_init_from_the_teachers(tiny_raw, tmp_path):
    raw = _umt_raw(tiny_raw, epochs=1, student_init="teachers")
    trainer = build_trainer(config_from_dict(raw), tmp_path / "x")
    train(config_from_dict(_umt_raw(tiny_raw, epochs=1)), run_dir=tmp_path / "fresh")
    trainer.ctx.extras["prerequisites"] = {t: tmp_path / "fresh/prerequisites" / t
                                           for t in TEACHERS}
    trainer.method.on_fit_start(trainer.ctx)
    for m in ("m0", "m1"):
        encoder, _ = teacher_weights(tmp_path / f"fresh/prerequisites/teacher_{m}", m)
        student = trainer.model.encoders[m].state_dict()
        assert all(torch.equal(student[k], v) for k, v in encoder.items())
    assert trainer.method.state_dict() == {"loaded": True}


def test_resume_equals_uninterrupted_and_does_not_reload(tiny_raw, tmp_path, resume_check):
    # student_init=teachers: a reload on resume would overwrite the trained encoders
    raw = _umt_raw(tiny_raw, epochs=3, teacher_epochs=2, student_init="teachers")
    _, wf, at_crash, wc = resume_check(raw, tmp_path, crash_epoch=2)
    assert at_crash["method"] == wf["method"] == wc["method"] == {"loaded": True}


@pytest.mark.parametrize("where", ["teacher_m1", "parent"])
def test_a_crash_during_a_teacher_or_before_the_parent_resumes(tiny_raw, tmp_path, where,
                                                                crash_run, strip_time):
    raw = _umt_raw(tiny_raw, epochs=2)
    full = train(config_from_dict(raw), run_dir=tmp_path / "full")
    if where == "teacher_m1":  # teacher_m0 finished, teacher_m1 after its first epoch
        crash_run(raw, tmp_path / "cut", 1, when=lambda t: t.run_dir.name == "teacher_m1")
        assert (tmp_path / "cut/prerequisites/teacher_m0/summary.json").is_file()
        assert not (tmp_path / "cut/prerequisites/teacher_m1/summary.json").exists()
    else:  # both teachers finished, the parent's first epoch interrupted
        crash_run(raw, tmp_path / "cut", 0, when=lambda t: t.run_dir.name == "cut")
        assert all((tmp_path / "cut/prerequisites" / t / "summary.json").is_file()
                   for t in TEACHERS)
        assert not (tmp_path / "cut/checkpoints/last.pt").exists()
    resumed = train(run_dir=tmp_path / "cut", resume=True)
    for key in ("best_epoch", "val", "test", "test_last_epoch", "passes"):
        assert resumed[key] == full[key], key
    for sub in ("", *(f"prerequisites/{t}" for t in TEACHERS)):
        assert _records(tmp_path / "cut" / sub, strip_time) == _records(
            tmp_path / "full" / sub, strip_time), sub


def test_teachers_are_reused_when_their_configs_match(tiny_raw, tmp_path, strip_time):
    raw = _umt_raw(tiny_raw, epochs=2)
    a = train(config_from_dict(raw), run_dir=tmp_path / "a")
    for name in ("b", "c"):
        shutil.copytree(tmp_path / "a/prerequisites", tmp_path / name / "prerequisites")
    mtimes = {t: (tmp_path / "b/prerequisites" / t / "summary.json").stat().st_mtime_ns
              for t in TEACHERS}
    b = train(config_from_dict(raw), run_dir=tmp_path / "b")
    for t in TEACHERS:  # not trained again
        assert (tmp_path / "b/prerequisites" / t / "summary.json").stat().st_mtime_ns == mtimes[t]
    assert b["test"] == a["test"] and b["passes"] == a["passes"]
    assert _records(tmp_path / "b", strip_time) == _records(tmp_path / "a", strip_time)
    # teachers of another recipe (1 epoch instead of 2) are refused, not silently used
    with pytest.raises(RunExistsError, match="another configuration"):
        train(config_from_dict(_umt_raw(tiny_raw, epochs=2, teacher_epochs=1)),
              run_dir=tmp_path / "c")


def test_cli_train_then_eval_restores_the_run(tiny_raw, tmp_path, cli_train, capsys):
    run = cli_train(_umt_raw(tiny_raw, epochs=2), tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["val"]["acc"] == pytest.approx(summary["val"]["acc"])
    assert out["test"]["acc"] == pytest.approx(summary["test"]["acc"])
    best = load_checkpoint(run / "checkpoints/best.pt")
    assert any(k.startswith("method_modules.teachers.m1.") for k in best["model"])


def test_three_modalities_with_sum_fusion(tiny_raw, tmp_path):
    raw = _umt_raw(tiny_raw, epochs=2)
    raw["data"].update(dims=[6, 6, 6], separations=[3.0, 1.0, 0.5])
    raw["model"]["encoders"]["m2"] = {"type": "mlp", "hidden": [16]}
    raw["model"]["fusion"] = "sum"  # the teachers still get a plain linear head (concat)
    summary = train(config_from_dict(raw), run_dir=tmp_path / "run")
    assert sorted(summary["prerequisites"]) == ["teacher_m0", "teacher_m1", "teacher_m2"]
    assert summary["passes"]["total"] == 2.0 + 3 * 2.0
    report = read_jsonl(tmp_path / "run/reports.jsonl")[-1]["umt"]
    assert sorted(report["mse"]) == ["m0", "m1", "m2"]
    head = teacher_weights(tmp_path / "run/prerequisites/teacher_m2", "m2")[1]
    assert head["weight"].shape == (3, 16)  # Linear(d_m, C)


def test_refusals(tiny_raw, tmp_path):
    for key, bad in (("lam", -1.0), ("teacher_epochs", 0), ("student_init", "paper")):
        with pytest.raises(ValueError, match=f"method.{key}"):
            UMT(**{key: bad})
    with pytest.raises(RuntimeError, match="extra_modules"):
        UMT().prerequisites()
    no_head = SimpleNamespace(encoders={"a": None, "v": None}, head=None)
    with pytest.raises(ValueError, match="fused head"):
        UMT().extra_modules(no_head, 3)
    # one modality: refused before any teacher run or directory
    raw = _umt_raw(copy.deepcopy(tiny_raw))
    raw["data"].update(dims=[6], separations=[3.0])
    raw["model"]["encoders"] = {"m0": raw["model"]["encoders"]["m0"]}
    with pytest.raises(ValueError, match="at least 2 modalities"):
        train(config_from_dict(raw), run_dir=tmp_path / "one")
    assert not (tmp_path / "one").exists()
    # a trainer fitted without its teacher runs (not through train())
    trainer = build_trainer(config_from_dict(_umt_raw(tiny_raw)), tmp_path / "bare")
    with pytest.raises(ValueError, match=r"teacher runs \['teacher_m0', 'teacher_m1'\]"):
        trainer.fit()
    assert not (tmp_path / "bare/metrics.jsonl").exists()


def test_a_noise_on_another_modality_is_dropped_for_its_teacher(tiny_raw, tmp_path):
    # a run whose m0 is noisy: teacher_m0 keeps the noise, teacher_m1 (no m0) cannot have it
    tiny_raw["data"]["noise"] = {"modality": "m0", "snr_db": 0}
    tiny_raw["method"] = {"name": "umt", "teacher_epochs": 1}
    tiny_raw["train"].update(epochs=1, monitor_purity=False)
    train(config_from_dict(tiny_raw), run_dir=tmp_path)
    noise = {m: yaml.safe_load((tmp_path / f"prerequisites/teacher_{m}/config.yaml")
                               .read_text())["data"]["noise"] for m in ("m0", "m1")}
    assert noise == {"m0": {"modality": "m0", "snr_db": 0}, "m1": None}
