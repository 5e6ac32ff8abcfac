"""Every balancing method on real mfeat data, clean and noisy, several seeds, one protocol.

Usage: python benchmarks/compare_mfeat.py [--seeds 3] [--epochs N] [--out benchmarks/results/compare_mfeat]

Runs each (variant, method, seed) of compare_mfeat.yaml (finished runs in --out are reused,
interrupted ones resumed), then prints and writes ``results.md``: test accuracy, macro F1 and
weighted F1 (mean ± std over seeds, at the epoch selected on validation) and each method's
training wall time relative to joint training. Greedy is not in the table: it is defined for
two ResNet branches joined by MMTM modules, which vector features do not have.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from mmrelearn.demo import run_comparison

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out", default=str(HERE / "results" / "compare_mfeat"))
    p.add_argument("--spec", default=str(HERE / "compare_mfeat.yaml"))
    args = p.parse_args()
    spec = yaml.safe_load(Path(args.spec).read_text())
    t0 = time.perf_counter()
    text = run_comparison(spec, Path(args.out), seeds=args.seeds, epochs=args.epochs)
    print(text)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; results in {args.out}/results.md")


if __name__ == "__main__":
    main()
