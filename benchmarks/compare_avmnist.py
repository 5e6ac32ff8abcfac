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

import comparison_args  # benchmarks/ is on the path

if __name__ == "__main__":
    comparison_args.main(__doc__, "compare_avmnist", seeds=5, fsdd=True)
