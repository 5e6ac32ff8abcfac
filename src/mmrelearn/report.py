"""Tables over finished runs: mean and standard deviation over seeds, and paired differences
against a reference method, as markdown."""
from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Mapping, Optional, Sequence, Union

from .stats import paired_table

__all__ = ["mean_std", "load_summaries", "aggregate", "markdown_table", "paper_table", "paired_rows",
           "paired_markdown", "total_passes"]

METRICS = (("acc", "Acc"), ("macro_f1", "Macro F1"), ("weighted_f1", "Weighted F1"))


def mean_std(values: Sequence[float]) -> str:
    """``"mean ± std"`` with two decimals (sample std, n - 1; 0 for a single value)."""
    return f"{mean(values):.2f} ± {stdev(values) if len(values) > 1 else 0.0:.2f}"


def load_summaries(run_dirs: Sequence[Union[str, Path]]) -> list[dict[str, Any]]:
    """Read ``summary.json`` of each run directory (error naming any unfinished one)."""
    out = []
    for d in run_dirs:
        path = Path(d) / "summary.json"
        if not path.is_file():
            raise FileNotFoundError(f"{d}: no summary.json (not a finished run directory)")
        out.append(json.loads(path.read_text()))
    return out


def total_passes(summary: Mapping[str, Any]) -> Optional[float]:
    """Passes over the training split a finished run cost, its prerequisites included (a
    summary written before passes were counted: its epochs; None when it has neither)."""
    passes = summary.get("passes")
    if passes:
        return float(passes["total"])
    return float(summary["epochs"]) if "epochs" in summary else None


def aggregate(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group runs by config name; mean and sample std (n-1) over seeds of each test metric.

    The figures are the test metrics of the epoch selected on validation.
    """
    groups: dict[str, list[dict]] = {}
    for s in summaries:
        groups.setdefault(s["name"], []).append(s)
    rows = []
    for name, runs in groups.items():
        row: dict[str, Any] = {"name": name, "method": runs[0]["method"],
                               "seeds": sorted(r["seed"] for r in runs)}
        for key, _ in METRICS:
            vals = [100.0 * r["test"][key] for r in runs]
            row[key] = (mean(vals), stdev(vals) if len(vals) > 1 else 0.0)
        row["train_seconds"] = mean(r["train_seconds_total"] for r in runs)
        passes = [total_passes(r) for r in runs]
        row["passes"] = None if None in passes else mean(passes)
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], time_reference: Optional[str] = None) -> str:
    """A markdown table: run, method, seeds, passes over the training split (mean over seeds;
    prerequisite runs included), then each metric as mean +- std (in %).

    With ``time_reference`` (a method name present in ``rows``), a last column gives each
    row's mean training wall time relative to that method's (compare runs timed together).
    """
    ref = None
    if time_reference is not None:
        ref = next((r["train_seconds"] for r in rows if r["method"] == time_reference), None)
    titles = [t for _, t in METRICS] + ([f"time / {time_reference}"] if ref else [])
    lines = ["| run | method | seeds | passes | " + " | ".join(titles) + " |",
             "|---|---|---|---|" + "---|" * len(titles)]
    for r in rows:
        cells = [f"{r[k][0]:.2f} ± {r[k][1]:.2f}" for k, _ in METRICS]
        if ref:
            cells.append(f"{r['train_seconds'] / ref:.2f}x")
        lines.append(f"| {r['name']} | {r['method']} | {len(r['seeds'])} | "
                     f"{'-' if r['passes'] is None else format(r['passes'], '.4g')} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _setting(name: str, method: str) -> str:
    """The data setting of a run: its name without the ``-<method>`` suffix that the
    comparison runner gives (``<variant>-<method>``), else the whole name."""
    suffix = f"-{method}"
    return name[: -len(suffix)] if name.endswith(suffix) and name != suffix else name


def paper_table(rows: Sequence[dict[str, Any]]) -> str:
    """The layout of the paper's Tables 1 and 4: one row per method, one column group per data
    setting (the run name without its ``-<method>`` suffix), each Acc / Macro F1 / Weighted F1
    as mean ± std (in %). A method not run on a setting gets ``-``.
    """
    settings: list[str] = []
    cells: dict[tuple[str, str], dict] = {}
    methods: list[str] = []
    for r in rows:
        setting = _setting(r["name"], r["method"])
        settings += [setting] if setting not in settings else []
        methods += [r["method"]] if r["method"] not in methods else []
        cells[(r["method"], setting)] = r
    head = "| Method | " + " | ".join(f"{s} {t}" for s in settings for _, t in METRICS) + " |"
    lines = [head, "|---|" + "---|" * (len(settings) * len(METRICS))]
    for m in methods:
        vals = []
        for s in settings:
            r = cells.get((m, s))
            vals += ([f"{r[k][0]:.2f} ± {r[k][1]:.2f}" for k, _ in METRICS] if r
                     else ["-"] * len(METRICS))
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _seed_values(summaries: Sequence[dict[str, Any]], metric: str
                 ) -> dict[tuple[str, str], dict[Any, float]]:
    """(setting, method) -> {seed: test metric in %}, settings and methods in first-seen order."""
    groups: dict[tuple[str, str], dict[Any, float]] = {}
    owner: dict[tuple[str, str], str] = {}
    for s in summaries:
        key = (_setting(s["name"], s["method"]), s["method"])
        if owner.setdefault(key, s["name"]) != s["name"]:
            raise ValueError(f"runs {owner[key]!r} and {s['name']!r} are both {key[1]!r} on "
                             f"setting {key[0]!r}; compare them separately")
        seeds = groups.setdefault(key, {})
        if s["seed"] in seeds:
            raise ValueError(f"{s['name']}: seed {s['seed']} is given twice")
        seeds[s["seed"]] = 100.0 * s["test"][metric]
    return groups


def paired_rows(summaries: Sequence[dict[str, Any]], reference: str, metric: str = "acc",
                level: float = 0.95, alpha: float = 0.05) -> list[dict[str, Any]]:
    """Each run group against the reference method's group of the same data setting, by seed.

    Runs are grouped by config name; a group's setting is its name without the ``-<method>``
    suffix (as in :func:`paper_table`). A group is paired with the ``reference`` runs of its
    setting; when the names do not follow that convention (a single reference group, whose
    setting no other group shares), every group is paired with that reference group.

    Args:
        summaries: the runs' ``summary.json`` contents (see :func:`load_summaries`).
        reference: the method compared against, e.g. ``"joint"``.
        metric: a test metric: ``acc``, ``macro_f1`` or ``weighted_f1``.
        level: confidence level of the intervals.
        alpha: significance level of the verdicts.

    Returns:
        One dict per non-reference group: ``setting``, ``method``, ``seeds``, ``value`` (mean
        metric, %), ``reference_value``, then the fields of
        :meth:`mmrelearn.stats.PairedResult.to_dict` (differences in percentage points).

    Raises:
        ValueError: on an unknown metric, no reference runs, a setting without reference runs,
            or seeds that differ from the reference's.
    """
    if metric not in dict(METRICS):
        raise ValueError(f"unknown metric {metric!r}; one of {[k for k, _ in METRICS]}")
    groups = _seed_values(summaries, metric)
    refs = {setting: v for (setting, m), v in groups.items() if m == reference}
    if not refs:
        raise ValueError(f"reference method {reference!r} is not among the runs' methods "
                         f"{sorted({m for _, m in groups})}")
    # names outside the <variant>-<method> convention: one reference group whose setting no
    # other group shares is everyone's reference
    only = next(iter(refs.values())) if len(refs) == 1 and not any(
        s in refs for s, m in groups if m != reference) else None
    rows = []
    for (setting, method), vals in groups.items():
        if method == reference:
            continue
        ref = refs.get(setting, only)
        if ref is None:
            raise ValueError(f"no {reference!r} runs on setting {setting!r} (it has runs on "
                             f"{sorted(refs)})")
        try:
            res = paired_table({method: vals, reference: ref}, reference, level)[method]
        except ValueError as e:
            raise ValueError(f"setting {setting!r}: {e}") from None
        rows.append({"setting": setting, "method": method, "seeds": sorted(vals),
                     "value": mean(vals.values()),
                     "reference_value": mean(ref[s] for s in vals),  # over the paired seeds
                     **res.to_dict(alpha)})
    return rows


def _num(x: float, fmt: str = "{:.2f}") -> str:
    return "-" if math.isnan(x) else fmt.format(x)


def _p(p: float) -> str:
    return "-" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def paired_markdown(summaries: Sequence[dict[str, Any]], reference: str, metric: str = "acc",
                    level: float = 0.95, alpha: float = 0.05) -> str:
    """A markdown table of :func:`paired_rows`: setting, method, seeds, the metric's mean (%),
    its paired difference to the reference (percentage points) with the confidence interval,
    the paired t-test's p-value and the verdict; each setting's reference row first.
    """
    rows = paired_rows(summaries, reference, metric, level, alpha)
    title = dict(METRICS)[metric]
    ci = f"{100 * level:g}% CI"
    lines = [f"| setting | method | seeds | {title} | Δ {title} vs {reference} | {ci} | p | "
             "verdict |", "|---|---|---|---|---|---|---|---|"]
    groups = _seed_values(summaries, metric)
    for setting in dict.fromkeys(s for s, _ in groups):
        ref = groups.get((setting, reference))
        if ref is not None:
            lines.append(f"| {setting} | {reference} | {len(ref)} | {mean(ref.values()):.2f} "
                         "| - | - | - | reference |")
        for r in (r for r in rows if r["setting"] == setting):
            lines.append(f"| {setting} | {r['method']} | {r['n']} | {r['value']:.2f} | "
                         f"{r['mean']:+.2f} | [{_num(r['low'])}, {_num(r['high'])}] | "
                         f"{_p(r['p'])} | {r['verdict']} |")
    lines += ["", f"Δ: mean over seeds of the per-seed difference to {reference} (percentage "
              f"points, same seeds); p: two-sided paired t-test; verdict at the "
              f"{100 * alpha:g}% level."]
    return "\n".join(lines)
