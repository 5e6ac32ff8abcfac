"""The command line shared by the comparison benchmarks (compare_mfeat, _avdigits, _avmnist)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_FSDD = HERE.parent.parent / "shared" / "datasets" / "fsdd"


def parse(doc: str, task: str, seeds: int, fsdd: bool) -> argparse.Namespace:
    """``--seeds --epochs --out --spec`` (and ``--fsdd`` for the FSDD-based tasks)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--seeds", type=int, default=seeds)
    p.add_argument("--epochs", type=int, default=None)
    if fsdd:
        p.add_argument("--fsdd", default=str(DEFAULT_FSDD),
                       help="Free Spoken Digit Dataset directory (default ../shared/datasets/fsdd)")
    p.add_argument("--out", default=str(HERE / "results" / task))
    p.add_argument("--spec", default=str(HERE / f"{task}.yaml"))
    p.add_argument("--processes", type=int, default=1,
                   help="runs trained at once, each in its own process (default 1)")
    return p.parse_args()


def load_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The spec file, with ``data.root`` pointed at ``--fsdd`` (checked) when the task has it."""
    spec = yaml.safe_load(Path(args.spec).read_text())
    if getattr(args, "fsdd", None) is not None:
        fsdd = Path(args.fsdd).resolve()
        if not fsdd.is_dir():
            sys.exit(f"FSDD directory {fsdd} not found; pass --fsdd DIR (the folder with the "
                     f"recordings/ WAV files of the Free Spoken Digit Dataset)")
        spec["base"]["data"]["root"] = str(fsdd)
    return spec


def main(doc: str, task: str, seeds: int, fsdd: bool) -> None:
    """Parse the command line, run the comparison, print its report and the wall time."""
    from mmrelearn.comparison import run_comparison

    args = parse(doc, task, seeds, fsdd)
    spec = load_spec(args)
    t0 = time.perf_counter()
    text = run_comparison(spec, Path(args.out), seeds=args.seeds, epochs=args.epochs,
                          processes=args.processes)
    print(text)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; results in {args.out}/results.md")
