"""The paper's Figures 1, 3, 4 and 5 on avmnist and mfeat, each drawn from results files.

Usage: python benchmarks/paper_figures.py [--seeds 3] [--fsdd DIR] [--tasks avmnist,mfeat]
                                          [--jobs 1] [--out benchmarks/results/figures]

* Figure 1 (accuracy change over joint training; uni-modal probe quality): redrawn from the
  committed ``compare_avmnist`` and ``compare_mfeat`` results.json (run those benchmarks first).
* Figure 4 (purity gap per modality, test accuracy and test representation purity over
  training, re-initialisations marked): joint training and D&R, ``--seeds`` seeds, trained
  here with ``train.monitor_purity``, ``train.monitor_test_purity`` and
  ``train.log_test_every_epoch`` (test numbers drawn, never read for selection or diagnosis),
  in the comparison benchmark's setting.
* Figure 3 (t-SNE of each modality's validation features): the seed-0 runs of Figure 4, joint
  training beside D&R.
* Figure 5 (sensitivity to lambda and H): ``mmrelearn sweep``'s machinery, lambda in
  {1, 3, 5, 7, 9} at the benchmark's H, then H in {5, 10, 20} at its lambda, with joint training
  as the band (the two sweeps share the baseline runs).

Finished runs under --out are reused, interrupted ones resumed. Each figure lists the files it
was drawn from in ``figures.md``. Run it with OMP_NUM_THREADS=1 (the committed figures were):
about 35 minutes on one thread, nearly all of it avmnist's sweep.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_FSDD = HERE.parent.parent / "shared" / "datasets" / "fsdd"
#: task -> (comparison spec, the D&R entry of its methods, variant of Figures 3-5)
TASKS = {"avmnist": ("compare_avmnist", "dnr", "default"),
         "mfeat": ("compare_mfeat", "dnr", "clean")}
LAMBDAS = [1, 3, 5, 7, 9]
EVERY = [5, 10, 20]


def _base(task: str, fsdd: Path) -> tuple[dict, dict]:
    """The benchmark's base config (its Figure variant applied) and its D&R method section."""
    from mmrelearn.config import apply_overrides

    spec_name, dnr_key, variant = TASKS[task]
    spec = yaml.safe_load((HERE / f"{spec_name}.yaml").read_text())
    base = apply_overrides(spec["base"], spec["variants"][variant])
    if base["data"]["name"] == "avmnist":
        base["data"]["root"] = str(fsdd)
    dnr = apply_overrides(base, spec["methods"][dnr_key])["method"]
    return base, dnr


def figure1(task: str, out: Path) -> list[str]:
    from mmrelearn.comparison import figure1 as draw

    src = HERE / "results" / TASKS[task][0] / "results.json"
    if not src.is_file():
        return [f"* Figure 1 ({task}): skipped, {src.relative_to(HERE.parent)} is missing"]
    fig, scatter = draw(json.loads(src.read_text()), out / f"fig1a_{task}.png",
                        str(out / f"fig1bc_{task}_{{variant}}.png"))
    lines = [] if fig is None else [f"* Figure 1a ({task}): {fig.name} from "
                                    f"{src.relative_to(HERE.parent)}"]
    return lines + [f"* Figure 1b/c ({task}, {v}): {p.name}" for v, p in scatter.items()]


def monitored_runs(task: str, base: dict, dnr: dict, seeds: int, out: Path) -> dict[str, list]:
    """Joint training and D&R with every monitor on: run directories by method."""
    from mmrelearn.comparison import run_or_reuse

    runs: dict[str, list] = {"joint": [], "dnr": []}
    for seed in range(seeds):
        for method, section in (("joint", {"name": "joint"}), ("dnr", dnr)):
            raw = copy.deepcopy(base)
            raw.update(name=f"{task}-{method}", seed=seed, method=copy.deepcopy(section))
            raw["train"].update(monitor_purity=True, monitor_test_purity=True,
                                log_test_every_epoch=True, progress=False)
            d = out / "runs" / task / method / f"seed{seed}"
            run_or_reuse(raw, d)
            runs[method].append(d)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--fsdd", default=str(DEFAULT_FSDD), help="FSDD directory (avmnist's audio)")
    p.add_argument("--tasks", default="avmnist,mfeat")
    p.add_argument("--out", default=str(HERE / "results" / "figures"))
    p.add_argument("--jobs", type=int, default=1,
                   help="sweep runs trained at once, each in its own process (default 1)")
    args = p.parse_args()

    from mmrelearn.analysis import purity_figure, tsne_figure
    from mmrelearn.sweep import run_sweep

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; choose from {sorted(TASKS)}")
    fsdd = Path(args.fsdd).resolve()
    if "avmnist" in tasks and not fsdd.is_dir():
        raise SystemExit(f"FSDD directory {fsdd} not found; pass --fsdd DIR")
    lines = ["# The paper's figures on mmrelearn's tasks", "",
             "Written by `python benchmarks/paper_figures.py`; each entry names its source.", ""]
    t0 = time.perf_counter()
    for task in tasks:
        base, dnr = _base(task, fsdd)
        lines += [f"## {task}", ""] + figure1(task, out)
        runs = monitored_runs(task, base, dnr, args.seeds, out)
        every = [d for ds in runs.values() for d in ds]
        fig4 = purity_figure(every, out / f"fig4_{task}.png")
        lines.append(f"* Figure 4: {fig4.name} from {len(every)} runs under runs/{task}/ "
                     f"(joint and D&R, {args.seeds} seeds)")
        fig3 = tsne_figure([runs["joint"][0], runs["dnr"][0]], out / f"fig3_{task}.png",
                           split="val", max_samples=1000, seed=0)
        lines.append(f"* Figure 3: {fig3.name}, validation features of the seed-0 runs")
        sweep_base = copy.deepcopy(base)
        sweep_base.update(name=f"{task}-sweep", method=copy.deepcopy(dnr))
        sweep_dir = out / "sweeps" / task
        seeds = list(range(args.seeds))
        for key, values in (("method.lam", LAMBDAS), ("method.every", EVERY)):
            short = key.split(".")[1]
            text = run_sweep(sweep_base, {key: values}, seeds, sweep_dir, jobs=args.jobs,
                             progress=False, report=f"sweep_{short}")
            png = sweep_dir / f"sweep_{short}.png"
            target = out / f"fig5_{task}_{short}.png"
            target.write_bytes(png.read_bytes())
            lines += [f"* Figure 5 ({short}): {target.name} from "
                      f"sweeps/{task}/sweep_{short}.json", "", text.replace("# Sweep", "### Sweep", 1), ""]
        lines.append("")
    lines.append(f"Wall time {time.perf_counter() - t0:.0f} s.")
    text = "\n".join(lines)
    (out / "figures.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
