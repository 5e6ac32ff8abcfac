"""Check the paper's claims (C1-C5) on the comparison results: paired t-tests over seeds.

Usage: python benchmarks/claims.py [RESULTS_JSON ...] [--out benchmarks/results]

Reads each comparison's ``results.json`` (default: compare_mfeat, compare_avdigits,
compare_avmnist, compare_mfeat3 and compare_avmnist_mbt under benchmarks/results/; missing ones
are skipped with a note), and writes ``claims.md`` and ``claims.json`` into --out: per claim,
task and variant the mean difference in percentage points, its 95% interval, the paired t-test's
p-value, the verdict at the 5% level and whether the claim holds; then D&R's rank among every
method present and every method against joint training. The claims are listed in
``mmrelearn.claims.CLAIMS``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mmrelearn.claims import write_claims

HERE = Path(__file__).resolve().parent
TASKS = ("compare_mfeat", "compare_avdigits", "compare_avmnist", "compare_mfeat3",
         "compare_avmnist_mbt")


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it (for the notes)."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="*",
                   default=[_shown(HERE / "results" / t / "results.json") for t in TASKS])
    p.add_argument("--out", default=_shown(HERE / "results"))
    args = p.parse_args()
    command = " ".join(["python benchmarks/claims.py", *sys.argv[1:]])
    md, js, missing = write_claims(args.results, args.out, command)
    for path in missing:
        print(f"note: {path} does not exist; skipped")
    print(md.read_text())
    print(f"written: {md}, {js}")


if __name__ == "__main__":
    main()
