"""The trainer's hot path: samples/s of training epochs, the trainer vs a bare PyTorch loop.

One CPU-sized setting (synthetic data, two modalities, MLP encoders, joint training, no
monitoring): each variant trains whole epochs on the same model initialisation, the same
training loader and the same optimizer settings, and only the training phase is timed (no
evaluation, no checkpoint):

* ``trainer_32`` / ``trainer_bf16``: ``Trainer._train_epoch`` at ``train.precision`` 32 / bf16;
* ``bare_32`` / ``bare_bf16``: the loop a user would write: forward, cross-entropy, zero_grad,
  backward, step (bf16: the forward and loss under ``torch.autocast``), nothing logged.

Variants run interleaved, one epoch each per round in a rotating order, so a load change on
a shared machine hits all of them alike; the figures are medians over rounds of samples/s and
of the per-round ratios (trainer / bare at each precision, bf16 / 32 for the trainer). On a
CPU without native bf16 arithmetic, bf16 is expected to be slower than float32; the ratio
trainer / bare is what this measures (target >= 0.97 on a GPU, see gpu_check.sh).

    OMP_NUM_THREADS=1 python benchmarks/hot_path.py            # about a minute
    OMP_NUM_THREADS=1 python benchmarks/hot_path.py --quick    # smoke run, seconds

Results go to --out (default benchmarks/results/hot_path.json).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from mmrelearn.config import config_from_dict
from mmrelearn.train import build_trainer

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "hot_path.json"


def raw_config(samples: int, width: int, batch: int) -> dict:
    return {
        "name": "hot_path", "seed": 0,
        "data": {"name": "synthetic", "num_samples": samples, "num_classes": 10,
                 "dims": [64, 64], "separations": [3.0, 1.0], "val_fraction": 0.1,
                 "test_fraction": 0.1, "split_seed": 0},
        "model": {"encoders": {m: {"type": "mlp", "hidden": [width, width]}
                               for m in ("m0", "m1")}},
        "method": {"name": "joint"},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "train": {"epochs": 1000, "batch_size": batch, "progress": False,
                  "monitor_purity": False, "log_test_every_epoch": False, "device": "cpu"},
    }


def trainer_epoch(raw: dict, precision: str, run_dir: Path) -> Callable[[], int]:
    """One training epoch of the Trainer per call; returns the samples it stepped on."""
    raw = copy.deepcopy(raw)
    raw["train"]["precision"] = precision
    trainer = build_trainer(config_from_dict(raw), run_dir)
    state = {"epoch": 0}

    def run() -> int:
        trainer.ctx.epoch = state["epoch"]
        trainer._train_epoch(state["epoch"])
        state["epoch"] += 1
        return len(trainer.loaders["diag_train"].dataset)

    return run


def bare_epoch(raw: dict, precision: str, run_dir: Path) -> Callable[[], int]:
    """The same model, loader and optimizer, trained by a plain PyTorch loop."""
    trainer = build_trainer(config_from_dict(copy.deepcopy(raw)), run_dir)  # same init
    model, loader, device = trainer.model, trainer.loaders["train"], trainer.device
    o = raw["optim"]
    opt = torch.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"])
    dtype = torch.bfloat16 if precision == "bf16" else None

    def run() -> int:
        model.train()
        n = 0
        for inputs, y in loader:
            inputs = {m: x.to(device) for m, x in inputs.items()}
            y = y.to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(inputs).logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(y)
        return n

    return run


def measure(raw: dict, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "trainer_32": trainer_epoch(raw, "32", Path(tmp) / "t32"),
            "bare_32": bare_epoch(raw, "32", Path(tmp) / "b32"),
            "trainer_bf16": trainer_epoch(raw, "bf16", Path(tmp) / "t16"),
            "bare_bf16": bare_epoch(raw, "bf16", Path(tmp) / "b16"),
        }
        for run in variants.values():  # warm-up: allocator, thread pools, first-call costs
            run()
        names = list(variants)
        rates: dict[str, list[float]] = {k: [] for k in names}
        n = 0
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]  # rotate the order
            for name in order:
                t0 = time.perf_counter()
                n = variants[name]()
                rates[name].append(n / (time.perf_counter() - t0))
    ratios = {
        "trainer_over_bare_32": [a / b for a, b in zip(rates["trainer_32"], rates["bare_32"])],
        "trainer_over_bare_bf16": [a / b for a, b in zip(rates["trainer_bf16"],
                                                         rates["bare_bf16"])],
        "trainer_bf16_over_32": [a / b for a, b in zip(rates["trainer_bf16"],
                                                       rates["trainer_32"])],
    }
    return {
        "train_samples": n,
        "samples_per_s": {k: {"median": statistics.median(v), "per_round": v}
                          for k, v in rates.items()},
        "ratios": {k: {"median": statistics.median(v), "min": min(v), "max": max(v),
                       "per_round": v} for k, v in ratios.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small smoke run")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 12)")
    ap.add_argument("--samples", type=int, default=8000)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if args.quick:
        args.samples, args.width, rounds = 800, 64, args.rounds or 2
    else:
        rounds = args.rounds or 12
    raw = raw_config(args.samples, args.width, args.batch)
    t0 = time.perf_counter()
    result = measure(raw, rounds)
    result["setting"] = {
        "train_samples": result.pop("train_samples"), "batch_size": args.batch,
        "encoders": "2 x MLP 64 -> %d -> %d" % (args.width, args.width), "classes": 10,
        "method": "joint", "optimizer": "SGD momentum 0.9", "rounds": rounds,
        "device": "cpu", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "machine": platform.machine(),
        "processor": platform.processor(), "seconds": time.perf_counter() - t0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"train epochs, {result['setting']['train_samples']} samples, batch {args.batch}, "
          f"{rounds} interleaved rounds, {torch.get_num_threads()} thread(s)")
    for name, v in result["samples_per_s"].items():
        print(f"  {name:<14} {v['median']:10.0f} samples/s (median)")
    for name, v in result["ratios"].items():
        print(f"  {name:<24} {v['median']:.3f} (min {v['min']:.3f}, max {v['max']:.3f})")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
