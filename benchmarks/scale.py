"""Scaling measurements, one part each (``--part all``: every part in turn), merged into
``scale.json`` under --out (a part run alone keeps the others' keys):

* ``trainer``: samples/s of the trainer's training epochs against a bare PyTorch loop on the
  same model, data and optimizer, at precision 32 and bf16, interleaved rounds, median ratios
  (``benchmarks/hot_path.py``'s measurement; ``hot_path.json`` is that script's own run).
* ``ddp``: training throughput of 1 process against 2 DDP processes (torchrun, gloo, CPU) on
  the same config and global batch, and their agreement.
* ``diagnosis``: the diagnosis's share of a D&R run from 10k to 1M samples
  (``benchmarks/diagnose_speed.py``'s part 2: per-sample costs and k-means times measured here,
  larger N extrapolated and marked).

Usage: OMP_NUM_THREADS=1 python benchmarks/scale.py [--part all|trainer|ddp|diagnosis]
       [--samples 20000] [--epochs 3] [--width 256] [--out benchmarks/results]

Part ``ddp``: each setting trains joint training on synthetic data (two 64-d modalities, MLP
encoders of two hidden layers of --width, without BatchNorm or dropout, so that the runs can
agree to float rounding) in a fresh process: ``1x1`` one process with one thread, ``1x2`` one
process with two threads, and ``2x1`` ``torchrun --nproc_per_node 2`` with one thread each.
Throughput is training samples per second of the training phase (``time_s.train`` of every
epoch in ``metrics.jsonl``: batches, forward, backward, gradient all-reduce; no evaluation).
Correctness: the largest absolute difference between the final weights of the 1- and
2-process runs, and whether their test metrics agree. Timings on a shared machine: the load
average is stored.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from mmrelearn.train.checkpoint import read_jsonl

HERE = Path(__file__).resolve().parent


def _config(samples: int, epochs: int, width: int) -> dict:
    mlp = {"type": "mlp", "hidden": [width, width], "batchnorm": False, "dropout": 0.0}
    return {"name": "scale", "seed": 0,
            "data": {"name": "synthetic", "num_samples": samples, "num_classes": 10,
                     "dims": [64, 64], "separations": [2.0, 1.0], "val_fraction": 0.1,
                     "test_fraction": 0.1, "split_seed": 0},
            "model": {"encoders": {"m0": mlp, "m1": dict(mlp)}},
            "method": {"name": "joint"},
            "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
            "train": {"epochs": epochs, "batch_size": 256, "eval_batch_size": 2048,
                      "progress": False, "log_test_every_epoch": False, "device": "cpu"}}


def _run(setting: str, cfg: Path, run_dir: Path) -> dict:
    procs, threads = (int(x) for x in setting.split("x"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    train = ["-m", "mmrelearn", "train", "-c", str(cfg), "--run-dir", str(run_dir)]
    if procs == 1:
        cmd = [sys.executable, *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(procs), *train]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{setting} failed:\n{done.stderr[-3000:]}")
    records = read_jsonl(run_dir / "metrics.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text())
    samples = _train_size(run_dir) * sum(r["passes"] for r in records)  # stepped on
    seconds = sum(r["time_s"]["train"] for r in records)
    return {"processes": procs, "threads_per_process": threads,
            "train_seconds": seconds, "samples_per_s": samples / seconds,
            "test": summary["test"]}


def _train_size(run_dir: Path) -> int:
    from mmrelearn.config import config_from_dict
    from mmrelearn.train.run import build_data_for, build_method

    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    return len(build_data_for(cfg, build_method(cfg)).train)


def ddp_part(samples: int, epochs: int, width: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = tmp / "scale.yaml"
        cfg.write_text(yaml.safe_dump(_config(samples, epochs, width)))
        out = {s: _run(s, cfg, tmp / s) for s in ("1x1", "1x2", "2x1")}
        w = {s: torch.load(tmp / s / "checkpoints/last.pt", weights_only=True)["model"]
             for s in ("1x1", "2x1")}
    diff = max(float((w["1x1"][k] - w["2x1"][k]).abs().max()) for k in w["1x1"])
    return {"config": _config(samples, epochs, width), "settings": out,
            "ratio_2x1_over_1x1": out["2x1"]["samples_per_s"] / out["1x1"]["samples_per_s"],
            "ratio_2x1_over_1x2": out["2x1"]["samples_per_s"] / out["1x2"]["samples_per_s"],
            "max_abs_weight_diff_1_vs_2_processes": diff,
            "same_test_metrics": out["1x1"]["test"] == out["2x1"]["test"],
            "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0]}


def trainer_part(width: int) -> dict:
    """Trainer vs bare loop (hot_path.py's measurement, 8,000 samples, batch 64, 12 rounds)."""
    import hot_path  # benchmarks/ is on the path

    result = hot_path.measure(hot_path.raw_config(8000, width, 64), 12)
    for name, v in result["ratios"].items():
        print(f"  {name:<24} {v['median']:.3f} (min {v['min']:.3f}, max {v['max']:.3f})")
    return result


def diagnosis_part(out: Path) -> dict:
    """The diagnosis's share of a D&R run vs N (diagnose_speed.py's part 2)."""
    import diagnose_speed  # benchmarks/ is on the path

    args = diagnose_speed.parse_args(["--skip", "compare", "demo",
                                      "--out", str(out / "scale_diagnosis.json")])
    result: dict = {}
    diagnose_speed.share_part(args, torch.device(args.device), result, print)
    return result["share"]


def ddp_report(result: dict) -> None:
    print("setting  processes x threads  samples/s  train s")
    for name, r in result["settings"].items():
        print(f"{name:8} {r['processes']} x {r['threads_per_process']:<17} "
              f"{r['samples_per_s']:9.0f}  {r['train_seconds']:7.2f}")
    print(f"2 processes / 1 process (1 thread each): {result['ratio_2x1_over_1x1']:.2f}; "
          f"/ 1 process with 2 threads: {result['ratio_2x1_over_1x2']:.2f}")
    print(f"max |weights(1 process) - weights(2 processes)|: "
          f"{result['max_abs_weight_diff_1_vs_2_processes']:.2e}; same test metrics: "
          f"{result['same_test_metrics']}; load average {result['load_average_1min']:.1f} "
          f"on {result['cpu_count']} cores")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["all", "trainer", "ddp", "diagnosis"], default="all")
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--width", type=int, default=256, help="MLP hidden width (two layers)")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    out = Path(args.out)
    path = out / "scale.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(path.read_text()) if path.is_file() else {}
    command = " ".join(["python benchmarks/scale.py", *sys.argv[1:]])
    parts = ["trainer", "ddp", "diagnosis"] if args.part == "all" else [args.part]
    for part in parts:
        print(f"\n== {part}")
        if part == "trainer":
            result = trainer_part(args.width)
        elif part == "ddp":
            result = ddp_part(args.samples, args.epochs, args.width)
            ddp_report(result)
        else:
            result = diagnosis_part(out)
        result["command"] = command
        merged[part] = result
        path.write_text(json.dumps(merged, indent=2) + "\n")  # each part as it finishes
    print(f"written: {path}")


if __name__ == "__main__":
    main()
