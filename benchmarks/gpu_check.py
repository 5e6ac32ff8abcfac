"""The device checks of issue 13 (section 3), one subcommand each; ``gpu_check.sh`` runs them.

    python benchmarks/gpu_check.py kmeans --device cuda --n 1000000      # CUDA vs CPU k-means
    python benchmarks/gpu_check.py media --root DIR                      # tiny Kinetics-Sounds
    python benchmarks/gpu_check.py train --root DIR --precision bf16     # a GPU-sized D&R run
    python benchmarks/gpu_check.py throughput --root DIR --precision 32  # trainer vs bare loop

Each prints what it measures and writes ``<out>/<name>.json``. ``--cpu-only`` sizes (small N,
narrow encoders, 32-pixel frames) let the plumbing be checked on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # diagnose_speed: features and the three k-means
sys.path.insert(0, str(ROOT / "tests"))  # mediafiles: the tests' tiny media writers

from diagnose_speed import faiss, make_features, run_faiss, run_mmrelearn  # noqa: E402

from mmrelearn.diagnose import minmax_scale, purity  # noqa: E402

KS = ROOT / "configs" / "kinetics_sounds_dnr.yaml"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _save(out: Path, name: str, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out / f'{name}.json'}", flush=True)


# ------------------------------------------------------------------ k-means on the device

def cmd_kmeans(a: argparse.Namespace) -> None:
    """mmrelearn's k-means on the device against mmrelearn and FAISS on all CPU threads."""
    x, y = make_features(a.n, a.classes, a.dims, spread=0.25, seed=0)
    xs = minmax_scale(x)
    torch.set_num_threads(a.threads)
    result: dict[str, Any] = {"n": a.n, "dims": a.dims, "classes": a.classes,
                              "n_init": a.n_init, "cpu_threads": a.threads}
    runs: dict[str, tuple[Callable[[], tuple], int]] = {}  # name -> (run, n_init)
    if a.device != "cpu":
        xd = xs.to(a.device)
        run_mmrelearn(xd[:2000], a.classes, 2, 0)  # CUDA context, kernels
        runs[f"mmrelearn_{a.device}"] = (lambda: run_mmrelearn(xd, a.classes, a.n_init, 0),
                                         a.n_init)
    runs["mmrelearn_cpu"] = (lambda: run_mmrelearn(xs, a.classes, a.cpu_n_init, 0),
                             a.cpu_n_init)
    if faiss is not None:  # FAISS's default 25 rounds, every point
        runs["faiss_cpu"] = (lambda: run_faiss(xs.numpy(), a.classes, a.cpu_n_init, 0, 25,
                                               a.threads), a.cpu_n_init)
    for name, (fn, n_init) in runs.items():
        t0 = time.perf_counter()
        labels, inertia, n_iter = fn()
        t = time.perf_counter() - t0
        result[name] = {"s": t, "purity": purity(labels, y), "inertia": inertia,
                        "n_iter": n_iter, "n_init": n_init}
        print(f"{name:>16}: {t:8.2f} s  purity {result[name]['purity']:.4f}  inertia "
              f"{inertia:.6g}  n_iter {n_iter}  (n_init {n_init})", flush=True)
    dev = f"mmrelearn_{a.device}"
    if a.device != "cpu" and a.cpu_n_init == a.n_init:
        for other in ("mmrelearn_cpu", "faiss_cpu"):
            if other in result:
                result[f"{other}_over_{dev}"] = result[other]["s"] / result[dev]["s"]
                print(f"{other} / {dev} = {result[f'{other}_over_{dev}']:.1f}x", flush=True)
    _save(a.out, "kmeans", result)


# ------------------------------------------------------------------ tiny media and runs

def cmd_media(a: argparse.Namespace) -> None:
    """Nine tiny Kinetics-Sounds clips (3 classes) in the real format, and their list."""
    import mediafiles  # needs PyAV

    raw = mediafiles.make_ks_raw(a.root / "raw")
    lines = [f"videos/{stem}.mp4,{label}" for stem, label in mediafiles.KS_CLIPS]
    for k, (stem, label) in enumerate(mediafiles.KS_CLIPS[::2]):  # a third clip per class
        mediafiles.write_mp4(raw / "videos" / f"{stem[0]}3.mp4", k)
        lines.append(f"videos/{stem[0]}3.mp4,{label}")
    (raw / "nine.csv").write_text("\n".join(lines) + "\n")
    print(f"tiny media in {raw}", flush=True)


def _overrides(a: argparse.Namespace, precision: str) -> list[str]:
    raw = a.root / "raw"
    over = [f"data.raw={raw}", f"data.list_file={raw / 'nine.csv'}",
            f"data.cache={a.root / f'cache{a.image_size}'}", "data.val_fraction=0.34",
            "data.test_fraction=0.33", f"data.image_size={a.image_size}",
            "data.progress=false", "train.num_workers=0", "train.progress=false",
            f"train.device={a.device}", f"model.encoders.audio.width={a.width}",
            f"model.encoders.visual.width={a.width}"]
    if precision != "32":  # the key of issue 13's section 2; absent from older builds
        over.append(f"train.precision={precision}")
    return over


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def cmd_train(a: argparse.Namespace) -> None:
    """configs/kinetics_sounds_dnr.yaml on the tiny clips at ``--precision``, D&R every epoch."""
    from mmrelearn.config import load_config
    from mmrelearn.train import train

    over = [*_overrides(a, a.precision), f"train.epochs={a.epochs}", "method.every=1"]
    cfg = load_config(KS, over)  # an unknown train.precision fails here, naming the key
    run_dir = a.out / f"run_{a.precision}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time
    t0 = time.perf_counter()
    summary = train(cfg, run_dir=run_dir)
    losses = [r["train"]["total"] for r in _jsonl(run_dir / "metrics.jsonl")]
    reports = [r["dnr"] for r in _jsonl(run_dir / "reports.jsonl") if "dnr" in r]
    result = {"precision": a.precision, "seconds": time.perf_counter() - t0,
              "train_total_per_epoch": losses, "all_finite": bool(np.isfinite(losses).all()),
              "dnr_reports": reports, "summary": summary, "overrides": over}
    print(f"precision {a.precision}: losses {['%.4f' % v for v in losses]}, finite "
          f"{result['all_finite']}, {len(reports)} D&R report(s)", flush=True)
    _save(a.out, f"train_{a.precision}", result)


class OnDevice(torch.utils.data.Dataset):
    """Random samples of the model's input shapes, held on the device (no loading cost)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], n: int, classes: int,
                 device: torch.device) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = {m: torch.randn(n, *s, generator=g).to(device) for m, s in shapes.items()}
        self.y = torch.randint(classes, (n,), generator=g).to(device)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return {m: v[i] for m, v in self.x.items()}, self.y[i]


def _bare_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, loader, device,
                precision: str) -> None:
    """The plain PyTorch loop: forward, cross-entropy, backward, step (autocast if asked)."""
    dtype = {"bf16": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    model.train()
    for inputs, y in loader:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(inputs).logits, y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()


def cmd_throughput(a: argparse.Namespace) -> None:
    """Samples/s of the trainer's epoch against the bare loop, same model, optimizer and
    batches (joint training: the D&R step is the joint step between diagnoses)."""
    from mmrelearn.config import load_config
    from mmrelearn.train import build_trainer

    device = torch.device(a.device)
    over = [*_overrides(a, a.precision), "method={name: joint}", f"train.batch_size={a.batch}"]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(load_config(KS, over), Path(tmp))
        shapes = {m: tuple(v.shape[1:]) for m, v in next(iter(trainer.loaders["val"]))[0].items()}
        data = OnDevice(shapes, a.samples, trainer.num_classes, device)
        loader = torch.utils.data.DataLoader(data, batch_size=a.batch, shuffle=False,
                                             drop_last=True)
        trainer._epoch_loader = loader
        trainer.method.on_fit_start(trainer.ctx)
        runs = {"trainer": lambda e: trainer._train_epoch(e),
                "bare": lambda e: _bare_epoch(trainer.model, trainer.optimizer, loader, device,
                                              a.precision)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for e in range(a.epochs + 1):  # epoch 0 warms up (cuDNN choices, allocator)
            for name in (list(runs) if e % 2 else list(runs)[::-1]):
                _sync(device)
                t0 = time.perf_counter()
                runs[name](e)
                _sync(device)
                if e > 0:
                    times[name].append(time.perf_counter() - t0)
    n = len(loader) * a.batch
    rate = {k: n / float(np.median(v)) for k, v in times.items()}
    result = {"precision": a.precision, "batch": a.batch, "samples_per_epoch": n,
              "input_shapes": shapes, "times": times, "samples_per_s": rate,
              "trainer_over_bare": rate["trainer"] / rate["bare"], "target": 0.97}
    print(f"precision {a.precision}: trainer {rate['trainer']:.1f} samples/s, bare loop "
          f"{rate['bare']:.1f} samples/s -> ratio {result['trainer_over_bare']:.3f} "
          f"(target >= 0.97)", flush=True)
    _save(a.out, f"throughput_{a.precision}", result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["kmeans", "media", "train", "throughput"])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="CPU threads of the CPU k-means (default: torch's)")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, default=512)
    ap.add_argument("--classes", type=int, default=31)
    ap.add_argument("--n-init", type=int, default=10)
    ap.add_argument("--cpu-n-init", type=int, default=10)
    ap.add_argument("--root", type=Path, default=HERE / "results" / "gpu_check" / "media")
    ap.add_argument("--precision", default="32", choices=["32", "bf16", "16-mixed"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--samples", type=int, default=512)
    a = ap.parse_args()
    {"kmeans": cmd_kmeans, "media": cmd_media, "train": cmd_train,
     "throughput": cmd_throughput}[a.command](a)


if __name__ == "__main__":
    main()
