"""Comparisons under one protocol: every (seed, variant, method) run, interleaved, then reports.

A specification (``spec``) has a ``base`` config, ``methods`` and ``variants`` (lists of dotted
overrides), a ``title`` and a description per variant, and optionally ``probe: true`` (each
modality's linear probe on the frozen encoders), ``unimodal: [modality, ...]`` (joint
training on that modality alone, per variant and seed, through the dataset's ``modalities``
option; a ``data.noise`` on another modality is dropped for it), ``scarce: [variant, ...]`` (variants
where one modality is scarcely informative, the paper's Table 4 setting), ``method_seeds:
{method: n}`` (a costly method run on the first n seeds only; it is paired with the
reference over those), ``task`` and ``reference`` (default ``joint``), and ``paper_layout``: a
list of ``[label, method]`` rows (``method`` null for one that does not apply, shown as "/")
for a first table in the paper's layout (Acc, Weighted F1, Macro F1, mean ± std), with
``paper_note`` printed under it, and ``timing_note``, printed under the wall-time table (e.g.
which rows were timed in another session).

Runs go seed by seed, and within a seed every variant and method in turn, so load drift on a
shared machine hits every method alike; timing ratios are medians over seeds of per-seed ratios.
Finished runs are reused, interrupted ones resumed, a run directory of another config refused.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, median
from typing import Any, Optional

from .config import apply_overrides
from .report import aggregate, markdown_table, mean_std, paired_markdown, total_passes
from .train.checkpoint import atomic_write_text, read_jsonl
from .train.plots import plot_groups, plot_improvement, plot_probe_scatter
# run_or_reuse re-exported: comparisons and scripts train through it
from .train.run import drop_absent_noise, run_or_reuse

__all__ = ["Job", "comparison_jobs", "run_comparison", "collect_results", "timing_rows",
           "paper_layout_markdown", "run_or_reuse", "figure1"]

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One run of a comparison: ``method`` is a key of the spec's methods or ``alone_<m>``."""

    seed: int
    variant: str
    method: str
    run_dir: Path
    raw: dict


def comparison_jobs(spec: dict[str, Any], out_dir: Path, seeds: int,
                    epochs: Optional[int] = None) -> list[Job]:
    """Every run of ``spec`` in execution order: seed, then variant, then method."""
    methods = dict(spec["methods"])
    for m in spec.get("unimodal", []):
        methods[f"alone_{m}"] = [f"data.modalities=[{m}]", "method={name: joint}"]
    fewer = spec.get("method_seeds", {})
    unknown = sorted(set(fewer) - set(methods))
    if unknown:
        raise ValueError(f"method_seeds names {unknown}, which are not among the methods "
                         f"{sorted(methods)}")
    bad = [row for row in spec.get("paper_layout", [])
           if not (isinstance(row, (list, tuple)) and len(row) == 2
                   and (row[1] is None or row[1] in methods))]
    if bad:
        raise ValueError(f"paper_layout rows {bad} are not [label, method] pairs with method "
                         f"null or one of {sorted(methods)}")
    jobs = []
    for seed in range(seeds):
        for variant, var_over in spec["variants"].items():
            for method, m_over in methods.items():
                if seed >= fewer.get(method, seeds):
                    continue  # a costly method run on fewer seeds (stated in the spec)
                over = [*var_over, *m_over, f"seed={seed}", f"name={variant}-{method}",
                        "train.progress=false"]
                if epochs is not None:
                    over.append(f"train.epochs={epochs}")
                # a noise on a modality an alone_<m> run does not have is dropped for it
                raw = drop_absent_noise(apply_overrides(spec["base"], over))
                jobs.append(Job(seed, variant, method, out_dir / variant / method / f"seed{seed}",
                                raw))
    return jobs


def collect_results(spec: dict[str, Any], jobs: list[Job]) -> dict[str, Any]:
    """The ``results.json`` payload: per variant and method, per-seed test metrics (%), probe
    accuracies (%), the selected epoch's train/val accuracy (%), seconds by phase and passes
    over the training split (both with the prerequisite runs, such as teachers, included)."""
    from .probe import probe_run

    scarce = set(spec.get("scarce", []))
    out: dict[str, Any] = {"task": spec.get("task", spec["base"]["data"]["name"]),
                           "reference": spec.get("reference", "joint"), "variants": {}}
    for variant in spec["variants"]:
        methods: dict[str, Any] = {}
        for job in (j for j in jobs if j.variant == variant):
            s = json.loads((job.run_dir / "summary.json").read_text())
            e = methods.setdefault(job.method, {"seeds": [], "test": {}, "selected": {},
                                                "timing": {}})
            e["seeds"].append(job.seed)
            for k in ("acc", "macro_f1", "weighted_f1"):
                e["test"].setdefault(k, []).append(100.0 * s["test"][k])
            for split in ("train", "val"):
                e["selected"].setdefault(f"{split}_acc", []).append(100.0 * s[split]["acc"])
            for k, v in _seconds_with_prerequisites(s, job.run_dir).items():
                e["timing"].setdefault(f"{k}_s", []).append(v)
            e.setdefault("passes", []).append(total_passes(s))
            if spec.get("probe", False) and not job.method.startswith("alone_"):
                for m, r in probe_run(job.run_dir).items():
                    e.setdefault("probe", {}).setdefault(m, []).append(100.0 * r["test_acc"])
        out["variants"][variant] = {"description": spec["descriptions"][variant],
                                    "scarce": variant in scarce, "methods": methods}
    return out


def _seconds_with_prerequisites(summary: dict, run_dir: Path) -> dict[str, float]:
    """A run's seconds by phase plus those of its prerequisite runs (teachers, earlier stages),
    which its own ``seconds`` leave out: what the method cost."""
    out = dict(summary["seconds"])
    for rel in summary.get("prerequisites", {}).values():
        d = run_dir / rel
        for k, v in _seconds_with_prerequisites(
                json.loads((d / "summary.json").read_text()), d).items():
            out[k] = out.get(k, 0.0) + v
    return out


def timing_rows(methods: dict[str, Any], reference: str = "joint") -> list[dict[str, Any]]:
    """Per method: the median over seeds of its training seconds / the reference's (same seed),
    likewise for the whole epoch loop, and its epoch-end-hook seconds / its training seconds
    (D&R's diagnosis overhead)."""
    ref = methods[reference]
    ref_by_seed = dict(zip(ref["seeds"], zip(ref["timing"]["train_s"], ref["timing"]["eval_s"],
                                             ref["timing"]["method_s"])))
    rows = []
    for name, e in methods.items():
        t = e["timing"]
        train_r, total_r, hook = [], [], []
        for i, seed in enumerate(e["seeds"]):
            r_train, r_eval, r_hook = ref_by_seed[seed]
            train_r.append(t["train_s"][i] / r_train)
            total_r.append((t["train_s"][i] + t["eval_s"][i] + t["method_s"][i])
                           / (r_train + r_eval + r_hook))
            hook.append(t["method_s"][i] / t["train_s"][i])
        rows.append({"method": name, "train_ratio": median(train_r),
                     "total_ratio": median(total_r), "hook_over_train": median(hook),
                     "train_s": median(t["train_s"])})
    return rows


def paper_layout_markdown(methods: dict[str, Any], layout: list, note: str = "") -> str:
    """The paper's table layout: one row per ``[label, method]`` of ``layout`` with test Acc,
    Weighted F1 and Macro F1 (mean ± std over seeds, with the seed count); "/" where
    ``method`` is null (the method does not apply to this setting)."""
    lines = ["| Method | seeds | Acc | Weighted F1 | Macro F1 |", "|---|---|---|---|---|"]
    for label, name in layout:
        if name is None:
            lines.append(f"| {label} | - | / | / | / |")
            continue
        if name not in methods:
            raise ValueError(f"paper_layout row {label!r} names method {name!r}, which is not "
                             f"among the comparison's methods {sorted(methods)}")
        t = methods[name]["test"]
        lines.append(f"| {label} | {len(t['acc'])} | {mean_std(t['acc'])} | "
                     f"{mean_std(t['weighted_f1'])} | {mean_std(t['macro_f1'])} |")
    return "\n".join(lines + ([f"\n{note}"] if note else []))


def _variant_report(spec: dict, variant: str, entry: dict, jobs: list[Job], out_dir: Path,
                    reference: str) -> list[str]:
    # each run under its key in the spec (two keys may run one method, e.g. valuation at the
    # sample and the modality level): the tables group and pair runs by it
    summaries = [{**json.loads((j.run_dir / "summary.json").read_text()), "method": j.method}
                 for j in jobs]
    main = [s for j, s in zip(jobs, summaries) if not j.method.startswith("alone_")]
    methods = entry["methods"]
    lines = [f"## {variant}: {entry['description']}", "",
             "Test metrics (%) at the epoch selected on validation, mean ± std over seeds; "
             "passes = passes over the training split the method cost (samples stepped on "
             "over the split's size, its prerequisite runs such as uni-modal teachers "
             "included):", "",
             markdown_table(aggregate(summaries)), ""]
    if spec.get("paper_layout"):
        lines[2:2] = ["In the paper's layout (test %, mean ± std over seeds):", "",
                      paper_layout_markdown(methods, spec["paper_layout"],
                                            spec.get("paper_note", "")), "",
                      "All runs:", ""]
    if reference in methods and len(methods) > 1:
        lines += [f"Paired by seed against {reference} (test accuracy, percentage points; 95% "
                  f"t interval over seeds; paired t-test):", "",
                  paired_markdown(main, reference, "acc"), ""]
    lines += ["Train / validation accuracy (%) of the selected epoch (the training split in "
              "eval mode), mean over seeds:", "", "| method | train acc | val acc | gap |",
              "|---|---|---|---|"]
    for name, e in methods.items():
        tr, va = e["selected"]["train_acc"], e["selected"]["val_acc"]
        lines.append(f"| {name} | {mean(tr):.2f} | {mean(va):.2f} | {mean(tr) - mean(va):.2f} |")
    lines.append("")
    if any("probe" in e for e in methods.values()):
        mods = next(e for e in methods.values() if "probe" in e)["probe"]
        lines += ["Uni-modal linear probes on the frozen encoders of the selected epoch "
                  "(logistic regression fitted on train, C chosen on val, test accuracy %, "
                  "mean ± std over seeds):", "",
                  "| method | " + " | ".join(f"{m} probe acc" for m in mods) + " |",
                  "|---|" + "---|" * len(mods)]
        lines += [f"| {n} | " + " | ".join(mean_std(e["probe"][m]) for m in mods) + " |"
                  for n, e in methods.items() if "probe" in e]
        lines.append("")
    if reference in methods:
        lines += ["Wall time, median over seeds of the per-seed ratio to " + reference +
                  " (runs interleaved seed by seed); train = epoch start hook + batches, "
                  "total adds evaluation and the epoch-end hook; hook / train = the epoch-end "
                  "hook's seconds (D&R: diagnosis and re-initialisation) over training seconds; "
                  "a method's prerequisite runs (teachers, earlier stages) are included:",
                  "", "| method | train / " + reference + " | total / " + reference +
                  " | hook / train | train s (median) |", "|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['train_ratio']:.2f} | {r['total_ratio']:.2f} | "
                  f"{r['hook_over_train']:.3f} | {r['train_s']:.1f} |"
                  for r in timing_rows(methods, reference)]
        lines += ["", spec["timing_note"]] if spec.get("timing_note") else []
        lines.append("")
    groups: dict[str, list[Path]] = {}
    for j in jobs:
        groups.setdefault(j.method, []).append(j.run_dir)
    monitored = spec["base"].get("train", {}).get("monitor_purity", False)
    for method, ds in groups.items() if monitored else ():
        lines += [f"Per-modality purity at the last epoch ({method}, mean over seeds):",
                  *_purity_lines(ds), ""]
    for method, ds in groups.items():
        if any("dnr" in r for d in ds for r in read_jsonl(d / "reports.jsonl")):
            lines += [f"D&R diagnoses ({method}):", *_trajectory_lines(ds), ""]
    main_groups = {m: ds for m, ds in groups.items() if not m.startswith("alone_")}
    mods = spec["base"]["data"].get("modalities", []) if monitored else []
    fig = plot_groups(main_groups, out_dir / f"{variant}_curves.png", mods)
    lines += [f"Curves: [{fig.name}]({fig.name})", ""]  # beside results.md
    return lines


def _purity_lines(dirs: list[Path]) -> list[str]:
    """Per-modality train/val purity at the last epoch, mean over seeds."""
    last = [read_jsonl(d / "metrics.jsonl")[-1]["purity"] for d in dirs]
    lines = []
    for m in last[0]:
        p_tr = mean(p[m]["train"] for p in last)
        p_va = mean(p[m]["val"] for p in last)
        lines.append(f"  {m}: P_train {p_tr:.3f}  P_val {p_va:.3f}  gap {abs(p_tr - p_va):.3f}")
    return lines


def _trajectory_lines(dirs: list[Path]) -> list[str]:
    """Each D&R diagnosis of each seed: epoch, then gap and alpha per modality."""
    lines = []
    for d in dirs:
        for r in (r for r in read_jsonl(d / "reports.jsonl") if "dnr" in r):
            cells = ", ".join(f"{m} P_tr {v['p_train']:.3f} P_val {v['p_val']:.3f} "
                              f"gap {v['gap']:.3f} alpha {v['alpha']:.3f}"
                              for m, v in r["dnr"]["modalities"].items())
            lines.append(f"  {d.name} epoch {r['epoch']}: {cells}")
    return lines


def figure1(results: dict, improvement: Path, probes: str) -> tuple[Optional[Path], dict]:
    """Figure 1a (accuracy change over the reference, 95% intervals; uni-modal runs left out)
    into ``improvement``, and Figure 1b/c (probe scatter, two-modality tasks) per variant into
    ``probes.format(variant=...)``; returns the 1a path (None: nothing to draw) and
    {variant: 1b/c path}."""
    from .claims import improvement_rows, probe_points

    rows = [r for r in improvement_rows(results) if not r["method"].startswith("alone_")]
    fig = plot_improvement(rows, improvement) if rows else None
    scatter = {}
    for variant in results["variants"]:
        points = probe_points(results, variant)
        if points and len(next(iter(points.values()))) == 2:
            scatter[variant] = plot_probe_scatter(points, Path(probes.format(variant=variant)))
    return fig, scatter


def _figures(results: dict, out_dir: Path) -> list[str]:
    """Figure 1 beside results.md, as links."""
    fig, scatter = figure1(results, out_dir / "improvement.png",
                           str(out_dir / "{variant}_probes.png"))
    lines = [] if fig is None else [f"Accuracy change over {results['reference']} (95% "
                                    f"intervals): [{fig.name}]({fig.name})"]
    return lines + [f"Uni-modal probes ({v}): [{p.name}]({p.name})" for v, p in scatter.items()]


def run_comparison(spec: dict[str, Any], out_dir: Path, seeds: int = 3,
                   epochs: Optional[int] = None, progress: bool = True,
                   processes: int = 1) -> str:
    """Run every job of ``spec`` (see the module docstring) and write ``results.md``,
    ``results.json`` and the figures into ``out_dir``; returns the report text.

    ``processes > 1`` trains that many runs at once, each in its own process with
    cpu_count / processes threads, started in the interleaved order."""
    from .train.parallel import run_many

    out_dir = Path(out_dir)
    jobs = comparison_jobs(spec, out_dir, seeds, epochs)
    reused = sum((j.run_dir / "summary.json").is_file() for j in jobs)
    t0 = time.perf_counter()
    run_many([(j.raw, j.run_dir) for j in jobs], processes, progress)
    wall = time.perf_counter() - t0
    results = collect_results(spec, jobs)
    atomic_write_text(json.dumps(results, indent=1) + "\n", out_dir / "results.json")
    reference = results["reference"]
    report = [spec.get("title", "mmrelearn comparison"), ""]
    for variant, entry in results["variants"].items():
        report += _variant_report(spec, variant, entry, [j for j in jobs if j.variant == variant],
                                  out_dir, reference)
    report += _figures(results, out_dir) + [""]
    run_s = sum(sum(sum(e["timing"][k]) for k in ("train_s", "eval_s", "method_s"))
                for var in results["variants"].values() for e in var["methods"].values())
    report.append(f"Epoch seconds of all {len(jobs)} runs, summed: {run_s:.0f} s (data "
                  f"building and probes not included).")
    report.append(f"Wall time: {wall:.0f} s for {len(jobs) - reused} runs trained now "
                  f"({reused} finished runs reused; {processes} process(es)).")
    text = "\n".join(report)
    atomic_write_text(text + "\n", out_dir / "results.md")
    return text
