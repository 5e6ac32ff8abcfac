"""Every applicable balancing method on a narrow MBT from scratch (paper Table 3 right, avmnist).

Usage: python benchmarks/compare_avmnist_mbt.py [--seeds 3] [--epochs N] [--fsdd DIR]
                                                [--out benchmarks/results/compare_avmnist_mbt]

Runs each (seed, method) of compare_avmnist_mbt.yaml, interleaved seed by seed (finished runs
in --out are reused, interrupted ones resumed), then prints and writes ``results.md`` and
``results.json``: first a table in the paper's layout (Acc, Weighted F1, Macro F1, mean ± std
over seeds; Greedy, which refuses MBT, as "/"), then the paired differences to joint training
(95% interval, paired t-test), the train/val gap, each stream's linear probe, the wall time of
each method relative to joint training (median over seeds) and D&R's diagnoses. The committed
results ran with OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import comparison_args  # benchmarks/ is on the path

if __name__ == "__main__":
    comparison_args.main(__doc__, "compare_avmnist_mbt", seeds=3, fsdd=True)
