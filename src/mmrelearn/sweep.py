"""Grids of runs (the paper's Figure 5: sensitivity to lambda and H) with a joint-training baseline.

``run_sweep(base, grid, seeds, out_dir)`` trains every grid point (the cartesian product of the
swept values) for every seed, plus joint training on the same data for the same seeds, then
writes ``sweep.md`` (a table), ``sweep.json`` (per-seed numbers) and ``sweep.png`` (selected test
accuracy against each swept value, the baseline as a band). Finished runs are reused,
interrupted ones resumed, and a run directory holding another config is refused, as in a
comparison. With ``jobs > 1`` the runs go to that many separate processes; every run has its own
directory, so the processes share no file. On a machine with several GPUs, a config whose
``train.device`` is ``auto`` or ``cuda`` puts job i on ``cuda:(i mod devices)``.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Optional, Sequence

import yaml

from .config import SCIENTIFIC, ConfigError, apply_overrides, config_from_dict
from .report import mean_std
from .stats import paired_difference
from .train.checkpoint import atomic_write_text

__all__ = ["parse_grid", "SweepRun", "sweep_runs", "run_sweep", "BASELINE"]

log = logging.getLogger(__name__)

BASELINE = "baseline"


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["method.lam=1,3,5", "method.every=5,10"]`` -> ``{"method.lam": [1, 3, 5], ...}``.

    Values are read as YAML, so ``a=[x,y],[x]`` gives two lists and ``a=1e-3,0.01`` two floats.

    Raises:
        ConfigError: an item without ``=``, a key given twice, or no value.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. method.lam=1,3,5")
        key, text = (s.strip() for s in item.split("=", 1))
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice; list all its values in one --grid")
        try:
            values = yaml.safe_load(f"[{text}]")
        except yaml.YAMLError as err:
            raise ConfigError(f"--grid {key}: cannot read the values {text!r} ({err})") from None
        if not values or any(v is None for v in values):
            raise ConfigError(f"--grid {key}: expected comma-separated values, got {text!r}")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"--grid {key}: a value is listed twice in {text!r}")
        # YAML 1.1 reads 1e-3 (no dot) as a string
        grid[key] = [float(v) if isinstance(v, str) and SCIENTIFIC.fullmatch(v) else v
                     for v in values]
    if not grid:
        raise ConfigError("a sweep needs at least one --grid KEY=V1,V2,...")
    return grid


def _label(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return re.sub(r"[^A-Za-z0-9.+\-\[\],]", "_", text)


@dataclass
class SweepRun:
    """One run: ``point`` maps each swept key to its value (empty for the baseline)."""

    point: dict[str, Any]
    seed: int
    run_dir: Path
    raw: dict

    @property
    def is_baseline(self) -> bool:
        return not self.point


def _baseline_point(point: dict[str, Any]) -> dict[str, Any]:
    """The non-method keys of a grid point: the baseline runs with them, and joint training."""
    return {k: v for k, v in point.items() if not k.startswith("method.")}


def _point_dir(point: dict[str, Any]) -> str:
    return "__".join(f"{k}={_label(v)}" for k, v in point.items())


def sweep_runs(base: dict[str, Any], grid: dict[str, list[Any]], seeds: Sequence[int],
               out_dir: Path, baseline: Optional[str] = "joint") -> list[SweepRun]:
    """Every run of the sweep, seed by seed (so load drift hits every grid point alike).

    Each grid point's config is checked here, before any run starts: an invalid value fails
    the whole sweep with the error naming the key. ``baseline`` (a method name, or None for
    none) is trained with the grid's non-method keys applied, once per distinct assignment.
    """
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*grid.values())]
    runs: list[SweepRun] = []
    for seed in seeds:
        seen_baselines: set[str] = set()
        for point in points:
            if baseline is not None:
                bpoint = _baseline_point(point)
                bname = _point_dir(bpoint)
                if bname not in seen_baselines:
                    seen_baselines.add(bname)
                    over = [f"{k}={json.dumps(v)}" for k, v in bpoint.items()]
                    over += [f"method={{name: {baseline}}}", f"seed={seed}"]
                    d = out_dir / BASELINE / (bname or "base") / f"seed{seed}"
                    runs.append(SweepRun({}, seed, d, _raw(base, over, d)))
            over = [f"{k}={json.dumps(v)}" for k, v in point.items()] + [f"seed={seed}"]
            d = out_dir / _point_dir(point) / f"seed{seed}"
            runs.append(SweepRun(point, seed, d, _raw(base, over, d)))
    return runs


def _raw(base: dict[str, Any], over: list[str], run_dir: Path) -> dict:
    raw = apply_overrides(base, over + ["train.progress=false"])
    raw["name"] = f"{base.get('name', 'sweep')}-{run_dir.parent.name}"
    try:
        config_from_dict(raw)
    except (ConfigError, ValueError, TypeError) as err:
        raise ConfigError(f"sweep run {run_dir.parent.name}: {err}") from None
    return raw


def _execute(runs: list[SweepRun], jobs: int, progress: bool) -> int:
    """Run every unfinished run; returns how many were trained now."""
    from .train.parallel import run_many

    return run_many([(r.raw, r.run_dir) for r in runs], jobs, progress, desc="sweep runs")


def _collect(runs: list[SweepRun], grid: dict[str, list[Any]]) -> dict[str, Any]:
    points: dict[str, dict[str, Any]] = {}
    for r in runs:
        s = json.loads((r.run_dir / "summary.json").read_text())
        name = r.run_dir.parent.name if not r.is_baseline else f"{BASELINE}/{r.run_dir.parent.name}"
        e = points.setdefault(name, {"point": r.point, "baseline": r.is_baseline,
                                     "baseline_of": _point_dir(_baseline_point(r.point)) or "base",
                                     "seeds": [], "test_acc": [], "val_acc": []})
        e["seeds"].append(r.seed)
        e["test_acc"].append(100.0 * s["test"]["acc"])
        e["val_acc"].append(100.0 * s["val"]["acc"])
    for name, e in points.items():
        ref = points.get(f"{BASELINE}/{e['baseline_of']}")
        if e["baseline"] or ref is None:
            continue
        by_seed = dict(zip(ref["seeds"], ref["test_acc"]))
        res = paired_difference(e["test_acc"], [by_seed[s] for s in e["seeds"]])
        e["vs_baseline"] = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                            for k, v in res.to_dict().items()}
    return {"grid": grid, "points": points}


def _markdown(results: dict[str, Any], baseline: Optional[str]) -> str:
    keys = list(results["grid"])
    head = "| run | " + " | ".join(keys) + " | seeds | test acc | val acc |"
    sep = "|" + "---|" * (len(keys) + 4)
    if baseline:
        head += f" Δ test acc vs {baseline} | 95% CI | p | verdict |"
        sep += "---|---|---|---|"
    lines = [head, sep]
    for e in results["points"].values():
        cells = [_label(e["point"][k]) if k in e["point"] else "-" for k in keys]
        row = (f"| {baseline if e['baseline'] else 'grid'} | {' | '.join(cells)} | "
               f"{len(e['seeds'])} | {mean_std(e['test_acc'])} | {mean_std(e['val_acc'])} |")
        if baseline:
            v = e.get("vs_baseline")
            if v is None:
                row += " - | - | - | reference |" if e["baseline"] else " - | - | - | - |"
            else:
                ci = "-" if v["low"] is None else f"[{v['low']:+.2f}, {v['high']:+.2f}]"
                p = "-" if v["p"] is None else f"{v['p']:.3f}"
                row += f" {v['mean']:+.2f} | {ci} | {p} | {v['verdict']} |"
        lines.append(row)
    return "\n".join(lines)


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_sweep(results: dict[str, Any], path: Path, baseline: Optional[str]) -> Path:
    """One panel per swept key: mean selected test accuracy (± std over seeds) against the
    key's values, a line per assignment of the other keys; the baseline as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = results["grid"]
    mains = [e for e in results["points"].values() if not e["baseline"]]
    bases = [e for e in results["points"].values() if e["baseline"]]
    fig, axes = plt.subplots(1, len(grid), figsize=(4.5 * len(grid), 3.6), squeeze=False)
    for ax, key in zip(axes[0], grid):
        values = grid[key]
        xs = values if _numeric(values) else list(range(len(values)))
        others = [k for k in grid if k != key]
        lines: dict[tuple, dict[int, dict]] = {}
        for e in mains:
            tag = tuple(_label(e["point"][k]) for k in others)
            lines.setdefault(tag, {})[values.index(e["point"][key])] = e
        for tag, by_i in lines.items():
            idx = sorted(by_i)
            m = [mean(by_i[i]["test_acc"]) for i in idx]
            s = [stdev(by_i[i]["test_acc"]) if len(by_i[i]["test_acc"]) > 1 else 0.0
                 for i in idx]
            label = ", ".join(f"{k.split('.')[-1]}={t}" for k, t in zip(others, tag)) or key
            ax.errorbar([xs[i] for i in idx], m, yerr=s, marker="o", capsize=3, label=label)
        if baseline and len(bases) == 1:
            b = bases[0]["test_acc"]
            bm, bs = mean(b), (stdev(b) if len(b) > 1 else 0.0)
            ax.axhspan(bm - bs, bm + bs, color="grey", alpha=0.25, label=f"{baseline} ± std")
            ax.axhline(bm, color="grey", lw=1)
        elif baseline:
            for b in bases:
                if key in b["point"]:
                    x = xs[values.index(b["point"][key])]
                    ax.errorbar([x], [mean(b["test_acc"])], marker="s", color="grey",
                                yerr=[stdev(b["test_acc"]) if len(b["test_acc"]) > 1 else 0.0])
        if not _numeric(values):
            ax.set_xticks(xs, [_label(v) for v in values], rotation=20)
        ax.set_xlabel(key)
        ax.set_ylabel("selected test accuracy (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_sweep(base: dict[str, Any], grid: dict[str, list[Any]], seeds: Sequence[int],
              out_dir: Path, jobs: int = 1, baseline: Optional[str] = "joint",
              progress: bool = True, report: str = "sweep") -> str:
    """Train the sweep (see the module docstring), write ``<report>.md`` / ``.json`` / ``.png``
    into ``out_dir`` and return the markdown report. Two sweeps of one config may share
    ``out_dir`` under different ``report`` names: they then share the baseline runs."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if not seeds:
        raise ConfigError("a sweep needs at least one seed")
    out_dir = Path(out_dir)
    runs = sweep_runs(base, grid, seeds, out_dir, baseline)  # every config checked first
    t0 = time.perf_counter()
    trained = _execute(runs, jobs, progress)
    wall = time.perf_counter() - t0
    results = _collect(runs, grid)
    atomic_write_text(json.dumps(results, indent=1) + "\n", out_dir / f"{report}.json")
    fig = plot_sweep(results, out_dir / f"{report}.png", baseline)
    text = "\n".join([
        f"# Sweep of {', '.join(grid)} ({len(seeds)} seeds: {', '.join(map(str, seeds))})", "",
        "Test accuracy (%) at the epoch selected on validation, mean ± std over seeds"
        + (f"; Δ: paired by seed against {baseline} (95% t interval, paired t-test):"
           if baseline else ":"), "",
        _markdown(results, baseline), "", f"Figure: [{fig.name}]({fig.name})", "",
        f"{len(runs)} runs, {trained} trained now with {jobs} job(s) in {wall:.0f} s "
        f"({len(runs) - trained} finished runs reused)."])
    atomic_write_text(text + "\n", out_dir / f"{report}.md")
    return text
