"""DI-MML: the worked example by hand, DUC's one-way gradients, the dimensions as specified,
stage 2 moving only F, resume at any point (in stage 1, between stages, in stage 2), reuse of
stage 1, the CLI, refusals."""
from __future__ import annotations

import copy
import json
import math
import shutil

import pytest
import torch

from mmrelearn.config import ConfigError, config_from_dict
from mmrelearn.methods.dimml import (DIMML, certainty_combine, certainty_weights, class_means,
                                     dimension_accuracy, duc_loss, exclusive_dimensions,
                                     top_dimensions)
from mmrelearn.train import build_trainer, train
from mmrelearn.train.checkpoint import load_checkpoint, read_jsonl


def _raw(raw, **method):
    """Stage 2 of 2 epochs after 3 of stage 1, DUC from stage 1's epoch 1."""
    raw["method"] = {"name": "dimml", "duc_start": 1, "stage1_epochs": 3, "tau": 1.0, **method}
    raw["train"].update(epochs=2, monitor_purity=False)
    return raw


def test_worked_example_by_hand():
    # 4 audio samples, d = 2, y = (0, 0, 1, 1)
    z_a = torch.tensor([[0.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 2.0]])
    y = torch.tensor([0, 0, 1, 1])
    mu = class_means(z_a, y, 2)
    assert torch.equal(mu, torch.tensor([[0.0, 1.0], [2.0, 1.0]]))  # mu_0, mu_1
    # dimension 0: every nearest mean is right (acc 1); dimension 1: every distance ties
    # (1 vs 1), class 0 is chosen, right for the two class-0 samples (acc 0.5)
    acc = dimension_accuracy(z_a, y, mu)
    assert acc.tolist() == [1.0, 0.5]
    assert top_dimensions(acc) == [0]  # mean 0.75: T_a = {0}
    assert exclusive_dimensions({"a": [0], "v": [1]}) == {"a": [0], "v": [1]}  # A, V
    # DUC, vision part (tau = 1, B = 2): v[A] = (1, 0), sg(a[A]) = (1, -1)
    # i = 1: logits (1, -1), -log(e / (e + e^-1)) = log(1 + e^-2) = 0.126928
    # i = 2: logits (0, 0), -log(1/2) = 0.693147; mean 0.410038
    v = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    a = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert math.log(1 + math.exp(-2)) == pytest.approx(0.126928, abs=1e-6)
    vision = duc_loss({"a": a, "v": v}, {"a": [0], "v": []}, tau=1.0)  # V empty: L_v only
    assert float(vision) == pytest.approx(0.410038, abs=1e-6)
    # weighting (tau_2 = 1): c = (0.9, 0.6, 0.7); e^c = (2.459603, 1.822119, 2.013753), sum
    # 6.295475 -> w = (0.390694, 0.289433, 0.319873)
    o = [torch.log(torch.tensor([[0.9, 0.1]])), torch.log(torch.tensor([[0.6, 0.4]])),
         torch.log(torch.tensor([[0.3, 0.7]]))]
    w = certainty_weights(o, 1.0)
    assert w[0].tolist() == pytest.approx([0.390694, 0.289433, 0.319873], abs=1e-6)
    out = certainty_combine(o, 1.0)
    assert torch.allclose(out, 0.390694 * o[0] + 0.289433 * o[1] + 0.319873 * o[2], atol=1e-5)


def test_duc_both_directions_and_three_modalities():
    gen = torch.Generator().manual_seed(0)
    z = {m: torch.randn(5, 4, generator=gen) for m in "avt"}

    def nce(learner, teacher, cols, tau):  # -log softmax of row i at column i, batch mean
        logits = learner[:, cols] @ teacher[:, cols].T / tau
        return -torch.log_softmax(logits, 1).diagonal().mean()

    two = {"a": z["a"], "v": z["v"]}
    expected = nce(z["v"], z["a"], [0], 2.0) + nce(z["a"], z["v"], [1, 3], 2.0)  # L_v + L_a
    assert torch.allclose(duc_loss(two, {"a": [0], "v": [1, 3]}, 2.0), expected)
    # K = 3: D_m = T_m minus the others' T_j; every j != m learns D_m from z_m
    dims = exclusive_dimensions({"a": [0, 1], "v": [1, 2], "t": [3]})
    assert dims == {"a": [0], "v": [2], "t": [3]}
    expected = sum(nce(z[j], z[m], dims[m], 1.0) for m in "avt" for j in "avt" if j != m)
    assert torch.allclose(duc_loss(z, dims, 1.0), expected)
    assert float(duc_loss(two, {"a": [], "v": []}, 1.0)) == 0.0


def test_duc_teaches_each_modality_only_the_others_exclusive_dimensions():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(6, 5, generator=gen, requires_grad=True)
    v = torch.randn(6, 5, generator=gen, requires_grad=True)
    duc_loss({"a": a, "v": v}, {"a": [0, 1], "v": [3]}, 1.0).backward()
    # vision gets gradient only through the audio-only dimensions A = {0, 1} (sg on audio's
    # side there), audio only through V = {3}
    assert v.grad[:, [0, 1]].abs().sum() > 0 and not v.grad[:, [2, 3, 4]].any()
    assert a.grad[:, 3].abs().sum() > 0 and not a.grad[:, [0, 1, 2, 4]].any()


def test_dimension_accuracy_skips_a_class_without_samples():
    z = torch.tensor([[0.0], [1.0], [3.0]])
    y = torch.tensor([0, 0, 2])  # class 1 absent: its mean is NaN and never the nearest
    mu = class_means(z, y, 3)
    assert torch.isnan(mu[1]).all()
    assert dimension_accuracy(z, y, mu).tolist() == [1.0]


def test_stage_one_finds_the_dimensions_once_as_specified(tiny_raw, tmp_path):
    raw = _raw(tiny_raw, stage=1, stage1_epochs=None)
    raw["train"]["epochs"] = 3
    trainer = build_trainer(config_from_dict(raw), tmp_path)
    method, model = trainer.method, trainer.model
    seen = {}
    original = method.on_train_epoch_start

    def spy(ctx):
        seen[ctx.epoch] = copy.deepcopy(model.state_dict())
        original(ctx)

    method.on_train_epoch_start = spy
    trainer.fit()
    # recomputed by a plain loop over single samples (the release's batch 1) from the model
    # at the start of epoch duc_start = 1
    probe = copy.deepcopy(model)
    probe.load_state_dict(seen[1])
    probe.eval()
    feats, labels = {m: [] for m in probe.encoders}, []
    with torch.no_grad():
        for inputs, ys in trainer.loaders["diag_train"]:
            for i in range(len(ys)):
                z = probe.encode({m: x[i:i + 1] for m, x in inputs.items()})
                for m in feats:
                    feats[m].append(z[m][0])
                labels.append(int(ys[i]))
    top = {}
    for m, rows in feats.items():
        z = torch.stack(rows)  # (N, d)
        mu = torch.stack([z[[c == k for c in labels]].mean(0) for k in range(3)])
        nearest = [[min(range(3), key=lambda k: (abs(float(z[i, j] - mu[k, j])), k))
                    for j in range(z.shape[1])] for i in range(len(z))]
        acc = [sum(nearest[i][j] == labels[i] for i in range(len(z))) / len(z)
               for j in range(z.shape[1])]
        top[m] = [j for j in range(len(acc)) if acc[j] > sum(acc) / len(acc)]
    want = {m: sorted(set(top[m]) - set(top[o])) for m, o in (("m0", "m1"), ("m1", "m0"))}
    assert method.dims == want and any(want.values())
    reports = [r["dimml"] for r in read_jsonl(tmp_path / "reports.jsonl")]
    assert reports[0]["duc"] is None and "dimensions" not in reports[0]
    assert reports[1]["dimensions"] == {"top": {m: len(t) for m, t in top.items()},
                                        "exclusive": {m: len(d) for m, d in want.items()}}
    assert "dimensions" not in reports[2]  # once
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert "duc" not in records[0]["train"]
    assert [r["train"]["duc"] for r in records[1:]] == [r["duc"] for r in reports[1:]]
    assert set(reports[0]["val"]["weight_mean"]) == {"m0", "m1"}


def test_stage_two_trains_only_the_fusion_head(tiny_raw, tmp_path):
    summary = train(config_from_dict(_raw(tiny_raw)), run_dir=tmp_path)
    assert summary["passes"] == {"run": 2.0, "prerequisites": 3.0, "total": 5.0}
    stage1 = load_checkpoint(tmp_path / "prerequisites/stage1/checkpoints/best.pt")["model"]
    last = load_checkpoint(tmp_path / "checkpoints/last.pt")["model"]
    assert stage1.keys() == last.keys()
    moved = {k for k in last if not torch.equal(last[k], stage1[k])}
    # encoders (BatchNorm statistics included), H_m and S as stage 1 left them; F moved
    assert moved == {"head.weight", "head.bias"}
    raw1 = _raw(copy.deepcopy(tiny_raw), stage=1, stage1_epochs=None)
    init = build_trainer(config_from_dict(raw1), tmp_path / "x").model.state_dict()
    assert torch.equal(stage1["head.weight"], init["head.weight"])  # no F in stage 1
    # the prediction: certainty weighting of H_m0, H_m1 and F
    trainer = build_trainer(config_from_dict(_raw(tiny_raw)), tmp_path / "y")
    model = trainer.model
    model.load_state_dict(last)
    model.eval()
    inputs, _ = next(iter(trainer.loaders["val"]))
    with torch.no_grad():
        z = model.encode(inputs)
        o = [model.unimodal_heads["m0"](z["m0"]), model.unimodal_heads["m1"](z["m1"]),
             model.head(torch.cat([z["m0"], z["m1"]], 1))]
        assert torch.allclose(trainer.method.predict(model, inputs), certainty_combine(o, 1.0))
    for r in read_jsonl(tmp_path / "reports.jsonl"):
        w = r["dimml"]["val"]["weight_mean"]
        assert set(w) == {"m0", "m1", "fused"} and sum(w.values()) == pytest.approx(1.0)


def test_resume_in_stage_two_equals_uninterrupted(tiny_raw, tmp_path, resume_check):
    # stage 1 of one epoch (DUC from epoch 0): the crash at epoch 1 hits stage 2 only
    rf, _, _, _ = resume_check(_raw(tiny_raw, stage1_epochs=1, duc_start=0), tmp_path,
                               crash_epoch=1)
    assert len(rf) == 2


@pytest.mark.parametrize("where", ["stage1", "between"])
def test_a_crash_in_stage_one_or_between_stages_resumes_equal(where, tiny_raw, tmp_path,
                                                             crash_run, strip_time):
    raw = _raw(tiny_raw)
    full = train(config_from_dict(raw), run_dir=tmp_path / "full")
    if where == "stage1":  # after the dimensions were found (epoch 1): they come from last.pt
        crash_run(raw, tmp_path / "cut", 2, when=lambda t: "prerequisites" in str(t.run_dir))
        assert load_checkpoint(tmp_path / "cut/prerequisites/stage1/checkpoints/last.pt"
                               )["method"]["dims"] is not None
    else:  # stage 1 finished, stage 2 loaded its weights and stopped in its first epoch
        crash_run(raw, tmp_path / "cut", 0,
                  when=lambda t: "prerequisites" not in str(t.run_dir))
        assert (tmp_path / "cut/prerequisites/stage1/summary.json").is_file()
        assert not (tmp_path / "cut/checkpoints/last.pt").exists()
    resumed = train(run_dir=tmp_path / "cut", resume=True)
    for key in ("best_epoch", "val", "test", "test_last_epoch", "passes"):
        assert resumed[key] == full[key], key
    for sub in ("", "prerequisites/stage1/"):
        for name in ("metrics.jsonl", "reports.jsonl"):
            assert strip_time(read_jsonl(tmp_path / "cut" / sub / name)) == strip_time(
                read_jsonl(tmp_path / "full" / sub / name)), sub + name


def test_stage_one_is_reused_when_present(tiny_raw, tmp_path, strip_time):
    raw = _raw(tiny_raw)
    a = train(config_from_dict(raw), run_dir=tmp_path / "a")
    (tmp_path / "b/prerequisites").mkdir(parents=True)
    shutil.copytree(tmp_path / "a/prerequisites/stage1", tmp_path / "b/prerequisites/stage1")
    mtime = (tmp_path / "b/prerequisites/stage1/summary.json").stat().st_mtime_ns
    b = train(config_from_dict(raw), run_dir=tmp_path / "b")
    assert (tmp_path / "b/prerequisites/stage1/summary.json").stat().st_mtime_ns == mtime
    assert b["test"] == a["test"] and b["passes"] == a["passes"]
    assert strip_time(read_jsonl(tmp_path / "b/metrics.jsonl")) == strip_time(
        read_jsonl(tmp_path / "a/metrics.jsonl"))
    assert len(read_jsonl(tmp_path / "a/prerequisites/stage1/metrics.jsonl")) == 3


def test_cli_run(tiny_raw, tmp_path, cli_train):
    run = cli_train(_raw(tiny_raw, stage1_epochs=None), tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "dimml"
    assert summary["passes"]["prerequisites"] == 2.0  # stage 1 ran train.epochs
    assert "method" in load_checkpoint(run / "checkpoints/best.pt")


@pytest.mark.parametrize("key, bad", [("stage", 3), ("w", -1), ("tau", 0), ("duc_start", -1),
                                      ("duc_start", 1.5), ("tau2", 0), ("stage1_epochs", 0)])
def test_bad_options_are_refused(key, bad):
    with pytest.raises(ConfigError, match=f"method.{key}"):
        DIMML(**{key: bad})


def test_stage1_epochs_is_refused_on_a_stage_one_run():
    with pytest.raises(ConfigError, match="method.stage1_epochs"):
        DIMML(stage=1, stage1_epochs=5)
    assert DIMML(stage=1).prerequisites() == {}
    assert DIMML(w=0.5).prerequisites() == {"stage1": {"method": {
        "name": "dimml", "stage": 1, "w": 0.5, "tau": 50.0, "duc_start": 20, "tau2": 1.0}}}


@pytest.mark.parametrize("change, match", [
    (lambda raw: raw["model"]["encoders"]["m1"].update(hidden=[8]),
     r"dimml needs one head S shared by every modality.*\{'m0': 16, 'm1': 8\}"),
    (lambda raw: raw["model"].update(fusion="sum"), "dimml needs concat fusion"),
    (lambda raw: (raw["data"].update(dims=[6], separations=[3.0]),
                  raw["model"]["encoders"].pop("m1")), "at least 2 modalities"),
])
def test_unsuitable_models_are_refused_before_anything_is_written(change, match, tiny_raw,
                                                                  tmp_path):
    raw = _raw(tiny_raw)
    change(raw)
    with pytest.raises(ValueError, match=match):
        train(config_from_dict(raw), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_stage_two_without_its_stage_one_run_is_refused(tiny_raw, tmp_path):
    trainer = build_trainer(config_from_dict(_raw(tiny_raw)), tmp_path)
    with pytest.raises(ValueError, match="prerequisite 'stage1'"):
        trainer.fit()
