"""Every balancing method on real mfeat data, clean and noisy, several seeds, one protocol.

Usage: python benchmarks/compare_mfeat.py [--seeds 3] [--epochs N] [--out benchmarks/results/compare_mfeat]

Runs each (seed, variant, method) of compare_mfeat.yaml, interleaved seed by seed (finished runs in --out are reused,
interrupted ones resumed), then prints and writes ``results.md``: test accuracy, macro F1 and
weighted F1 (mean ± std over seeds, at the epoch selected on validation) and each method's
training wall time relative to joint training. Greedy is not in the table: it is defined for
two ResNet branches joined by MMTM modules, which vector features do not have.
"""
from __future__ import annotations

import comparison_args  # benchmarks/ is on the path

if __name__ == "__main__":
    comparison_args.main(__doc__, "compare_mfeat", seeds=3, fsdd=False)
