"""Tables over finished runs: mean and standard deviation over seeds, as markdown."""
from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Optional, Sequence, Union

__all__ = ["load_summaries", "aggregate", "markdown_table", "paper_table"]

METRICS = (("acc", "Acc"), ("macro_f1", "Macro F1"), ("weighted_f1", "Weighted F1"))


def load_summaries(run_dirs: Sequence[Union[str, Path]]) -> list[dict[str, Any]]:
    """Read ``summary.json`` of each run directory (error naming any unfinished one)."""
    out = []
    for d in run_dirs:
        path = Path(d) / "summary.json"
        if not path.is_file():
            raise FileNotFoundError(f"{d}: no summary.json (not a finished run directory)")
        out.append(json.loads(path.read_text()))
    return out


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
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], time_reference: Optional[str] = None) -> str:
    """A markdown table: run, method, seeds, then each metric as mean +- std (in %).

    With ``time_reference`` (a method name present in ``rows``), a last column gives each
    row's mean training wall time relative to that method's (compare runs timed together).
    """
    ref = None
    if time_reference is not None:
        ref = next((r["train_seconds"] for r in rows if r["method"] == time_reference), None)
    titles = [t for _, t in METRICS] + ([f"time / {time_reference}"] if ref else [])
    lines = ["| run | method | seeds | " + " | ".join(titles) + " |",
             "|---|---|---|" + "---|" * len(titles)]
    for r in rows:
        cells = [f"{r[k][0]:.2f} ± {r[k][1]:.2f}" for k, _ in METRICS]
        if ref:
            cells.append(f"{r['train_seconds'] / ref:.2f}x")
        lines.append(f"| {r['name']} | {r['method']} | {len(r['seeds'])} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def paper_table(rows: Sequence[dict[str, Any]]) -> str:
    """The layout of the paper's Tables 1 and 4: one row per method, one column group per data
    setting (the run name without its ``-<method>`` suffix), each Acc / Macro F1 / Weighted F1
    as mean ± std (in %). A method not run on a setting gets ``-``.
    """
    settings: list[str] = []
    cells: dict[tuple[str, str], dict] = {}
    methods: list[str] = []
    for r in rows:
        suffix = f"-{r['method']}"
        setting = r["name"][: -len(suffix)] if r["name"].endswith(suffix) else r["name"]
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
