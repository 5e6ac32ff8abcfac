"""Every method on MBT (on a tiny image + spectrogram dataset registered for the test only):
D&R re-initialises exactly the modality streams (Eq. 6) and reads the CLS outputs, a resumed run
equals an uninterrupted one, the CLS heads give OGM-GE / PMR / G-Blending / D&R-dagger their
per-modality logits, AGM zeroes inputs, Greedy refuses with its reason."""
from __future__ import annotations

import pytest
import torch

from mmrelearn.config import config_from_dict
from mmrelearn.data import DATASETS, RawData
from mmrelearn.methods.base import true_class_scores
from mmrelearn.methods.gblending import branch_parameters, train_copy
from mmrelearn.relearn import model_features
from mmrelearn.train import build_trainer, train
from mmrelearn.train.checkpoint import read_jsonl

VIT = {"type": "vit", "width": 8, "layers": 2, "heads": 2, "patch_size": 4, "dropout": 0.1}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _tiny_av(num_samples: int = 48, seed: int = 0) -> RawData:
    """An image (1, 8, 8) showing the label clearly and a spectrogram (8, 12) faintly; 3 classes."""
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.arange(num_samples) % 3)[torch.randperm(num_samples, generator=gen)]
    shift = labels.float()
    img = torch.randn(num_samples, 1, 8, 8, generator=gen) + 1.5 * shift[:, None, None, None]
    spec = torch.randn(num_samples, 8, 12, generator=gen) + 0.3 * shift[:, None, None]
    return RawData({"img": img, "spec": spec}, labels, 3, ["0", "1", "2"])


@pytest.fixture
def mbt_raw(monkeypatch):
    monkeypatch.setitem(DATASETS, "tiny_av", _tiny_av)
    return {"name": "mbt_tiny", "seed": 0,
            "data": {"name": "tiny_av", "val_fraction": 0.25, "test_fraction": 0.25,
                     "split_seed": 0},
            "model": {"encoders": {"img": dict(VIT), "spec": dict(VIT)}, "fusion": "mbt",
                      "mbt": {"bottlenecks": 2, "fusion_layer": 1}},
            "method": {"name": "dnr", "lam": 3.0, "every": 1, "n_init": 3},
            "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
            "train": {"epochs": 3, "batch_size": 8, "progress": False}}


def test_dnr_reinitialises_exactly_the_streams(mbt_raw, tmp_path, reinit_run):
    # reinit_run checks every tensor: encoders.* (whole streams) by Eq. 6 with their
    # modality's alpha; fusion.bottleneck and unimodal_heads.* unchanged
    trainer, init, seen = reinit_run(mbt_raw, tmp_path)
    applied = [r for _, _, r in seen.values() if r is not None and r["dnr"]["applied"]]
    assert len(applied) == 1  # end of epoch 1 (epoch 2 is the last: no re-init)
    alphas = [d["alpha"] for d in applied[0]["dnr"]["modalities"].values()]
    assert max(alphas) > 0  # a real move toward theta_init
    before, after, _ = seen[1]
    key = "encoders.spec.blocks.1.attn.qkv.weight"  # a block after the fusion layer
    a = applied[0]["dnr"]["modalities"]["spec"]["alpha"]
    assert torch.allclose(after[key], (1 - a) * before[key] + a * init[key], atol=1e-7)
    assert torch.equal(before["fusion.bottleneck"], after["fusion.bottleneck"])


def test_diagnosis_features_are_the_cls_outputs(mbt_raw, tmp_path):
    trainer = build_trainer(config_from_dict(mbt_raw), tmp_path)
    model = trainer.model.eval()
    inputs, y = next(iter(trainer.loaders["val"]))
    feats, labels = model_features(model, torch.device("cpu"))((inputs, y))
    with torch.no_grad():
        out = model(inputs)
        for m in ("img", "spec"):
            assert torch.equal(feats[m], out.features[m])
            cls = model.encoders[m].norm(model.layer_tokens(inputs)[-1][m])[:, 0]
            assert torch.allclose(feats[m], cls, atol=1e-6)


def test_resume_equals_uninterrupted(mbt_raw, tmp_path, resume_check):
    resume_check(mbt_raw, tmp_path, crash_epoch=2)  # after D&R acted at the end of epoch 1


def test_dnr_dagger_adds_a_ce_per_cls_head(mbt_raw, tmp_path):
    mbt_raw["method"] = {"name": "dnr_dagger", "every": 1}
    mbt_raw["train"]["epochs"] = 1
    train(config_from_dict(mbt_raw), run_dir=tmp_path)
    assert set(read_jsonl(tmp_path / "metrics.jsonl")[0]["train"]) == {
        "ce", "ce_img", "ce_spec", "total"}


def test_ogm_ge_scores_come_from_the_cls_heads(mbt_raw, tmp_path):
    mbt_raw["method"] = {"name": "ogm_ge", "conv_only": False}
    trainer = build_trainer(config_from_dict(mbt_raw), tmp_path)
    method, model = trainer.method, trainer.model
    method.on_fit_start(trainer.ctx)
    inputs, y = next(iter(trainer.loaders["train"]))
    out = model(inputs)
    terms = method.loss_terms(trainer.ctx, out, y)
    assert set(terms) == {"ce"}  # the heads are the classifier: no probe term
    assert method.scores == true_class_scores(out.unimodal_logits, y)


def test_pmr_and_gblending_run_on_the_cls_heads(mbt_raw, tmp_path):
    mbt_raw["train"]["epochs"] = 1
    mbt_raw["method"] = {"name": "pmr"}
    train(config_from_dict(mbt_raw), run_dir=tmp_path / "pmr")
    assert set(read_jsonl(tmp_path / "pmr/metrics.jsonl")[0]["train"]) == {"ce", "pce", "total"}
    mbt_raw["method"] = {"name": "gblending", "super_epoch": 1, "holdout": 0.25}
    trainer = build_trainer(config_from_dict(mbt_raw), tmp_path / "gb")
    model = trainer.model
    # the fused copy trains the whole model: its prediction is the heads' mean
    assert {id(p) for p in branch_parameters(model, "fused")} == {id(p) for p in model.parameters()}
    assert {id(p) for p in branch_parameters(model, "img")} == {
        id(p) for p in [*model.encoders["img"].parameters(),
                        *model.unimodal_heads["img"].parameters()]}
    # a uni-modal copy trains stream img and its head through the whole model (head img
    # reads the bottleneck); the spec stream and the bottleneck stay as they were
    copy = train_copy(trainer.ctx, "img", 1)
    before, after = model.state_dict(), copy.state_dict()
    for key in before:
        moved = not torch.equal(before[key], after[key])
        assert moved == key.startswith(("encoders.img.", "unimodal_heads.img.")), key
    trainer.fit()
    report = read_jsonl(tmp_path / "gb/reports.jsonl")[0]["gblending"]
    assert set(report["weights"]) == {"fused", "img", "spec"}


def test_agm_zeroes_a_modality_input(mbt_raw, tmp_path):
    mbt_raw["method"] = {"name": "agm"}  # clip reads the CLS heads' weight gradients
    mbt_raw["train"]["epochs"] = 1
    trainer = build_trainer(config_from_dict(mbt_raw), tmp_path)
    seen = []
    original = type(trainer.model).forward

    def spy(self, inputs):
        seen.append({m: bool((x == 0).all()) for m, x in inputs.items()})
        return original(self, inputs)

    trainer.model.forward = spy.__get__(trainer.model)
    trainer.fit()
    assert seen[:3] == [{"img": False, "spec": False}, {"img": False, "spec": True},
                        {"img": True, "spec": False}]  # total, f(img, 0), f(0, spec)


def test_greedy_refuses_mbt_with_the_reason(mbt_raw, tmp_path):
    mbt_raw["method"] = {"name": "greedy"}
    trainer = build_trainer(config_from_dict(mbt_raw), tmp_path)
    with pytest.raises(ValueError, match="not defined on MBT.*bottleneck tokens"):
        trainer.fit()
    assert not (tmp_path / "metrics.jsonl").exists()
