"""Uni-modal linear probes: how much each trained encoder's features know on their own.

A multimodal accuracy hides which modality carries it. For every modality, a logistic
regression is fitted on the FROZEN encoder's features of the training split, its inverse
regularisation C is chosen on the validation split, and the chosen probe is scored once on the
test split (test never takes part in fitting or choosing).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from .relearn import extract_features, model_features

__all__ = ["linear_probe", "probe_features", "probe_trainer", "probe_run", "DEFAULT_C"]

#: inverse regularisation strengths tried, chosen on validation accuracy.
DEFAULT_C: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)


def probe_features(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                   test: tuple[np.ndarray, np.ndarray], cs: Sequence[float] = DEFAULT_C,
                   seed: int = 0) -> dict[str, float]:
    """Fit probes on ``train`` (features (N, d), labels (N,)), pick C on ``val``, score ``test``.

    Features are standardised with training statistics. Ties in validation accuracy go to the
    smaller C (the stronger regularisation).

    Returns:
        ``{"C", "train_acc", "val_acc", "test_acc"}`` of the chosen probe.
    """
    scaler = StandardScaler().fit(train[0])
    xs = [scaler.transform(part[0]) for part in (train, val, test)]
    best = None
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(xs[0], train[1])
        val_acc = float(clf.score(xs[1], val[1]))
        if best is None or val_acc > best[0]:
            best = (val_acc, c, clf)
    val_acc, c, clf = best
    return {"C": c, "train_acc": float(clf.score(xs[0], train[1])), "val_acc": val_acc,
            "test_acc": float(clf.score(xs[2], test[1]))}


def linear_probe(model: nn.Module, loaders: Mapping[str, Iterable], device: torch.device,
                 cs: Sequence[float] = DEFAULT_C, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per-modality probe accuracies of ``model``'s encoders (see :func:`probe_features`).

    Args:
        model: a trained multimodal model (its ``encode`` gives per-modality features).
        loaders: ``"train"``, ``"val"`` and ``"test"`` loaders in a FIXED order (no shuffling
            needed; features are pooled encoder outputs in eval mode).
        device: where the model is.
        cs: the C values tried.
        seed: the solver's seed.

    Returns:
        modality -> ``{"C", "train_acc", "val_acc", "test_acc"}``.
    """
    missing = sorted({"train", "val", "test"} - set(loaders))
    if missing:
        raise ValueError(f"linear_probe needs train, val and test loaders; missing {missing}")
    was_training = model.training
    model.eval()
    try:
        feats = {split: extract_features(model.encoders, model_features(model, device),
                                         loaders[split], device)
                 for split in ("train", "val", "test")}
    finally:
        model.train(was_training)
    out = {}
    for m in model.encoders:
        parts = [(feats[s][0][m].cpu().numpy(), feats[s][1].cpu().numpy())
                 for s in ("train", "val", "test")]
        out[m] = probe_features(*parts, cs=cs, seed=seed)
    return out


def probe_trainer(trainer: Any, seed: int) -> dict[str, dict[str, float]]:
    """:func:`linear_probe` of a built :class:`~mmrelearn.train.Trainer`'s model on its own
    training (fixed order), validation and test loaders."""
    loaders = {"train": trainer.loaders["diag_train"], "val": trainer.loaders["val"],
               "test": trainer.loaders["test"]}
    return linear_probe(trainer.model, loaders, trainer.device, seed=seed)


def probe_run(run_dir: Union[str, Path], checkpoint: str = "best") -> dict[str, dict[str, float]]:
    """:func:`probe_trainer` of a finished run's checkpoint, cached in
    ``run_dir/probe_<checkpoint>.json`` for that very checkpoint file (a newer one, e.g. after
    a resume, is probed again).

    The run's own config rebuilds its data (same splits) and model; the probe's seed is the
    run's seed.
    """
    from .train import build_trainer, load_run_config
    from .train.checkpoint import atomic_write_text, load_checkpoint

    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt} does not exist; is {run_dir} a finished run?")
    stamp = [ckpt.stat().st_mtime_ns, ckpt.stat().st_size]
    cached = run_dir / f"probe_{checkpoint}.json"
    if cached.is_file():
        stored = json.loads(cached.read_text())
        if stored.get("checkpoint") == stamp:
            return stored["modalities"]
    cfg = load_run_config(run_dir)
    trainer = build_trainer(cfg, run_dir)
    state = load_checkpoint(ckpt, map_location=trainer.device)  # weights_only=True
    trainer.model.load_state_dict(state["model"])
    out = probe_trainer(trainer, cfg.seed)
    atomic_write_text(json.dumps({"checkpoint": stamp, "modalities": out}, indent=2) + "\n",
                      cached)
    return out
