"""Speed and purity of the diagnosis's k-means: mmrelearn's torch ``kmeans`` vs scikit-learn.

For each feature set (N samples x d dims, C classes; a seeded Gaussian mixture with moderate
overlap) the features are min-max scaled to [-1, 1] once, as ``cluster_purity`` does, and both
implementations cluster the same float32 array with k = C, n_init in {1, 10}, seed / random_state 0,
max_iter 300, tol 1e-4. Wall times (time.perf_counter) cover the clustering only; the scaling
time is recorded separately.

    python benchmarks/diagnose_speed.py            # full grid (N up to 100k, 512 dims)
    python benchmarks/diagnose_speed.py --quick    # smoke run, a few seconds

Results go to --out (default benchmarks/results/diagnose_speed.json), rewritten after every
measurement so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import sklearn
import torch
from sklearn.cluster import KMeans

from mmrelearn.diagnose import kmeans, minmax_scale, purity

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "diagnose_speed.json"


def make_features(
    n: int, c: int, d: int, *, spread: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian mixture: class means ~ N(0, spread^2 I) in d dims, unit noise: (n, d), (n,)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(c, (n,), generator=g)
    means = torch.randn(c, d, generator=g) * spread  # (c, d)
    return means[y] + torch.randn(n, d, generator=g), y


def _torch_kmeans(x: torch.Tensor, k: int, n_init: int) -> tuple[torch.Tensor, float, int]:
    r = kmeans(x, k, n_init=n_init, seed=0)
    return r.labels, r.inertia, r.n_iter


def _sklearn_kmeans(x: np.ndarray, k: int, n_init: int) -> tuple[np.ndarray, float, int]:
    km = KMeans(n_clusters=k, n_init=n_init, random_state=0).fit(x)
    return km.labels_, float(km.inertia_), int(km.n_iter_)


def _timed(fn: Callable, *args) -> tuple[float, tuple]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def _timed_repeats(
    fn: Callable, *args, min_time: float, max_repeats: int
) -> tuple[list[float], tuple]:
    """Run ``fn`` until ``min_time`` seconds have passed (at most ``max_repeats`` runs).

    Cheap cases are repeated so that one scheduler hiccup does not decide them; the result of
    every run is the same (fixed seeds), so the first is returned with all the times.
    """
    times, out = [], None
    while len(times) < max_repeats and sum(times) < min_time:
        t, res = _timed(fn, *args)
        times.append(t)
        out = res if out is None else out
    return times, out


def _warm_up() -> None:
    """First calls pay for lazy set-up (thread pools, BLAS); keep that out of the timings."""
    x, _ = make_features(500, 5, 32, spread=1.0, seed=123)
    x = minmax_scale(x)
    _torch_kmeans(x, 5, 2)
    _sklearn_kmeans(x.numpy(), 5, 2)


def run_kmeans_grid(
    sizes: Sequence[int],
    classes: Sequence[int],
    dims: int,
    n_inits: Sequence[int],
    *,
    spread: float = 0.25,
    seed: int = 0,
    min_time: float = 1.0,
    max_repeats: int = 5,
    on_row: Optional[Callable[[dict], None]] = None,
) -> list[dict]:
    """Time torch ``kmeans`` and sklearn ``KMeans`` side by side on every (N, C, n_init).

    Returns one dict per measurement: n, classes, dims, n_init, torch/sklearn time (s, the
    median over repeats; see ``min_time``, ``max_repeats``), all repeat times, purity, inertia
    and n_iter, speedup = sklearn_time / torch_time, and the 1-minute load average before and
    after (other processes on the machine skew times). ``on_row`` sees each row as soon as it
    is measured (progress printing, incremental saving).
    """
    rep = dict(min_time=min_time, max_repeats=max_repeats)
    rows = []
    for n in sorted(sizes):
        for c in classes:
            x, y = make_features(n, c, dims, spread=spread, seed=seed)
            scale_s, xs = _timed(minmax_scale, x)
            xs_np = xs.numpy()  # shares memory: both sides see the very same float32 values
            for n_init in n_inits:
                load_before = os.getloadavg()[0]
                ts_torch, (lab_t, inertia_t, iter_t) = _timed_repeats(
                    _torch_kmeans, xs, c, n_init, **rep)
                ts_sk, (lab_s, inertia_s, iter_s) = _timed_repeats(
                    _sklearn_kmeans, xs_np, c, n_init, **rep)
                t_torch, t_sk = float(np.median(ts_torch)), float(np.median(ts_sk))
                row = {
                    "n": n, "classes": c, "dims": dims, "n_init": n_init, "scale_s": scale_s,
                    "torch_s": t_torch, "sklearn_s": t_sk, "speedup": t_sk / t_torch,
                    "torch_times": ts_torch, "sklearn_times": ts_sk,
                    "torch_purity": purity(lab_t, y),
                    "sklearn_purity": purity(torch.as_tensor(lab_s), y),
                    "torch_inertia": inertia_t, "sklearn_inertia": inertia_s,
                    "torch_n_iter": iter_t, "sklearn_n_iter": iter_s,
                    "loadavg_1m": [load_before, os.getloadavg()[0]],
                }
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return rows


def diagnosis_vs_epoch(repeats: int = 3) -> dict:
    """One D&R diagnosis vs one training epoch of the demo model, timed side by side.

    The demo's clean setting (mfeat fac + fou, MLP encoders, D&R with n_init 10) is built once;
    training epochs and full diagnoses (features of the whole train and validation splits, two
    k-means per modality) alternate ``repeats`` times; the medians and their ratio are returned.
    """
    import tempfile

    from mmrelearn.config import apply_overrides, config_from_dict
    from mmrelearn.demo import load_demo_spec
    from mmrelearn.train import build_trainer

    spec = load_demo_spec()
    raw = apply_overrides(spec["base"], [*spec["methods"]["dnr"], "train.progress=false"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(config_from_dict(raw), Path(tmp))
        trainer.method.on_fit_start(trainer.ctx)
        epoch_s, diag_s = [], []
        for i in range(repeats):
            epoch_s.append(_timed(trainer._train_epoch, i)[0])
            diag_s.append(_timed(trainer.method.dr.diagnose, i)[0])
    e, d = float(np.median(epoch_s)), float(np.median(diag_s))
    return {"setting": "demo clean (mfeat fac+fou, MLP 128-64, batch 64, D&R n_init 10)",
            "train_samples": len(trainer.loaders["diag_train"].dataset),
            "val_samples": len(trainer.loaders["val"].dataset),
            "epoch_s": e, "diagnosis_s": d, "diagnosis_over_epoch": d / e,
            "epoch_times": epoch_s, "diagnosis_times": diag_s}


HEADER = (f"{'N':>7} {'C':>3} {'n_init':>6} | {'torch s':>8} {'sklearn s':>9} "
          f"{'skl/torch':>9} | {'P torch':>7} {'P skl':>7} | {'inertia torch/skl':>17} | "
          f"{'iters t/s':>9} | {'load':>4}")


def format_row(r: dict) -> str:
    return (f"{r['n']:>7} {r['classes']:>3} {r['n_init']:>6} | {r['torch_s']:>8.2f} "
            f"{r['sklearn_s']:>9.2f} {r['speedup']:>9.2f} | {r['torch_purity']:>7.4f} "
            f"{r['sklearn_purity']:>7.4f} | {r['torch_inertia'] / r['sklearn_inertia']:>17.5f} | "
            f"{r['torch_n_iter']:>4}/{r['sklearn_n_iter']:<4} | {max(r['loadavg_1m']):>4.1f}")


def machine_info() -> dict:
    info = {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "sklearn": sklearn.__version__, "numpy": np.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
    }
    try:  # sklearn's own OpenMP / BLAS pools (threadpoolctl ships with scikit-learn)
        from threadpoolctl import threadpool_info
        info["sklearn_threadpools"] = [
            {k: p.get(k) for k in ("user_api", "internal_api", "num_threads")}
            for p in threadpool_info()]
    except ImportError:
        pass
    return info


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: N=1000, C=10, 64 dims")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000])
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 31])
    ap.add_argument("--dims", type=int, default=512)
    ap.add_argument("--n-inits", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--spread", type=float, default=0.25,
                    help="std of the class means against unit noise (0.25: moderate overlap)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic features")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--min-time", type=float, default=1.0,
                    help="repeat a measurement until this many seconds have passed ...")
    ap.add_argument("--max-repeats", type=int, default=5, help="... or this many runs")
    ap.add_argument("--epoch-only", action="store_true",
                    help="only the diagnosis-vs-training-epoch measurement")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.classes, args.dims, args.n_inits = [1000], [10], 64, [1, 2]
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    meta = machine_info()
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    extra: dict = {}

    def save() -> None:
        result = {"benchmark": "kmeans", "config": config, "machine": meta, "rows": rows, **extra}
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    def on_row(row: dict) -> None:
        rows.append(row)
        print(format_row(row), flush=True)
        save()

    print(f"torch {meta['torch']} ({meta['torch_num_threads']} threads), "
          f"sklearn {meta['sklearn']}, {meta['cpu_count']} CPUs, {meta['platform']}", flush=True)
    print(f"features: Gaussian mixture, {args.dims} dims, spread {args.spread}, seed {args.seed}; "
          "min-max scaled; times in seconds (clustering only)", flush=True)
    _warm_up()
    t0 = time.perf_counter()
    d = extra["diagnosis_vs_epoch"] = diagnosis_vs_epoch()
    print(f"\n{d['setting']}: one training epoch {d['epoch_s']:.3f} s, one diagnosis "
          f"{d['diagnosis_s']:.3f} s ({d['train_samples']} train + {d['val_samples']} val samples)"
          f" -> diagnosis / epoch = {d['diagnosis_over_epoch']:.2f}\n", flush=True)
    save()
    if not args.epoch_only:
        print(HEADER, flush=True)
        print("-" * len(HEADER), flush=True)
        run_kmeans_grid(args.sizes, args.classes, args.dims, args.n_inits,
                        spread=args.spread, seed=args.seed, min_time=args.min_time,
                        max_repeats=args.max_repeats, on_row=on_row)
    print(f"total {time.perf_counter() - t0:.1f} s; results in {args.out}", flush=True)


if __name__ == "__main__":
    main()
