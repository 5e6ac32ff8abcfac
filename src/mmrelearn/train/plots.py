"""Curves from run directories (accuracy, loss and per-modality purity gap over epochs), and
comparison figures: accuracy change over a reference, uni-modal probe scatter."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .checkpoint import read_jsonl  # noqa: E402

__all__ = ["plot_run", "plot_groups", "plot_improvement", "plot_probe_scatter"]


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


def _half_widths(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """(2, n) error-bar lengths below / above each mean; 0 where the interval is NaN (n < 2)."""
    err = np.array([[r["mean"] - r["low"] for r in rows], [r["high"] - r["mean"] for r in rows]],
                   dtype=float)
    return np.nan_to_num(err, nan=0.0)


def plot_improvement(rows: Sequence[Mapping[str, Any]], path: Union[str, Path],
                     ylabel: str = "accuracy change over joint (points)") -> Path:
    """Bars of each method's mean change over the reference, with its confidence interval as
    error bars and a zero line (the paper's Figure 1a); one bar group per variant if several.

    Args:
        rows: dicts with ``method``, ``mean``, ``low``, ``high`` (as from
            :func:`mmrelearn.report.paired_rows` or :func:`mmrelearn.claims.improvement_rows`)
            and optionally ``variant`` (or ``setting``) naming the bar group.
        path: PNG file to write.
        ylabel: the y axis label (say which reference and metric).
    """
    group = [r.get("variant", r.get("setting", "")) for r in rows]
    variants = list(dict.fromkeys(group))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(rows) + 1.5), 3.6))
    for j, m in enumerate(methods):
        sel = [(variants.index(g), r) for g, r in zip(group, rows) if r["method"] == m]
        x = np.array([i for i, _ in sel]) + (j - (len(methods) - 1) / 2) * width
        # 20 distinct colours, then hatched: every method keeps its own legend entry
        ax.bar(x, [r["mean"] for _, r in sel], width * 0.9, label=m,
               yerr=_half_widths([r for _, r in sel]), capsize=3,
               color=plt.cm.tab20(j % 20), hatch="//" if j >= 20 else None)
    ax.axhline(0.0, color="black", lw=0.8)
    if len(variants) > 1:
        ax.set_xticks(range(len(variants)), variants)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        ax.set_xticks((np.arange(len(methods)) - (len(methods) - 1) / 2) * width, methods,
                      rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_probe_scatter(points: Mapping[str, Mapping[str, Sequence[float]]],
                       path: Union[str, Path], modalities: Optional[Sequence[str]] = None,
                       per_seed: bool = True) -> Path:
    """Scatter of the two uni-modal probe accuracies of each method (the paper's Figure 1b/c).

    Args:
        points: method -> modality -> per-seed probe test accuracies (%).
        path: PNG file to write.
        modalities: ``(a, b)``: modality a on x, b on y (default: the first method's first two).
        per_seed: also draw each seed as a small point.
    """
    a, b = modalities or list(next(iter(points.values())))[:2]
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for j, (method, probe) in enumerate(points.items()):
        xs, ys = np.asarray(probe[a], dtype=float), np.asarray(probe[b], dtype=float)
        if per_seed:
            ax.scatter(xs, ys, s=10, alpha=0.35, color=f"C{j}")
        ax.scatter([xs.mean()], [ys.mean()], s=50, color=f"C{j}", edgecolor="black", lw=0.5)
        ax.annotate(method, (xs.mean(), ys.mean()), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set_xlabel(f"{a} probe accuracy (%)")
    ax.set_ylabel(f"{b} probe accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
