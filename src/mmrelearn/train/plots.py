"""Curves from run directories: accuracy, loss and per-modality purity gap over epochs."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .checkpoint import read_jsonl  # noqa: E402

__all__ = ["plot_run", "plot_groups"]


def _reinit_epochs(records: list[dict]) -> list[int]:
    return [r["epoch"] for r in records if r.get("report", {}).get("dnr", {}).get("applied")]


def plot_run(run_dir: Union[str, Path], path: Union[str, Path, None] = None) -> Path:
    """Save ``curves.png`` of one run: loss, val/test accuracy, purity gap (if monitored)."""
    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl")
    path = Path(path or run_dir / "curves.png")
    has_purity = any("purity" in r for r in records)
    fig, axes = plt.subplots(1, 3 if has_purity else 2, figsize=(13 if has_purity else 9, 3.4))
    ep = [r["epoch"] for r in records]
    axes[0].plot(ep, [r["train"]["total"] for r in records], label="train loss")
    axes[0].plot(ep, [r["val"]["loss"] for r in records], label="val loss")
    axes[1].plot(ep, [r["val"]["acc"] for r in records], label="val acc")
    if records and "test" in records[0]:
        axes[1].plot(ep, [r["test"]["acc"] for r in records], label="test acc (logged only)",
                     alpha=0.6)
    if has_purity:
        for m in records[0]["purity"]:
            axes[2].plot(ep, [r["purity"][m]["gap"] for r in records], label=f"{m} gap")
        axes[2].set_title("purity gap |P_train - P_val|")
    for ax in axes:
        for e in _reinit_epochs(records):
            ax.axvline(e, color="grey", ls=":", lw=1)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    axes[0].set_title("loss")
    axes[1].set_title("accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean_curve(run_dirs: Sequence[Path], get) -> tuple[np.ndarray, np.ndarray]:
    curves = [[get(r) for r in read_jsonl(Path(d) / "metrics.jsonl")] for d in run_dirs]
    n = min(len(c) for c in curves)
    arr = np.array([c[:n] for c in curves], dtype=float)
    return arr.mean(0), arr.std(0)


def plot_groups(groups: dict[str, Sequence[Path]], path: Union[str, Path],
                modalities: Sequence[str] = ()) -> Path:
    """Mean (+- std over seeds) validation accuracy, and purity gap per modality, per group."""
    ncols = 1 + len(modalities)
    fig, axes = plt.subplots(1, ncols, figsize=(4.6 * ncols, 3.6), squeeze=False)
    axes = axes[0]
    for label, dirs in groups.items():
        mean, std = _mean_curve(dirs, lambda r: r["val"]["acc"])
        x = np.arange(len(mean))
        line, = axes[0].plot(x, mean, label=label)
        reinit = sorted({e for d in dirs for e in _reinit_epochs(read_jsonl(Path(d) / "metrics.jsonl"))})
        for ax in axes:
            for e in reinit:
                ax.axvline(e, color=line.get_color(), ls=":", lw=1)
        axes[0].fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        for ax, m in zip(axes[1:], modalities):
            g, _ = _mean_curve(dirs, lambda r, m=m: r["purity"][m]["gap"])
            ax.plot(np.arange(len(g)), g, label=label, color=line.get_color())
    axes[0].set_title("validation accuracy (mean over seeds)")
    for ax, m in zip(axes[1:], modalities):
        ax.set_title(f"purity gap of '{m}'")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
