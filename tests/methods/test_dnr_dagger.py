"""D&R-dagger: D&R plus a cross-entropy per unimodal head; re-learning leaves those heads alone."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mmrelearn.config import config_from_dict
from mmrelearn.methods.dnr import DnR
from mmrelearn.methods.dnr_dagger import DnRDagger
from mmrelearn.models import ModelOutput
from mmrelearn.train import build_trainer
from mmrelearn.train.checkpoint import read_jsonl


def _dagger_raw(raw, **method):
    raw["method"] = {"name": "dnr_dagger", "lam": 3.0, "every": 2, **method}
    raw["train"]["monitor_purity"] = False
    return raw


def test_loss_terms_by_hand():
    method = DnRDagger()
    assert isinstance(method, DnR) and method.model_overrides() == {"unimodal_heads": True}
    y = torch.tensor([0, 1])
    out = ModelOutput(logits=torch.tensor([[2.0, 0.0], [0.0, 0.0]]), features={},
                      unimodal_logits={"a": torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]),
                                       "v": torch.tensor([[1.0, 1.0], [0.0, 5.0]])})
    terms = method.loss_terms(SimpleNamespace(epoch=0), out, y)
    assert list(terms) == ["ce", "ce_a", "ce_v"]
    ce = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 2
    ce_a = (math.log(4.0) + math.log(2.0)) / 2  # p[y] = 1/4, then 1/2
    ce_v = (math.log(2.0) + math.log(1 + math.exp(-5.0))) / 2
    assert float(terms["ce"]) == pytest.approx(ce)
    assert float(terms["ce_a"]) == pytest.approx(ce_a)
    assert float(terms["ce_v"]) == pytest.approx(ce_v)


def test_relearning_touches_encoders_only_not_the_unimodal_heads(tiny_raw, tmp_path, reinit_run):
    raw = _dagger_raw(tiny_raw)
    raw["train"]["epochs"] = 4
    # reinit_run checks: encoders moved by exactly alpha; unimodal heads, fused head, fusion
    # and buffers untouched
    trainer, init, seen = reinit_run(raw, tmp_path)
    assert trainer.model.unimodal_heads is not None
    assert [e for e, (_, _, r) in seen.items() if r is not None] == [2]  # H = 2: epoch 2 only
    before, after, report = seen[2]
    assert report["dnr"]["applied"]
    assert any(k.startswith("unimodal_heads.") for k in before)
    # the unimodal heads are trained by their own CE
    assert not torch.equal(init["unimodal_heads.m1.weight"], after["unimodal_heads.m1.weight"])


def test_resume_equals_uninterrupted(tiny_raw, tmp_path, resume_check):
    raw = _dagger_raw(tiny_raw)
    raw["train"]["epochs"] = 4
    resume_check(raw, tmp_path, crash_epoch=3)  # after D&R acted at the end of epoch 2


def test_cli_end_to_end(tiny_raw, tmp_path, cli_train):
    raw = _dagger_raw(tiny_raw, every=1)
    raw["train"]["epochs"] = 4
    cli_train(raw, tmp_path / "run")
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run/reports.jsonl")] == [1, 2]
    records = read_jsonl(tmp_path / "run/metrics.jsonl")
    assert set(records[0]["train"]) == {"ce", "ce_m0", "ce_m1", "total"}


def test_refuses_a_model_without_unimodal_heads(tiny_raw, tmp_path):
    trainer = build_trainer(config_from_dict(_dagger_raw(tiny_raw)), tmp_path)
    trainer.model.unimodal_heads = None
    with pytest.raises(ValueError, match="unimodal_heads=True"):
        trainer.fit()
    assert not (tmp_path / "metrics.jsonl").exists()
