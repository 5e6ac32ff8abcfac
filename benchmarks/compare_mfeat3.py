"""Every balancing method with three modalities (paper Table 3 left, on mfeat fou + zer + mor).

Usage: python benchmarks/compare_mfeat3.py [--seeds 10] [--epochs N]
                                           [--out benchmarks/results/compare_mfeat3]

Runs each (seed, method) of compare_mfeat3.yaml, interleaved seed by seed (finished runs in
--out are reused, interrupted ones resumed), plus joint training on each view alone, then
prints and writes ``results.md`` and ``results.json``: first a table in the paper's layout
(Acc, Weighted F1, Macro F1, mean ± std over seeds, Greedy as "/"), then the paired
differences to joint training (95% interval, paired t-test), the train/val gap, linear probes
per view, wall-time ratios to joint training and D&R's diagnoses. Run it with
OMP_NUM_THREADS=1 (the committed results were).
"""
from __future__ import annotations

import comparison_args  # benchmarks/ is on the path

if __name__ == "__main__":
    comparison_args.main(__doc__, "compare_mfeat3", seeds=10, fsdd=False)
