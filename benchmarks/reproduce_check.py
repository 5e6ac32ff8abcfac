"""Re-run one committed run of each comparison benchmark and compare it with the stored run.

Usage: python benchmarks/reproduce_check.py [--fsdd DIR] [--out /tmp/reproduce]

For each (benchmark, variant, method, seed) below, the run is trained again from the
benchmark's spec into --out, with the thread count that benchmark ran with (float sums, hence
results, depend on it), and its metrics.jsonl (wall times aside) and summary test metrics are
compared with those of the run directory the benchmark left under benchmarks/results/ (which
must exist locally; run directories are not committed) and with results.json. Prints one line
per run: identical, or the first epoch that differs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_FSDD = HERE.parent.parent / "shared" / "datasets" / "fsdd"
#: (benchmark, variant, method, seed, intra-op threads its committed results ran with)
#: UMT (teachers first, then the student) and DI-MML (stage 1, then stage 2) check that a
#: multi-stage run, its prerequisite runs included, is reproduced too.
RUNS = [("compare_mfeat", "clean", "ogm_ge", 0, 1), ("compare_avmnist", "default", "dnr", 0, 2),
        ("compare_avdigits", "clean", "pmr", 0, 2), ("compare_avmnist", "default", "umt", 0, 1),
        ("compare_mfeat", "noisy", "dimml", 0, 1)]


def _strip(records: list[dict], stored: list[dict]) -> list[dict]:
    """Records without wall times, and without ``passes`` where the stored run predates it."""
    drop = {"time_s"} | ({"passes"} if stored and "passes" not in stored[0] else set())
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def main() -> None:
    import torch

    from mmrelearn.comparison import comparison_jobs
    from mmrelearn.train.checkpoint import read_jsonl
    from mmrelearn.train.run import run_or_reuse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fsdd", default=str(DEFAULT_FSDD))
    p.add_argument("--out", default="/tmp/reproduce")
    p.add_argument("--only", default=None, help="comma-separated benchmarks to check")
    args = p.parse_args()
    only = set(args.only.split(",")) if args.only else None
    for bench, variant, method, seed, threads in RUNS:
        if only is not None and bench not in only:
            continue
        torch.set_num_threads(threads)  # float sums, hence results, depend on it
        spec = yaml.safe_load((HERE / f"{bench}.yaml").read_text())
        if "root" in spec["base"]["data"]:
            spec["base"]["data"]["root"] = str(Path(args.fsdd).resolve())
        stored_root = HERE / "results" / bench
        job = next(j for j in comparison_jobs(spec, stored_root, seeds=seed + 1)
                   if (j.variant, j.method, j.seed) == (variant, method, seed))
        if not (job.run_dir / "metrics.jsonl").is_file():
            print(f"{bench} {variant}/{method}/seed{seed}: no stored run directory; skipped")
            continue
        new_dir = Path(args.out) / bench / variant / method / f"seed{seed}"
        summary = run_or_reuse(job.raw, new_dir)
        stored = read_jsonl(job.run_dir / "metrics.jsonl")
        old, new = (_strip(read_jsonl(d / "metrics.jsonl"), stored)
                    for d in (job.run_dir, new_dir))
        committed = json.loads((stored_root / "results.json").read_text())
        entry = committed["variants"][variant]["methods"][method]
        acc = entry["test"]["acc"][entry["seeds"].index(seed)]
        differ = next((o["epoch"] for o, n in zip(old, new) if o != n), None)
        same = differ is None and len(old) == len(new)
        print(f"{bench} {variant}/{method}/seed{seed} ({threads} thread(s)): metrics.jsonl "
              f"{'identical' if same else f'differs from epoch {differ}'} over {len(new)} "
              f"epochs; test acc {100 * summary['test']['acc']:.2f} (results.json {acc:.2f})")


if __name__ == "__main__":
    main()
