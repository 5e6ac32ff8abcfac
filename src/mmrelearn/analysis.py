"""The paper's analyses of finished runs: t-SNE of encoder features (Fig. 3) and the purity and
test curves of training (Fig. 4).

``tsne_figure`` rebuilds each run from its directory (as ``mmrelearn eval`` does), loads a
checkpoint and embeds every modality's encoder features; ``purity_figure`` only reads the
``metrics.jsonl`` and ``reports.jsonl`` the runs wrote.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from .train.checkpoint import read_jsonl  # noqa: E402

__all__ = ["RunEmbedding", "tsne_embeddings", "tsne_figure", "purity_curves", "purity_figure",
           "run_label"]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
#: the loader of each split: the training split in a fixed order, without shuffling
SPLIT_LOADERS = {"train": "diag_train", "val": "val", "test": "test"}


def run_label(run_dir: PathLike) -> tuple[str, str, int]:
    """``(name, method, seed)`` of a run, from its stored ``config.yaml``."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {path} is missing")
    raw = yaml.safe_load(path.read_text())
    return raw.get("name", "run"), raw.get("method", {}).get("name", "joint"), raw.get("seed", 0)


def _default_out(run_dirs: Sequence[PathLike], out: PathLike | None, name: str) -> Path:
    if out is not None:
        return Path(out)
    if len(run_dirs) != 1:
        raise ValueError(f"{len(run_dirs)} runs: say where the figure goes (--out PATH.png)")
    return Path(run_dirs[0]) / name


# ---------------------------------------------------------------- t-SNE (Fig. 3)

@dataclass
class RunEmbedding:
    """2-D t-SNE coordinates of one run's features: ``coords[m]`` (n, 2), ``labels`` (n,)."""

    label: str
    epoch: int
    coords: dict[str, np.ndarray]
    labels: np.ndarray
    n_split: int  # samples in the split; ``len(labels)`` of them were embedded
    num_classes: int


def tsne_embeddings(run_dir: PathLike, split: str = "val", checkpoint: str = "best",
                    max_samples: int | None = 1000, seed: int = 0) -> RunEmbedding:
    """Embed each modality's encoder features of one run's checkpoint on ``split`` with t-SNE.

    Args:
        run_dir: a run directory (``config.yaml`` and ``checkpoints/<checkpoint>.pt``).
        split: ``val`` (default), ``train`` or ``test`` (test for looking only: nothing here is
            used to choose anything).
        checkpoint: ``best`` (the epoch chosen on validation) or ``last``.
        max_samples: cap on the samples embedded, a random subset drawn with ``seed``
            (``None``: the whole split).
        seed: seed of the subset and of t-SNE.
    """
    from sklearn.manifold import TSNE

    from .relearn import extract_features, model_features
    from .train import build_trainer, load_run_config
    from .train.checkpoint import load_checkpoint

    if split not in SPLIT_LOADERS:
        raise ValueError(f"split: {split!r} is not one of {sorted(SPLIT_LOADERS)}")
    run_dir = Path(run_dir)
    trainer = build_trainer(load_run_config(run_dir), run_dir)
    state = load_checkpoint(run_dir / "checkpoints" / f"{checkpoint}.pt", trainer.device)
    model, loader = trainer.model, trainer.loaders[SPLIT_LOADERS[split]]
    model.load_state_dict(state["model"])
    model.eval()  # a mid-fusion model's encode runs more than the encoders
    feats, y = extract_features(model.encoders, model_features(model, trainer.device), loader,
                                trainer.device, max_samples=max_samples, sample_seed=seed)
    n = int(y.numel())
    if n < 5:
        raise ValueError(f"{run_dir}: {n} samples in the {split} split; t-SNE needs at least 5")
    coords = {}
    for m, f in feats.items():
        # perplexity must stay below the number of points: 30 (sklearn's default) or less
        tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca",
                    random_state=seed)
        coords[m] = tsne.fit_transform(f.cpu().numpy().astype(np.float64))
    name, method, run_seed = run_label(run_dir)
    return RunEmbedding(label=f"{name} ({method}, seed {run_seed})", epoch=int(state["epoch"]),
                        coords=coords, labels=y.cpu().numpy(), n_split=len(loader.dataset),
                        num_classes=trainer.num_classes)


def tsne_figure(run_dirs: Sequence[PathLike], out: PathLike | None = None, split: str = "val",
                checkpoint: str = "best", max_samples: int | None = 1000,
                seed: int = 0) -> Path:
    """One t-SNE panel per modality (rows) and run (columns), points coloured by class (Fig. 3).

    ``out`` defaults to ``RUN_DIR/tsne_<split>.png`` for one run; several runs need it.
    See :func:`tsne_embeddings` for the other arguments.
    """
    out = _default_out(run_dirs, out, f"tsne_{split}.png")
    runs = [tsne_embeddings(d, split, checkpoint, max_samples, seed) for d in run_dirs]
    modalities = list(dict.fromkeys(m for r in runs for m in r.coords))
    width = 4.2 * len(runs) + 0.8  # + the class legend on the right
    fig, axes = plt.subplots(len(modalities), len(runs), squeeze=False,
                             figsize=(width, 3.9 * len(modalities)))
    cmap = plt.get_cmap("tab10" if max(r.num_classes for r in runs) <= 10 else "tab20")
    for j, r in enumerate(runs):
        n = len(r.labels)
        subset = f"{n} of {r.n_split} (seeded random subset)" if n < r.n_split else f"all {n}"
        for i, m in enumerate(modalities):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{r.label}: {m}\n{checkpoint} (epoch {r.epoch}), {split}, {subset}",
                         fontsize=8)
            if m not in r.coords:
                ax.text(0.5, 0.5, f"no modality {m!r}", ha="center", transform=ax.transAxes)
                continue
            xy = r.coords[m]
            ax.scatter(xy[:, 0], xy[:, 1], c=r.labels % cmap.N, cmap=cmap, vmin=0,
                       vmax=cmap.N - 1, s=min(20.0, max(4.0, 3000 / n)), alpha=0.8,
                       linewidths=0)
    classes = max(r.num_classes for r in runs)
    if classes <= 20:
        handles = [plt.Line2D([], [], ls="", marker="o", color=cmap(c % cmap.N), label=str(c))
                   for c in range(classes)]
        fig.legend(handles=handles, title="class", loc="center right", fontsize=7)
        fig.tight_layout(rect=(0, 0, 1 - 0.8 / width, 1))
    else:
        fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---------------------------------------------------------------- curves (Fig. 4)

#: panel -> (title, how to read one epoch record, what to set when it is missing)
PANELS = {
    "gap": ("purity gap |P_train - P_val|", lambda r, m: r["purity"][m]["gap"],
            "train.monitor_purity: true"),
    "test_acc": ("test accuracy (logged only)", lambda r, m: r["test"]["acc"],
                 "train.log_test_every_epoch: true"),
    "test_purity": ("test representation purity", lambda r, m: r["purity"][m]["test"],
                    "train.monitor_test_purity: true"),
}

Curve = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # epochs, mean, min, max


def _series(records: list[dict], get, m: str | None) -> dict[int, float]:
    out = {}
    for r in records:
        try:
            out[r["epoch"]] = float(get(r, m))
        except (KeyError, TypeError):
            pass  # not logged in this epoch (or this run)
    return out


def _band(series: list[dict[int, float]]) -> Curve | None:
    """Mean, min and max over runs at each epoch any run logged."""
    epochs = sorted({e for s in series for e in s})
    if not epochs:
        return None
    arr = np.array([[s.get(e, np.nan) for e in epochs] for s in series], dtype=float)
    return np.array(epochs), np.nanmean(arr, 0), np.nanmin(arr, 0), np.nanmax(arr, 0)


def purity_curves(run_dirs: Sequence[PathLike]) -> dict[str, dict]:
    """Per method (runs grouped by ``method.name``): its runs, D&R re-initialisation epochs and,
    per panel and modality, the :data:`Curve` over seeds (``None`` where nothing was logged).

    Returns ``{method: {"runs": [...], "reinit": [epochs], "curves": {(panel, modality): Curve}}}``
    with modality ``None`` for the test accuracy.
    """
    groups: dict[str, dict] = {}
    for d in run_dirs:
        d = Path(d)
        _, method, _ = run_label(d)
        records = read_jsonl(d / "metrics.jsonl")
        if not records:
            raise ValueError(f"{d}: metrics.jsonl holds no epoch yet")
        g = groups.setdefault(method, {"runs": [], "records": [], "reinit": set()})
        g["runs"].append(d)
        g["records"].append(records)
        g["reinit"] |= {r["epoch"] for r in read_jsonl(d / "reports.jsonl")
                        if r.get("dnr", {}).get("applied")}
    modalities = list(dict.fromkeys(m for g in groups.values() for rs in g["records"]
                                    for r in rs for m in r.get("purity", {}))) or [None]
    for g in groups.values():
        recs = g.pop("records")
        g["reinit"] = sorted(g["reinit"])
        g["curves"] = {(p, m): _band([_series(rs, PANELS[p][1], m) for rs in recs])
                       for p in PANELS for m in ([None] if p == "test_acc" else modalities)}
    return groups


def purity_figure(run_dirs: Sequence[PathLike], out: PathLike | None = None) -> Path:
    """The paper's Fig. 4 for these runs, grouped by method (mean line, min-max band over seeds).

    Top row: the train-val purity gap of each modality, then the test accuracy; bottom row: the
    test representation purity of each modality. Dotted vertical lines mark D&R
    re-initialisations, between the epoch that ended with one and the next. A quantity a run did
    not log is named in its panel (and logged as a warning). ``out`` defaults to
    ``RUN_DIR/purity.png`` for one run; several runs need it.
    """
    out = _default_out(run_dirs, out, "purity.png")
    groups = purity_curves(run_dirs)
    # [None] when no run monitored purity: the panels then say what to set
    modalities = list(dict.fromkeys(m for g in groups.values() for (p, m) in g["curves"]
                                    if p == "gap"))
    k = len(modalities)
    fig, axes = plt.subplots(2, k + 1, figsize=(4.2 * (k + 1), 6.6), squeeze=False)
    cells = [(axes[0][i], "gap", m) for i, m in enumerate(modalities)]
    cells += [(axes[0][k], "test_acc", None)]
    cells += [(axes[1][i], "test_purity", m) for i, m in enumerate(modalities)]
    handles = []
    for j, (method, g) in enumerate(groups.items()):
        color, n = f"C{j}", len(g["runs"])
        handles.append(plt.Line2D([], [], color=color, label=f"{method} ({n} run{'s' * (n > 1)})"))
        for ax, panel, m in cells:
            curve = g["curves"].get((panel, m))
            if curve is None:
                log.warning("%s: %s%s not logged (set %s)", method, panel,
                            f" of {m}" if m else "", PANELS[panel][2])
                continue
            x, mean, lo, hi = curve
            ax.plot(x, mean, color=color)
            if n > 1:
                ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
            for e in g["reinit"]:
                ax.axvline(e + 0.5, color=color, ls=":", lw=1)
    for ax, panel, m in cells:
        title, _, needs = PANELS[panel]
        ax.set_title(f"{title}" + (f": {m}" if m else ""), fontsize=9)
        ax.set_xlabel("epoch")
        if not ax.lines:
            ax.text(0.5, 0.5, f"not logged\n(set {needs})", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
    legend_ax = axes[1][k]
    legend_ax.axis("off")
    handles.append(plt.Line2D([], [], color="grey", ls=":", label="D&R re-initialisation"))
    legend_ax.legend(handles=handles, loc="center", fontsize=8,
                     title="mean over seeds, band: min-max")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
