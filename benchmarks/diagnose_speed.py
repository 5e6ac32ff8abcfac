"""The diagnosis's k-means against FAISS and scikit-learn, and the diagnosis's share of a D&R run.

1. k-means: mmrelearn's torch ``kmeans`` (greedy k-means++, Lloyd to convergence, restarts
   batched), FAISS's ``faiss.Kmeans`` (faiss-cpu, benchmark-only; random seeding, a fixed
   ``--faiss-niter`` rounds, every point used: max_points_per_centroid = N) and scikit-learn's
   ``KMeans`` (greedy k-means++, Lloyd, tol 1e-4), each on the same min-max-scaled float32
   features (a seeded Gaussian mixture: N x d, C classes, class means ~ N(0, spread^2) against
   unit noise), with k = C, the same n_init (FAISS: nredo), seed 0 and the same number of
   threads (``--threads``: torch.set_num_threads, faiss.omp_set_num_threads, threadpoolctl).
   Times cover the clustering and the labels (FAISS: train + one search); repeats interleave
   the libraries (the order rotates), so a load change on the machine hits all of them;
   ratios are medians of the per-repeat ratios.
2. Share of the diagnosis in a D&R run vs N (10k .. 1M training samples): the schedule, model
   and k-means settings of configs/kinetics_sounds_dnr.yaml (ResNet-18 audio + visual, 512-d
   features, 31 classes, 90 epochs, H 20, at most 3 diagnoses, n_init 10; validation = 1/8 of
   the training split). Per-sample costs of a training step and of a feature pass are
   measured on ``--device`` with random inputs of the config's shapes; the k-means time at N
   is measured at --share-sizes and interpolated per sample between them (log N); beyond the
   largest measured N it is extrapolated at that N's per-sample cost, and the table says so.
3. One diagnosis of the demo model against one training epoch (as before).

    OMP_NUM_THREADS=1 python benchmarks/diagnose_speed.py     # about 8 minutes on one core
    python benchmarks/diagnose_speed.py --quick               # smoke run, under a minute

Prints and writes --out (.json) and the same path with .txt, rewritten after every measurement.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import yaml

from mmrelearn.diagnose import kmeans, minmax_scale, purity

try:  # benchmark-only dependencies: a library that is missing is left out
    import faiss
except ImportError:
    faiss = None
try:
    import sklearn
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits
except ImportError:
    sklearn = None

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "diagnose_speed.json"
KS_CONFIG = HERE.parent / "configs" / "kinetics_sounds_dnr.yaml"
KS_SHAPES = {"audio": (128, 1001), "visual": (3, 3, 224, 224)}  # kinetics_sounds preset, 3 frames


def make_features(n: int, c: int, d: int, *, spread: float, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian mixture: class means ~ N(0, spread^2 I) in d dims, unit noise: (n, d), (n,)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(c, (n,), generator=g)
    means = torch.randn(c, d, generator=g) * spread  # (c, d)
    return means[y] + torch.randn(n, d, generator=g), y


# ------------------------------------------------------------------ the three k-means

def run_mmrelearn(x: torch.Tensor, k: int, n_init: int, seed: int) -> tuple:
    r = kmeans(x, k, n_init=n_init, seed=seed)
    if x.is_cuda:
        torch.cuda.synchronize()
    return r.labels.cpu(), r.inertia, r.n_iter


def run_faiss(x: np.ndarray, k: int, n_init: int, seed: int, niter: int, threads: int) -> tuple:
    faiss.omp_set_num_threads(threads)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=n_init, seed=seed,
                      max_points_per_centroid=x.shape[0], verbose=False)  # every point
    km.train(x)
    dist, labels = km.index.search(x, 1)  # the labels (squared distances) of the best centres
    return torch.as_tensor(labels[:, 0]), float(dist.sum(dtype=np.float64)), niter


def run_sklearn(x: np.ndarray, k: int, n_init: int, seed: int, threads: int) -> tuple:
    with threadpool_limits(limits=threads):
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x)
    return torch.as_tensor(km.labels_), float(km.inertia_), int(km.n_iter_)


def _timed(fn: Callable, *args) -> tuple[float, tuple]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def compare_point(n: int, c: int, d: int, n_init: int, *, args: argparse.Namespace) -> dict:
    """Every library on one (N, C, d, n_init), ``args.repeats`` interleaved rounds."""
    x, y = make_features(n, c, d, spread=args.spread, seed=args.seed)
    xs = minmax_scale(x)
    xn = xs.numpy()  # shares memory: every library sees the very same float32 values
    libs: dict[str, Callable[[], tuple]] = {
        "mmrelearn": lambda: run_mmrelearn(xs, c, n_init, 0)}
    if faiss is not None:
        libs["faiss"] = lambda: run_faiss(xn, c, n_init, 0, args.faiss_niter, args.threads)
    if sklearn is not None:
        libs["sklearn"] = lambda: run_sklearn(xn, c, n_init, 0, args.threads)
    repeats = args.repeats if n <= args.large else args.repeats_large
    times: dict[str, list[float]] = {name: [] for name in libs}
    found: dict[str, tuple] = {}
    load = [os.getloadavg()[0]]
    for rep in range(repeats):
        names = list(libs)
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            if name == "sklearn" and n > args.large and rep > 0:
                continue  # minutes at 100k: once
            t, out = _timed(libs[name])
            times[name].append(t)
            found.setdefault(name, out)
        load.append(os.getloadavg()[0])
    row = {"n": n, "classes": c, "dims": d, "n_init": n_init, "loadavg_1m": load}
    for name, (labels, inertia, n_iter) in found.items():
        row[name] = {"s": float(np.median(times[name])), "times": times[name],
                     "purity": purity(labels, y), "inertia": inertia, "n_iter": n_iter}
    for other in ("faiss", "sklearn"):
        if other in row:  # > 1: mmrelearn is faster; paired within a round, then the median
            pairs = [o / m for o, m in zip(times[other], times["mmrelearn"])]
            row[f"{other}_over_mmrelearn"] = float(np.median(pairs))
    return row


COMPARE_HEADER = (f"{'N':>7} {'C':>3} {'d':>4} {'n_init':>6} | {'mmrelearn s':>11} {'faiss s':>8} "
                  f"{'sklearn s':>9} | {'faiss/mm':>8} {'skl/mm':>7} | {'P mm':>6} {'P faiss':>7} "
                  f"{'P skl':>6} | {'iters mm/faiss/skl':>18} | {'load':>4}")


def format_compare(r: dict) -> str:
    nan = float("nan")  # a library left out
    def get(lib: str, key: str, fmt: str) -> str:
        return format(r[lib][key], fmt) if lib in r else "-"
    iters = "/".join(str(r[lib]["n_iter"]) if lib in r else "-"
                     for lib in ("mmrelearn", "faiss", "sklearn"))
    return (f"{r['n']:>7} {r['classes']:>3} {r['dims']:>4} {r['n_init']:>6} | "
            f"{get('mmrelearn', 's', '.2f'):>11} {get('faiss', 's', '.2f'):>8} "
            f"{get('sklearn', 's', '.2f'):>9} | {r.get('faiss_over_mmrelearn', nan):>8.2f} "
            f"{r.get('sklearn_over_mmrelearn', nan):>7.2f} | "
            f"{get('mmrelearn', 'purity', '.4f'):>6} {get('faiss', 'purity', '.4f'):>7} "
            f"{get('sklearn', 'purity', '.4f'):>6} | {iters:>18} | {max(r['loadavg_1m']):>4.1f}")


# ------------------------------------------------------------------ share of a D&R run

def encoder_costs(device: torch.device, batch: int, steps: int) -> dict:
    """Seconds per sample of one training step (forward, backward, SGD) and of one feature
    pass (eval, no grad) of the Kinetics-Sounds config's model, random inputs; medians."""
    from mmrelearn.models import build_model

    spec = yaml.safe_load(KS_CONFIG.read_text())
    model = build_model(spec["model"]["encoders"], KS_SHAPES, 31,
                        fusion=spec["model"]["fusion"]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    inputs = {m: torch.randn(batch, *s, device=device) for m, s in KS_SHAPES.items()}
    y = torch.randint(31, (batch,), device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(inputs).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()

    def encode() -> None:
        with torch.no_grad():
            model.eval()
            model.encode(inputs)
            model.train()
            sync()

    step(), encode()  # warm-up: allocations, oneDNN / cuDNN choices
    train = [_timed(step)[0] / batch for _ in range(steps)]
    feats = [_timed(encode)[0] / batch for _ in range(steps)]
    return {"batch": batch, "steps": steps, "train_s_per_sample": float(np.median(train)),
            "encode_s_per_sample": float(np.median(feats)), "train_times": train,
            "encode_times": feats}


def kmeans_time_at(n: float, measured: dict[int, float]) -> tuple[float, str]:
    """k-means seconds at N from measured {N: seconds}: per-sample cost interpolated in log N;
    outside the measured range the nearest measured per-sample cost (flagged)."""
    sizes = sorted(measured)
    per = [measured[s] / s for s in sizes]
    if n in measured:
        return measured[int(n)], "measured"
    if n > sizes[-1] or n < sizes[0]:
        return n * (per[-1] if n > sizes[-1] else per[0]), "extrapolated"
    return n * float(np.interp(math.log(n), [math.log(s) for s in sizes], per)), "interpolated"


def share_table(costs: dict, measured: dict[int, float], sizes: Sequence[int],
                cap: Optional[int]) -> list[dict]:
    """The diagnosis's share of a whole D&R run (the Kinetics-Sounds schedule) at each N."""
    spec = yaml.safe_load(KS_CONFIG.read_text())
    epochs, every = spec["train"]["epochs"], spec["method"]["every"]
    n_diag = min(spec["method"]["max_times"], (epochs - 1) // every)  # at epochs H, 2H, ...
    n_mod = len(spec["model"]["encoders"])
    t_tr, t_enc = costs["train_s_per_sample"], costs["encode_s_per_sample"]
    rows = []
    for n in sizes:
        n_val = n / 8  # val_fraction 0.1 and test_fraction 0.1 of the whole set
        d_tr, d_va = (min(n, cap), min(n_val, cap)) if cap else (n, n_val)
        (km_tr, how_tr), (km_va, how_va) = kmeans_time_at(d_tr, measured), kmeans_time_at(
            d_va, measured)
        epoch = n * t_tr + n_val * t_enc  # a training pass and the validation evaluation
        feats = (d_tr + d_va) * t_enc
        km = n_mod * (km_tr + km_va)
        run = epochs * epoch + n_diag * (feats + km)
        rows.append({"n_train": n, "n_val": n_val, "cap": cap, "epoch_s": epoch,
                     "features_s": feats, "kmeans_s": km, "kmeans_how": [how_tr, how_va],
                     "n_diagnoses": n_diag, "epochs": epochs, "run_s": run,
                     "diagnosis_share": n_diag * (feats + km) / run,
                     "kmeans_share": n_diag * km / run})
    return rows


SHARE_HEADER = (f"{'N train':>9} {'cap':>7} | {'epoch s':>10} {'features s':>10} "
                f"{'k-means s':>9} | {'run h':>8} | {'diag share':>10} {'k-means share':>13} | "
                "k-means time (train, val)")


def format_share(r: dict) -> str:
    cap = f"{r['cap']:,}" if r["cap"] else "-"
    return (f"{r['n_train']:>9,} {cap:>7} | {r['epoch_s']:>10.1f} {r['features_s']:>10.1f} "
            f"{r['kmeans_s']:>9.1f} | {r['run_s'] / 3600:>8.1f} | "
            f"{100 * r['diagnosis_share']:>9.2f}% {100 * r['kmeans_share']:>12.3f}% | "
            f"{', '.join(r['kmeans_how'])}")


# ------------------------------------------------------------------ the demo, as before

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


# ------------------------------------------------------------------ driver

def machine_info(threads: int) -> dict:
    info = {"python": sys.version.split()[0], "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "numpy": np.__version__, "threads": threads,
            "sklearn": sklearn.__version__ if sklearn else None,
            "faiss": faiss.__version__ if faiss else None,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, 64 dims")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON path (.txt beside it)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--classes", type=int, default=31)
    ap.add_argument("--dims", type=int, default=512)
    ap.add_argument("--n-inits", type=int, nargs="+", default=[10, 1])
    ap.add_argument("--spread", type=float, default=0.25,
                    help="std of the class means against unit noise (0.25: moderate overlap)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic features")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="threads of every library (default: torch's, i.e. OMP_NUM_THREADS)")
    ap.add_argument("--faiss-niter", type=int, default=25, help="FAISS rounds (its default)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds per point ...")
    ap.add_argument("--large", type=int, default=20000, help="... up to this N; above it:")
    ap.add_argument("--repeats-large", type=int, default=2, help="(sklearn once)")
    ap.add_argument("--device", default="cpu", help="device of the share measurement (part 2)")
    ap.add_argument("--share-sizes", type=int, nargs="+", default=[1250, 10000, 30000, 100000],
                    help="N at which k-means (n_init 10) is timed for part 2")
    ap.add_argument("--share-cap", type=int, default=100000,
                    help="also the table with method.max_samples at this cap")
    ap.add_argument("--encoder-batch", type=int, default=2)
    ap.add_argument("--skip", nargs="*", default=[], choices=["compare", "share", "demo"])
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.dims, args.n_inits, args.repeats = [2000], 64, [10], 2
        args.share_sizes, args.encoder_batch = [1000, 4000], 1
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    meta = machine_info(args.threads)
    result: dict = {"benchmark": "diagnose_speed", "machine": meta,
                    "config": {k: str(v) if isinstance(v, Path) else v
                               for k, v in vars(args).items()}}
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")

    t_start = time.perf_counter()
    say(f"torch {meta['torch']}, faiss {meta['faiss']}, sklearn {meta['sklearn']}; "
        f"{args.threads} thread(s) for every library; {meta['cpu_count']} CPUs; {meta['platform']}")
    say(f"features: Gaussian mixture, spread {args.spread}, seed {args.seed}, min-max scaled; "
        f"k-means seed 0; FAISS niter {args.faiss_niter} (fixed), mmrelearn and sklearn to "
        "convergence (tol 1e-4, max 300)")
    warm = minmax_scale(make_features(600, 5, 16, spread=1.0, seed=1)[0])  # lazy set-ups
    run_mmrelearn(warm, 5, 2, 0)
    if faiss is not None:
        run_faiss(warm.numpy(), 5, 2, 0, 5, args.threads)
    if sklearn is not None:
        run_sklearn(warm.numpy(), 5, 2, 0, args.threads)
    if "compare" not in args.skip:
        say("\n1. k-means, median seconds over interleaved rounds; faiss/mm and skl/mm: "
            "how many times longer than mmrelearn (paired per round)")
        say(COMPARE_HEADER)
        say("-" * len(COMPARE_HEADER))
        result["compare"] = []
        for n in args.sizes:
            for n_init in args.n_inits:
                result["compare"].append(
                    compare_point(n, args.classes, args.dims, n_init, args=args))
                say(format_compare(result["compare"][-1]))
    if "share" not in args.skip:
        share_part(args, device, result, say)
    if "demo" not in args.skip:
        d = result["diagnosis_vs_epoch"] = diagnosis_vs_epoch()
        say(f"\n3. {d['setting']}: one training epoch {d['epoch_s']:.3f} s, one diagnosis "
            f"{d['diagnosis_s']:.3f} s ({d['train_samples']} train + {d['val_samples']} val "
            f"samples) -> diagnosis / epoch = {d['diagnosis_over_epoch']:.2f}")
    say(f"\ntotal {time.perf_counter() - t_start:.0f} s; results in {args.out} (.txt beside it)")


def share_part(args: argparse.Namespace, device: torch.device, result: dict,
               say: Callable[[str], None]) -> None:
    """Part 2: k-means timed at --share-sizes on --device, encoder costs, the two tables."""
    measured: dict[int, float] = {}
    for row in result.get("compare", []):  # reuse part 1's CPU points (same data, n_init 10)
        if device.type == "cpu" and row["n_init"] == 10 and row["dims"] == args.dims:
            measured[row["n"]] = row["mmrelearn"]["s"]
    for n in args.share_sizes:
        if n not in measured:
            x, _ = make_features(n, args.classes, args.dims, spread=args.spread, seed=args.seed)
            xs = minmax_scale(x).to(device)
            measured[n] = _timed(run_mmrelearn, xs, args.classes, 10, 0)[0]
    costs = encoder_costs(device, args.encoder_batch, steps=3)
    result["share"] = {"kmeans_measured_s": {str(k): v for k, v in sorted(measured.items())},
                       "encoder_costs": costs, "device": str(device)}
    say(f"\n2. Share of the diagnosis in a D&R run ({KS_CONFIG.name}: ResNet-18 audio + visual, "
        "90 epochs, 3 diagnoses at H 20, n_init 10, 2 modalities x (train + val) k-means), "
        f"on {device} with {args.threads} thread(s); validation = N / 8")
    say(f"   measured: training step {costs['train_s_per_sample']:.4f} s/sample, feature pass "
        f"{costs['encode_s_per_sample']:.4f} s/sample (batch {costs['batch']}, random inputs); "
        f"k-means ({args.dims} x {args.classes}, n_init 10) at N = "
        + ", ".join(f"{n:,}: {t:.2f} s" for n, t in sorted(measured.items())))
    say("   epochs and features scale linearly with N from the measured per-sample costs; "
        "k-means as marked in the last column")
    say(SHARE_HEADER)
    say("-" * len(SHARE_HEADER))
    sizes = [10000, 30000, 100000, 300000, 1000000]
    result["share"]["rows"] = []
    for cap in (None, args.share_cap):
        for row in share_table(costs, measured, sizes, cap):
            result["share"]["rows"].append(row)
            say(format_share(row))


if __name__ == "__main__":
    main()
