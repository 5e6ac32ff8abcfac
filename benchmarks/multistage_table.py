"""The table of docs/results.md "The methods that change the shape of training", from the
comparisons' results.json: per method and task variant, test accuracy (mean ± std over its
seeds), its paired difference to joint training with the 95% interval (bold: significant at
5%), joint training's mean over the same seeds, and the passes over the training split.

Usage: python benchmarks/multistage_table.py [--out benchmarks/results/multistage_table.md]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean, stdev

from mmrelearn.stats import paired_table

HERE = Path(__file__).resolve().parent
TASKS = ("compare_mfeat", "compare_avdigits", "compare_avmnist")
METHODS = {"mla": "MLA", "amco": "AMCo", "reconboost": "ReconBoost",
           "valuation": "Valuation (sample)", "valuation_modality": "Valuation (modality)",
           "umt": "UMT", "ume": "UME", "dimml": "DI-MML"}


def _by_seed(entry: dict) -> dict[int, float]:
    return dict(zip(entry["seeds"], entry["test"]["acc"]))


def cell(variant: dict, method: str) -> str:
    """``acc ± std, Δ [low, high]`` against joint training over the method's seeds."""
    e, ref = variant["methods"][method], variant["methods"]["joint"]
    r = paired_table({method: _by_seed(e), "joint": _by_seed(ref)}, "joint", 0.95)[method]
    delta = f"{r.mean:+.2f} [{r.low:+.2f}, {r.high:+.2f}]"
    if r.verdict(0.05) != "no evidence":
        delta = f"**{delta}**"
    return f"{mean(e['test']['acc']):.2f} ± {stdev(e['test']['acc']):.2f}, {delta}"


def joint_on_seeds(variant: dict, seeds: list[int]) -> float:
    """Joint training's mean test accuracy over ``seeds`` (the new methods' seeds)."""
    ref = _by_seed(variant["methods"]["joint"])
    return mean(ref[s] for s in seeds)


def table(results: dict[str, dict]) -> str:
    cols = [(t, v) for t in results for v in results[t]["variants"]]
    first = next(iter(METHODS))
    lines = ["| method | " + " | ".join(f"{t.removeprefix('compare_')} {v}" for t, v in cols)
             + " | passes |", "|---|" + "---|" * len(cols) + "---|"]
    joint = []
    for t, v in cols:
        var = results[t]["variants"][v]
        joint.append(f"{joint_on_seeds(var, var['methods'][first]['seeds']):.2f}")
    ref_passes = "; ".join(
        f"{mean(next(iter(res['variants'].values()))['methods']['joint']['passes']):.4g}"
        for res in results.values())
    lines.append("| joint (same seeds) | " + " | ".join(joint) + f" | {ref_passes} |")
    for m, label in METHODS.items():
        passes = "; ".join("/".join(f"{mean(var['methods'][m]['passes']):.4g}"
                                    for var in results[t]["variants"].values())
                           for t in results)
        lines.append(f"| {label} | " + " | ".join(cell(results[t]["variants"][v], m)
                                                 for t, v in cols) + f" | {passes} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE / "results" / "multistage_table.md"))
    args = p.parse_args()
    results = {t: json.loads((HERE / "results" / t / "results.json").read_text()) for t in TASKS}
    text = table(results)
    print(text)
    Path(args.out).write_text(text + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
