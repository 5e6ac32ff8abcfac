"""train.precision (32 | bf16 | 16-mixed), the trainer's host syncs, and train.compile."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from mmrelearn.config import ConfigError, config_from_dict
from mmrelearn.methods.base import FitContext, Method
from mmrelearn.models import build_model
from mmrelearn.precision import Precision
from mmrelearn.relearn import extract_features, model_features
from mmrelearn.train import NonFiniteLossError, build_trainer, train
from mmrelearn.train.checkpoint import read_jsonl


def _with(raw, **train_keys):
    raw = copy.deepcopy(raw)
    raw["train"].update(train_keys)
    return raw


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("value, stored", [(32, "32"), ("32", "32"), ("bf16", "bf16"),
                                           ("16-mixed", "16-mixed")])
def test_precision_values_are_stored_as_strings(tiny_raw, value, stored):
    assert config_from_dict(_with(tiny_raw, precision=value)).train.precision == stored
    assert config_from_dict(tiny_raw).train.precision == "32"  # the default


@pytest.mark.parametrize("key, value, match", [
    ("precision", "fp16", r"train.precision: expected one of \[32, '32', 'bf16', '16-mixed'\]"),
    ("precision", 16, "train.precision: expected one of"),
    ("progress_every", 0, "train.progress_every must be an int >= 1, got 0"),
    ("compile", "yes", "train.compile: expected bool"),
])
def test_bad_values_name_the_key(tiny_raw, key, value, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(_with(tiny_raw, **{key: value}))


@pytest.mark.parametrize("method", [{"name": "mla"}, {"name": "mmpareto"}])
def test_16_mixed_refuses_an_own_step_without_loss_scaling(tiny_raw, tmp_path, method):
    tiny_raw["method"] = method
    with pytest.raises(ConfigError, match=f"train.precision: '16-mixed' is not available with "
                                          f"method '{method['name']}'.*use 'bf16' or 32"):
        train(config_from_dict(_with(tiny_raw, precision="16-mixed")), run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # refused before anything is written
    build_trainer(config_from_dict(_with(tiny_raw, precision="bf16")), tmp_path / "r")


def test_reconboost_scales_its_own_step(tiny_raw, tmp_path):
    tiny_raw["method"] = {"name": "reconboost", "epochs_per_stage": 1, "correct_epoch": 1,
                          "pretrain": False}
    tiny_raw["train"].update(epochs=2, monitor_purity=False, precision="16-mixed")
    train(config_from_dict(tiny_raw), run_dir=tmp_path)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(math.isfinite(v) for r in records for v in r["train"].values())


# ------------------------------------------------------------------ autocast and scaling


class Spy(Method):
    """Records the dtypes of the training and evaluation logits and the hook's gradients."""

    def __init__(self):
        self.seen = {"train": set(), "eval": set(), "grad": []}

    def forward(self, ctx, inputs):
        out = ctx.model(inputs)
        self.seen["train"].add(out.logits.dtype)
        return out

    def predict(self, model, inputs):
        logits = model(inputs).logits
        self.seen["eval"].add(logits.dtype)
        return logits

    def on_before_optimizer_step(self, ctx):
        self.seen["grad"].append(ctx.model.head.weight.grad.clone())


@pytest.mark.parametrize("precision, dtype", [("32", torch.float32), ("bf16", torch.bfloat16),
                                              ("16-mixed", torch.float16)])
def test_forward_and_evaluation_autocast_gradients_stay_float32(tiny_raw, tmp_path, precision,
                                                               dtype):
    tiny_raw["train"].update(epochs=1, monitor_purity=False, precision=precision)
    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path)
    trainer.method = Spy()
    trainer._train_epoch(0)
    trainer._evaluate("val")
    seen = trainer.method.seen
    assert seen["train"] == {dtype} and seen["eval"] == {dtype}
    assert all(g.dtype == torch.float32 for g in seen["grad"]) and len(seen["grad"]) == 4


def _one_step_grad(precision: str) -> torch.Tensor:
    """The head's gradient that on_before_optimizer_step sees on one fixed batch."""
    torch.manual_seed(0)
    model = build_model({"a": {"type": "mlp", "hidden": [8]}}, {"a": (5,)}, 3)
    ctx = FitContext(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     device=torch.device("cpu"), num_classes=3, epochs=1, train_loader=(),
                     diag_train_loader=(), val_loader=(),
                     precision=Precision(precision, torch.device("cpu")))
    spy = Spy()
    x = {"a": torch.randn(16, 5, generator=torch.Generator().manual_seed(1))}
    spy.training_step(ctx, x, torch.arange(16) % 3)
    return spy.seen["grad"][0]


def test_gradient_edits_see_unscaled_gradients_under_16_mixed():
    exact, fp16 = _one_step_grad("32"), _one_step_grad("16-mixed")
    # the loss was scaled by 2**16 for backward; the hook sees the true gradient, to fp16
    assert torch.allclose(fp16, exact, rtol=1e-2, atol=1e-3)
    assert not torch.equal(fp16, exact)  # the forward really ran in half precision


def test_diagnosis_features_are_float32_under_autocast(tiny_raw, tmp_path):
    trainer = build_trainer(config_from_dict(_with(tiny_raw, precision="bf16")), tmp_path)
    with trainer.ctx.autocast():  # even inside autocast: the clustered features are fp32
        feats, _ = extract_features(trainer.model.encoders, model_features(trainer.model, trainer.device),
                                    trainer.loaders["val"], trainer.device)
    assert {f.dtype for f in feats.values()} == {torch.float32}


def test_bf16_trains_close_to_fp32(tiny_raw, tmp_path, strip_time):
    full = train(config_from_dict(tiny_raw), run_dir=tmp_path / "fp32")
    half = train(config_from_dict(_with(tiny_raw, precision="bf16")),
                 run_dir=tmp_path / "bf16")
    r32, r16 = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("fp32", "bf16"))
    assert strip_time(r32) != strip_time(r16)  # bf16 really ran
    for a, b in zip(r32, r16):
        assert math.isfinite(b["train"]["total"])
        assert b["train"]["total"] == pytest.approx(a["train"]["total"], abs=0.05)
    assert half["test"]["acc"] == pytest.approx(full["test"]["acc"], abs=0.05)
    # D&R still diagnosed and re-initialised at epoch 2 (purities from fp32 features)
    reports = [read_jsonl(tmp_path / d / "reports.jsonl") for d in ("fp32", "bf16")]
    assert [r["epoch"] for r in reports[1]] == [r["epoch"] for r in reports[0]] == [2]


@pytest.mark.parametrize("precision", ["bf16", "16-mixed"])
def test_resume_equals_uninterrupted(tiny_raw, tmp_path, resume_check, precision):
    tiny_raw["train"].update(epochs=4, precision=precision)
    _, wf, at_crash, _ = resume_check(tiny_raw, tmp_path, crash_epoch=3)
    if precision == "16-mixed":  # the loss scale and its growth tracker go on
        assert set(at_crash["grad_scaler"]) >= {"scale", "_growth_tracker"}
        assert wf["grad_scaler"] is not None
    else:
        assert "grad_scaler" not in at_crash


# ------------------------------------------------------------------ host syncs, non-finite


def _count_syncs(monkeypatch) -> dict[str, int]:
    """Count the Tensor -> Python conversions (each waits for the device)."""
    counts = {"n": 0}
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            counts["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return counts


def test_the_host_reads_the_device_every_n_steps_only(tiny_raw, tmp_path, monkeypatch):
    tiny_raw["method"] = {"name": "joint"}

    def syncs(batch_size: int, every: int) -> int:
        tiny_raw["train"].update(batch_size=batch_size, progress_every=every, progress=True)
        trainer = build_trainer(config_from_dict(tiny_raw), tmp_path)
        with monkeypatch.context() as patch:
            counts = _count_syncs(patch)
            means, _ = trainer._train_epoch(0)
        assert set(means) == {"ce", "total"} and trainer.ctx.step == math.ceil(120 / batch_size)
        return counts["n"]

    # the loader's shuffle reads a few numbers once an epoch; the steps read nothing: 15
    # batches cost what 4 do, and each read (every `every` steps, and at the end) is one
    once = syncs(32, 50)
    assert syncs(8, 50) == once
    assert syncs(32, 2) == once + 1  # reads after 2 and 4 (the end): 2 instead of 1
    assert syncs(32, 3) == once + 1  # after 3, and at the end
    assert syncs(32, 1) == once + 3


def test_a_method_reading_float_terms_still_gets_them(tiny_raw, tmp_path):
    got = []

    class Reader(Method):
        def on_train_batch_end(self, ctx, terms):
            got.append(terms)

    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path)
    trainer.method = Reader()
    means, _ = trainer._train_epoch(0)
    assert len(got) == 4 and all(type(t["ce"]) is float for t in got)
    assert means["ce"] == sum(t["ce"] for t in got) / 4  # the same float64 sums as before


class NanAt(Method):
    """The default step, with the loss of one step (counted over the run) poisoned."""

    def __init__(self, bad_step: int):
        self.bad_step, self.calls = bad_step, 0

    def loss_terms(self, ctx, output, labels):
        terms = super().loss_terms(ctx, output, labels)
        self.calls += 1
        if ctx.step == self.bad_step:
            terms["ce"] = terms["ce"] * float("nan")
        return terms


@pytest.mark.parametrize("every, calls", [(1, 6), (50, 8)])
def test_a_non_finite_step_stops_at_the_next_read(tiny_raw, tmp_path, every, calls):
    tiny_raw["method"] = {"name": "joint"}
    tiny_raw["train"].update(epochs=3, progress_every=every)
    trainer = build_trainer(config_from_dict(tiny_raw), tmp_path)
    trainer.method = NanAt(bad_step=5)  # epoch 1 (4 steps an epoch), its second step
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 5 \(the first; terms not "
                                                 r"finite over the epoch: \['ce'\]\).*last "
                                                 r"good epoch"):
        trainer.fit()
    # every=1: stopped right after the bad step; every=50: at the epoch's end
    assert trainer.method.calls == calls
    state = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    assert state["epoch"] == 0 and [r["epoch"] for r in read_jsonl(
        tmp_path / "metrics.jsonl")] == [0]
    best = torch.load(tmp_path / "checkpoints/best.pt", weights_only=True)
    assert best["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in best["model"].values() if v.is_floating_point())


# ------------------------------------------------------------------ compile


@pytest.mark.parametrize("method", [{"name": "mla"}, {"name": "agm"}, {"name": "reconboost"}])
def test_compile_refuses_methods_with_passes_of_their_own(tiny_raw, tmp_path, method):
    tiny_raw["method"] = method
    with pytest.raises(ConfigError, match=f"train.compile: method '{method['name']}' trains "
                                          f"through passes of its own"):
        build_trainer(config_from_dict(_with(tiny_raw, compile=True)), tmp_path)


def test_compile_without_a_compiler_is_refused(tiny_raw, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match="train.compile: on CPU torch.compile .* no compiler"):
        build_trainer(config_from_dict(_with(tiny_raw, compile=True)), tmp_path)


def _compile_works() -> str:
    """'' when torch.compile runs here, else why not (the test is skipped with it)."""
    try:
        layer = nn.Linear(2, 2)
        layer.compile()
        layer(torch.ones(1, 2)).sum().backward()
        return ""
    except Exception as err:  # no compiler, unsupported Python, ...
        return f"torch.compile does not run here: {type(err).__name__}: {err}"


def test_a_compiled_run_matches_the_eager_run(tiny_raw, tmp_path):
    why = _compile_works()
    if why:
        pytest.skip(why)
    tiny_raw["train"].update(epochs=3)  # D&R acts at epoch 2: in place on compiled weights
    # compiled dropout draws its masks otherwise than eager dropout: none here
    tiny_raw["model"]["encoders"]["m1"]["dropout"] = 0.0
    eager = train(config_from_dict(tiny_raw), run_dir=tmp_path / "eager")
    compiled = train(config_from_dict(_with(tiny_raw, compile=True)), run_dir=tmp_path / "c")
    re, rc = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("eager", "c"))
    for a, b in zip(re, rc):
        assert b["train"]["total"] == pytest.approx(a["train"]["total"], rel=1e-4)
    assert compiled["test"]["acc"] == pytest.approx(eager["test"]["acc"], abs=1e-9)
    keys = torch.load(tmp_path / "c/checkpoints/last.pt", weights_only=True)["model"].keys()
    assert keys == torch.load(tmp_path / "eager/checkpoints/last.pt",
                              weights_only=True)["model"].keys()  # no _orig_mod. prefix
