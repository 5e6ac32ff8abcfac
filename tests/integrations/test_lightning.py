"""integrations/lightning.py: DiagnoseRelearnCallback in a real Lightning Trainer on CPU."""
from __future__ import annotations

import copy
import csv
import importlib
import logging
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

pl = pytest.importorskip("lightning.pytorch")

from mmrelearn.relearn import DiagnoseRelearn  # noqa: E402
from mmrelearn.integrations.lightning import DiagnoseRelearnCallback  # noqa: E402

README = Path(__file__).resolve().parents[2] / "README.md"
MODALITIES = ("audio", "video")


def _samples(n: int, seed: int) -> list:
    """``n`` samples ({"audio": (4,), "video": (4,)}, label) of 3 classes; audio is the clearer."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    xa = torch.randn(n, 4, generator=gen) + 1.5 * y[:, None]
    xv = torch.randn(n, 4, generator=gen) + 0.3 * y[:, None]
    return [({"audio": xa[i], "video": xv[i]}, y[i]) for i in range(n)]


TRAIN, VAL = _samples(48, 11), _samples(24, 12)  # seeds with gaps > 0 for both modalities


class TwoModal(pl.LightningModule):
    """Two MLP encoders, concatenation, a linear head; SGD with momentum."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoders = nn.ModuleDict({m: nn.Sequential(nn.Linear(4, 8), nn.ReLU())
                                       for m in MODALITIES})
        self.head = nn.Linear(16, 3)

    def forward(self, inputs):
        return self.head(torch.cat([self.encoders[m](inputs[m]) for m in MODALITIES], 1))

    def training_step(self, batch, batch_idx):
        inputs, labels = batch
        return nn.functional.cross_entropy(self(inputs), labels)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


class Probe(pl.Callback):
    """Records the encoders' weights at every train epoch end (before or after D&R: its place
    in the callback list decides)."""

    def __init__(self) -> None:
        self.states: dict[int, dict] = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.states[trainer.current_epoch] = copy.deepcopy(pl_module.encoders.state_dict())


def _trainer(tmp_path, callbacks, epochs, **kw) -> "pl.Trainer":
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, callbacks=callbacks,
                      enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, default_root_dir=tmp_path, **kw)


def _loaders(shuffle: bool = True):
    gen = torch.Generator().manual_seed(0)
    return (DataLoader(TRAIN, batch_size=16, shuffle=shuffle, generator=gen),
            DataLoader(VAL, batch_size=16))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reinit_is_the_librarys_on_the_same_features(tmp_path):
    model = TwoModal()
    init = copy.deepcopy(model.encoders)  # theta_init: the callback snapshots at fit start
    before, after = Probe(), Probe()
    dnr = DiagnoseRelearnCallback(num_classes=3, lam=3.0, every=2)
    train, val = _loaders(shuffle=True)  # the callback must not diagnose in this order
    _trainer(tmp_path, [before, dnr, after], epochs=3).fit(model, train, val)

    assert [r.epoch for r in dnr.reports] == [2] and dnr.times_applied == 1
    report = dnr.reports[0]
    assert report.n_train == 48 and report.n_val == 24  # whole splits, last batch kept
    # the library on a copy of the encoders as they were just before the re-init
    encoders = copy.deepcopy(init)
    encoders.load_state_dict(before.states[2])
    expected = DiagnoseRelearn(
        encoders, 3, DataLoader(TRAIN, batch_size=16), DataLoader(VAL, batch_size=16),
        lam=3.0, every=2, init_states={m: init[m].state_dict() for m in MODALITIES}).step(2)
    assert report.to_dict() == expected.to_dict()  # same purities, gaps, alphas
    for m in MODALITIES:
        d = report.modalities[m]
        assert d.alpha == pytest.approx(torch.tanh(torch.tensor(3.0 * d.gap)).item(), abs=1e-7)
        assert d.alpha > 0  # the re-init did move something
        post = {k[len(m) + 1:]: v for k, v in after.states[2].items() if k.startswith(m + ".")}
        assert _equal(post, encoders[m].state_dict())
        for k, v in post.items():  # Eq. 6 by hand: alpha * init + (1 - alpha) * current
            pre = before.states[2][f"{m}.{k}"]
            want = d.alpha * init[m].state_dict()[k] + (1 - d.alpha) * pre
            torch.testing.assert_close(v, want, rtol=0, atol=1e-6)


def test_acts_only_every_h_epochs_and_logs(tmp_path):
    model = TwoModal()
    before, after = Probe(), Probe()
    dnr = DiagnoseRelearnCallback(num_classes=3, every=2, max_times=None)
    trainer = _trainer(tmp_path, [before, dnr, after], epochs=5,
                       logger=pl.loggers.CSVLogger(tmp_path, name="csv"))
    trainer.fit(model, *_loaders())
    assert [r.epoch for r in dnr.reports] == [2, 4]
    for epoch in range(5):  # weights move at the end of epochs 2 and 4 only
        assert _equal(before.states[epoch], after.states[epoch]) == (epoch not in (2, 4))
    last = dnr.reports[-1].modalities
    for m in MODALITIES:
        for key in ("p_train", "p_val", "gap", "alpha"):
            logged = trainer.callback_metrics[f"dnr/{m}/{key}"]
            assert logged.item() == pytest.approx(getattr(last[m], key))
    assert trainer.callback_metrics["dnr/times_applied"].item() == 2
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("dnr/audio/alpha")]
    assert [int(r["epoch"]) for r in rows] == [2, 4]


def test_max_times_caps_the_reinits(tmp_path):
    dnr = DiagnoseRelearnCallback(num_classes=3, every=1, max_times=2)
    _trainer(tmp_path, [dnr], epochs=4).fit(TwoModal(), *_loaders())
    assert [r.epoch for r in dnr.reports] == [1, 2] and dnr.times_applied == 2


def _fit(tmp_path, epochs, ckpt_path=None, checkpoints=None, on_train_epoch_end=True):
    dnr = DiagnoseRelearnCallback(num_classes=3, every=2, max_times=2)
    callbacks = [dnr]
    if checkpoints is not None:
        callbacks.append(pl.callbacks.ModelCheckpoint(
            dirpath=checkpoints, filename="{epoch}", save_top_k=-1, every_n_epochs=1,
            save_on_train_epoch_end=on_train_epoch_end))
    model = TwoModal(seed=0 if ckpt_path is None else 7)  # a resumed run must not use these
    trainer = _trainer(tmp_path, callbacks, epochs, enable_checkpointing=checkpoints is not None)
    trainer.fit(model, *_loaders(shuffle=False), ckpt_path=ckpt_path)
    return model, dnr


@pytest.mark.parametrize("on_train_epoch_end", [True, False])
def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path, on_train_epoch_end):
    # every=2, max_times=2 over 7 epochs: re-inits at the ends of epochs 2 and 4, capped at 6.
    # Checkpoints are written after the re-init of their epoch (at train epoch end) or before
    # it (at validation end): Lightning then ends that epoch again on resume.
    full, full_dnr = _fit(tmp_path, 7, checkpoints=tmp_path / "ckpt",
                          on_train_epoch_end=on_train_epoch_end)
    assert [r.epoch for r in full_dnr.reports] == [2, 4]
    for resume_at in (1, 2):  # before the first re-init (theta_init from the checkpoint), after
        model, dnr = _fit(tmp_path, 7, ckpt_path=tmp_path / "ckpt" / f"epoch={resume_at}.ckpt")
        assert _equal(model.state_dict(), full.state_dict()), resume_at
        assert [r.to_dict() for r in dnr.reports] == [r.to_dict() for r in full_dnr.reports]
        assert dnr.times_applied == 2
        for m in MODALITIES:
            assert _equal(dnr.dnr.init_states[m], full_dnr.dnr.init_states[m])


def test_resuming_a_checkpoint_without_its_state_warns(tmp_path, caplog):
    trainer = _trainer(tmp_path, [], 1)  # a run without the callback
    trainer.fit(TwoModal(), *_loaders(shuffle=False))
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    with caplog.at_level(logging.WARNING, logger="mmrelearn.integrations.lightning"):
        _fit(tmp_path, 2, ckpt_path=tmp_path / "plain.ckpt")
    assert "holds no state of this callback" in caplog.text


def test_custom_encoders_features_and_loaders(tmp_path):
    seen = []

    def features(module, batch):
        inputs, labels = batch
        seen.append(labels.numel())
        return {"a": module.encoders["audio"](inputs["audio"])}, labels

    dnr = DiagnoseRelearnCallback(
        num_classes=3, every=1, max_times=1, features=features,
        encoders=lambda module: {"a": module.encoders["audio"]},
        train_loader=DataLoader(TRAIN[:30], batch_size=10),
        val_loader=DataLoader(VAL[:20], batch_size=10))
    model = TwoModal()
    video = copy.deepcopy(model.encoders["video"].state_dict())
    probe = Probe()
    _trainer(tmp_path, [probe, dnr], epochs=2).fit(model, *_loaders())
    report = dnr.reports[0]
    assert list(report.modalities) == ["a"] and (report.n_train, report.n_val) == (30, 20)
    assert seen == [10, 10, 10, 10, 10]
    # only the returned encoder is touched: video moves by training alone, not at the re-init
    after = model.encoders["video"].state_dict()
    assert all(torch.equal(after[k], probe.states[1][f"video.{k}"]) for k in after)
    assert not _equal(after, video)


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="DiagnoseRelearnCallback: lam must be"):
        DiagnoseRelearnCallback(num_classes=3, lam=-1.0)
    with pytest.raises(ValueError, match="DiagnoseRelearnCallback: every must be"):
        DiagnoseRelearnCallback(num_classes=3, every=0)
    with pytest.raises(ValueError, match="num_classes must be"):
        DiagnoseRelearnCallback(num_classes=1)
    with pytest.raises(ValueError, match="train_loader shuffles"):
        DiagnoseRelearnCallback(num_classes=3, train_loader=DataLoader(TRAIN, shuffle=True))
    with pytest.raises(ValueError, match="has no attribute 'towers'"):
        _trainer(tmp_path, [DiagnoseRelearnCallback(num_classes=3, encoders="towers")],
                 1).fit(TwoModal(), *_loaders())
    train = DataLoader(TRAIN, batch_size=16)
    with pytest.raises(ValueError, match="no validation DataLoader"):  # none given to fit
        _trainer(tmp_path, [DiagnoseRelearnCallback(num_classes=3, every=1)],
                 2).fit(TwoModal(), train)


def test_a_clear_error_without_lightning(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)  # `import lightning` now fails
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "mmrelearn.integrations.lightning")
    with pytest.raises(ImportError, match=re.escape("pip install 'mmrelearn[lightning]'")):
        importlib.import_module("mmrelearn.integrations.lightning")
    importlib.import_module("mmrelearn")  # the library itself never needs it


def test_readme_lightning_snippet_runs(capsys):
    m = re.search(r"<!-- snippet: lightning\b.*?-->\s*```python\n(.*?)```", README.read_text(),
                  re.S)
    assert m, "README has no python block marked 'snippet: lightning'"
    assert len(m.group(1).splitlines()) < 30
    scope: dict = {}
    exec(compile(m.group(1), "README.md:lightning", "exec"), scope)
    assert [r.epoch for r in scope["dnr"].reports] == [2]
    assert "alpha" in capsys.readouterr().out
