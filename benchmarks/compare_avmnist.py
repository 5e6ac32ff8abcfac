"""Every balancing method on avmnist (the AV-MNIST recipe), default and scarcely informative audio.

Usage: python benchmarks/compare_avmnist.py [--seeds 5] [--epochs N] [--fsdd DIR]
                                            [--out benchmarks/results/compare_avmnist]

Runs each (seed, variant, method) of compare_avmnist.yaml, interleaved seed by seed (finished
runs in --out are reused, interrupted ones resumed), plus joint training on each modality
alone, then prints and writes ``results.md`` and ``results.json``: test accuracy, macro F1 and
weighted F1 (mean ± std over seeds, at the epoch selected on validation), each method's paired
difference to joint training (95% interval, paired t-test), the train/val gap, each modality's
linear-probe accuracy, wall-time ratios to joint training (median over seeds) and D&R's
diagnosis overhead, and the figures ``improvement.png`` and ``<variant>_probes.png``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from mmrelearn.comparison import run_comparison

HERE = Path(__file__).resolve().parent
DEFAULT_FSDD = HERE.parent.parent / "shared" / "datasets" / "fsdd"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--fsdd", default=str(DEFAULT_FSDD),
                   help="Free Spoken Digit Dataset directory (default ../shared/datasets/fsdd)")
    p.add_argument("--out", default=str(HERE / "results" / "compare_avmnist"))
    p.add_argument("--spec", default=str(HERE / "compare_avmnist.yaml"))
    args = p.parse_args()
    fsdd = Path(args.fsdd).resolve()
    if not fsdd.is_dir():
        sys.exit(f"FSDD directory {fsdd} not found; pass --fsdd DIR (the folder with the "
                 f"recordings/ WAV files of the Free Spoken Digit Dataset)")
    spec = yaml.safe_load(Path(args.spec).read_text())
    spec["base"]["data"]["root"] = str(fsdd)
    t0 = time.perf_counter()
    text = run_comparison(spec, Path(args.out), seeds=args.seeds, epochs=args.epochs)
    print(text)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; results in {args.out}/results.md")


if __name__ == "__main__":
    main()
