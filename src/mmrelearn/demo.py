"""The main job: joint training vs D&R on real mfeat data, clean and with a noisy modality.

The settings live in the packaged ``configs/demo.yaml`` (a base config, the methods, the data
variants). Every method sees the same splits, data and epochs; runs already finished in the
output directory are reused and interrupted ones resumed, so the demo can be re-run safely.
"""
from __future__ import annotations

import json
import logging
import time
from importlib import resources
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Optional

import yaml
from tqdm.auto import tqdm

from .config import apply_overrides, config_from_dict, config_to_dict
from .report import aggregate, load_summaries, markdown_table
from .train import RunExistsError, train
from .train.checkpoint import atomic_write_text, read_jsonl
from .train.plots import plot_groups

__all__ = ["load_demo_spec", "run_comparison", "run_demo"]

log = logging.getLogger(__name__)


def load_demo_spec() -> dict[str, Any]:
    """The packaged demo specification: ``base`` config, ``methods`` and ``variants``."""
    text = resources.files("mmrelearn").joinpath("configs/demo.yaml").read_text()
    return yaml.safe_load(text)


def _run_one(raw: dict, run_dir: Path) -> dict:
    cfg = config_from_dict(raw)
    stored = run_dir / "config.yaml"
    if not stored.is_file():
        return train(cfg, run_dir=run_dir)
    if yaml.safe_load(stored.read_text()) != config_to_dict(cfg):
        raise RunExistsError(f"{run_dir} holds a run of another configuration; remove it or "
                             f"choose another output directory")
    if (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())
    return train(run_dir=run_dir, resume=True)  # interrupted earlier: continue it


def _purity_lines(dirs: list[Path]) -> list[str]:
    """Per-modality train/val purity at the last epoch, mean over seeds."""
    last = [read_jsonl(d / "metrics.jsonl")[-1]["purity"] for d in dirs]
    lines = []
    for m in last[0]:
        p_tr = mean(p[m]["train"] for p in last)
        p_va = mean(p[m]["val"] for p in last)
        lines.append(f"  {m}: P_train {p_tr:.3f}  P_val {p_va:.3f}  gap {abs(p_tr - p_va):.3f}")
    return lines


def _trajectory_lines(dirs: list[Path]) -> list[str]:
    """Each D&R diagnosis of each seed: epoch, then gap and alpha per modality."""
    lines = []
    for d in dirs:
        for r in (r for r in read_jsonl(d / "reports.jsonl") if "dnr" in r):
            cells = ", ".join(f"{m} P_tr {v['p_train']:.3f} P_val {v['p_val']:.3f} "
                              f"gap {v['gap']:.3f} alpha {v['alpha']:.3f}"
                              for m, v in r["dnr"]["modalities"].items())
            lines.append(f"  {d.name} epoch {r['epoch']}: {cells}")
    return lines


def _probe_table(groups: dict[str, list[Path]]) -> list[str]:
    """Markdown rows: per method, each modality's linear-probe test accuracy (mean ± std)."""
    from .probe import probe_run

    probes = {method: [probe_run(d) for d in dirs] for method, dirs in groups.items()}
    modalities = list(next(iter(probes.values()))[0])
    lines = ["| method | " + " | ".join(f"{m} probe acc" for m in modalities) + " |",
             "|---|" + "---|" * len(modalities)]
    for method, runs in probes.items():
        cells = []
        for m in modalities:
            accs = [100.0 * r[m]["test_acc"] for r in runs]
            sd = stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{mean(accs):.2f} ± {sd:.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def run_demo(out_dir: Path = Path("runs/demo"), seeds: int = 3, epochs: Optional[int] = None,
             progress: bool = True) -> str:
    """The main job: :func:`run_comparison` on the packaged demo specification."""
    return run_comparison(load_demo_spec(), out_dir, seeds, epochs, progress)


def run_comparison(spec: dict[str, Any], out_dir: Path, seeds: int = 3,
                   epochs: Optional[int] = None, progress: bool = True) -> str:
    """Run every (variant, method, seed) of ``spec``, write ``results.md`` and plots.

    ``spec`` has a ``base`` config, ``methods`` and ``variants`` (lists of dotted overrides),
    a ``title``, a description per variant, and optionally ``probe: true`` (add each
    modality's linear-probe accuracy, see :func:`mmrelearn.probe.probe_run`). Returns the
    report text.
    """
    out_dir = Path(out_dir)
    jobs = []
    for variant, var_over in spec["variants"].items():
        for method, m_over in spec["methods"].items():
            for seed in range(seeds):
                over = [*var_over, *m_over, f"seed={seed}", f"name={variant}-{method}",
                        "train.progress=false"]
                if epochs is not None:
                    over.append(f"train.epochs={epochs}")
                jobs.append((variant, method, out_dir / variant / method / f"seed{seed}",
                             apply_overrides(spec["base"], over)))
    t0 = time.perf_counter()
    reused = sum((j[2] / "summary.json").is_file() for j in jobs)
    for variant, method, run_dir, raw in tqdm(jobs, desc="runs", disable=not progress):
        _run_one(raw, run_dir)
    wall = time.perf_counter() - t0
    report = [spec.get("title", "mmrelearn demo"), ""]
    monitored = spec["base"].get("train", {}).get("monitor_purity", False)
    modalities = spec["base"]["data"]["modalities"] if monitored else []
    for variant in spec["variants"]:
        groups = {m: [j[2] for j in jobs if j[0] == variant and j[1] == m] for m in spec["methods"]}
        dirs = [d for ds in groups.values() for d in ds]
        report += [f"## {variant}: {spec['descriptions'][variant]}", "",
                   "Test metrics (%) at the epoch selected on validation, mean ± std over seeds:",
                   "", markdown_table(aggregate(load_summaries(dirs)), time_reference="joint"), ""]
        if spec.get("probe", False):
            report += ["Uni-modal linear probes on the frozen encoders of the selected epoch "
                       "(logistic regression fitted on train, C chosen on val, test "
                       "accuracy %, mean ± std over seeds):", "", *_probe_table(groups), ""]
        for method, ds in groups.items() if monitored else ():
            report += [f"Per-modality purity at the last epoch ({method}, mean over seeds):",
                       *_purity_lines(ds), ""]
        for method, ds in groups.items():
            if any("dnr" in r for d in ds for r in read_jsonl(d / "reports.jsonl")):
                report += [f"D&R diagnoses ({method}):", *_trajectory_lines(ds), ""]
        fig = plot_groups(groups, out_dir / f"{variant}_curves.png", modalities)
        report += [f"Curves: {fig}", ""]
    report.append(f"Wall time: {wall:.0f} s for {len(jobs) - reused} runs trained now "
                  f"({reused} finished runs reused from {out_dir}).")
    text = "\n".join(report)
    atomic_write_text(text + "\n", out_dir / "results.md")
    return text
