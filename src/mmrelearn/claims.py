"""The paper's claims checked on comparison results: paired t-tests over seeds per task/variant.

A comparison benchmark writes ``results.json`` (values in %, lists aligned with ``seeds``)::

    {"task": "avmnist", "reference": "joint",
     "variants": {"clean": {"description": "...", "scarce": false,
                            "methods": {"joint": {"seeds": [0, 1, 2],
                                                  "test": {"acc": [...], "macro_f1": [...],
                                                           "weighted_f1": [...]},
                                                  "probe": {"audio": [...], "image": [...]},
                                                  "timing": {...}}, ...}}, ...}}

``probe`` and ``timing`` are optional; ``scarce: true`` marks a variant where one modality is
scarcely informative (the paper's Table 4 setting). Each claim gives rows with the measured
mean difference (percentage points), its interval, the p-value, the verdict and a reading:
``holds``, ``does not hold`` or ``no evidence``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean
from typing import Any, Optional, Sequence, Union

from .report import mean_std
from .stats import PairedResult, paired_table

__all__ = ["CLAIMS", "load_results", "evaluate_claims", "claims_markdown", "write_claims",
           "improvement_rows", "probe_points", "overview_markdown", "rank_rows", "rank_markdown"]

PAPER_METHODS = ("joint", "gblending", "ogm_ge", "greedy", "pmr", "agm", "dnr")
BALANCERS = ("gblending", "ogm_ge", "greedy", "pmr", "agm")
CLAIMS = {
    "C1": "D&R beats joint training (paper Table 1): dnr vs joint, test accuracy, every variant.",
    "C2": "D&R is the best of the paper's seven methods (Table 1): dnr vs the strongest other "
          "method by mean test accuracy, per variant.",
    "C3": "With a scarcely informative modality (Table 4), the other balancing methods fall "
          "below joint training while D&R improves on it: each vs joint, test accuracy.",
    "C4": "D&R improves the uni-modal probe of every modality over joint training "
          "(Figure 1b/c): dnr probe vs joint probe, per modality.",
    "C5": "D&R-dagger beats G-Blending (Table 2): dnr_dagger vs gblending, test accuracy, "
          "every variant.",
}
_OPPOSITE = {"better": "worse", "worse": "better"}


def load_results(paths: Sequence[Union[str, Path]]) -> tuple[list[dict[str, Any]], list[Path]]:
    """Read the ``results.json`` files that exist; returns (results, the paths missing)."""
    paths = [Path(p) for p in paths]
    return ([json.loads(p.read_text()) for p in paths if p.is_file()],
            [p for p in paths if not p.is_file()])


def _by_seed(entry: dict[str, Any], kind: str, key: str) -> dict[Any, float]:
    vals = entry[kind][key]
    if len(vals) != len(entry["seeds"]):
        raise ValueError(f"{kind}.{key} has {len(vals)} values for {len(entry['seeds'])} seeds")
    return dict(zip(entry["seeds"], vals))


def _paired(ctx: dict[str, Any], a: str, b: str, kind: str = "test", key: str = "acc"
            ) -> PairedResult:
    """``a - b`` on the variant in ``ctx``, paired by seed."""
    ms = ctx["methods"]
    try:
        va, vb = _by_seed(ms[a], kind, key), _by_seed(ms[b], kind, key)
        if b != ctx["reference"]:
            # two methods other than the reference: either may have run on fewer seeds (a
            # costly one), so they are paired over the seeds both have
            va = {sd: v for sd, v in va.items() if sd in vb}
        return paired_table({a: va, b: vb}, b, ctx["level"])[a]
    except ValueError as e:
        raise ValueError(f"{ctx['task']}/{ctx['variant']}: {a} vs {b}, {kind}.{key}: {e}") from None


def _reading(verdict: str, expect: str) -> str:
    if verdict == expect:
        return "holds"
    return "does not hold" if verdict == _OPPOSITE[expect] else "no evidence"


def _row(ctx: dict[str, Any], claim: str, a: str, b: str, expect: str, kind: str = "test",
         key: str = "acc", note: str = "", level: str = "claim") -> dict[str, Any]:
    res = _paired(ctx, a, b, kind, key)
    verdict = res.verdict(ctx["alpha"])
    return {"claim": claim, "task": ctx["task"], "variant": ctx["variant"],
            "comparison": f"{a} vs {b}", "measure": key if kind == "test" else f"{key} probe",
            "n": res.n, "mean": res.mean, "low": res.low, "high": res.high, "p": res.p,
            "verdict": verdict, "reading": _reading(verdict, expect), "note": note,
            "level": level}


def _overall(ctx: dict[str, Any], claim: str, parts: list[dict[str, Any]], what: str,
             measure: str, note: str = "") -> dict[str, Any]:
    """A claim-level row over its parts: holds if all hold, does not hold if any is contradicted."""
    readings = {p["reading"] for p in parts}
    reading = ("holds" if readings == {"holds"} else
               "does not hold" if "does not hold" in readings else "no evidence")
    return {"claim": claim, "task": ctx["task"], "variant": ctx["variant"], "comparison": what,
            "measure": measure, "n": None, "mean": None, "low": None, "high": None,
            "p": None, "verdict": None, "reading": reading, "note": note, "level": "claim"}


def _lacking(ctx: dict[str, Any], claim: str, needed: Sequence[str], notes: list[str]) -> bool:
    missing = [m for m in needed if m not in ctx["methods"]]
    if missing:
        notes.append(f"{claim} skipped on {ctx['task']}/{ctx['variant']}: no {', '.join(missing)}")
    return bool(missing)


def _c1(ctx, notes):
    return [] if _lacking(ctx, "C1", ("dnr", "joint"), notes) else [
        _row(ctx, "C1", "dnr", "joint", "better")]


def _c2(ctx, notes):
    if _lacking(ctx, "C2", ("dnr",), notes):
        return []
    ms = ctx["methods"]
    means = {m: mean(ms[m]["test"]["acc"]) for m in PAPER_METHODS if m in ms}
    if len(means) < 2:
        notes.append(f"C2 skipped on {ctx['task']}/{ctx['variant']}: no other paper method")
        return []
    best = max((m for m in means if m != "dnr"), key=means.get)
    rank = 1 + sum(v > means["dnr"] for v in means.values())
    absent = [m for m in PAPER_METHODS if m not in ms]
    note = (f"strongest other: {best} ({means[best]:.2f}); D&R ranks {rank} of {len(means)} "
            f"by mean" + (f"; absent: {', '.join(absent)}" if absent else ""))
    row = _row(ctx, "C2", "dnr", best, "better", note=note)
    if row["reading"] != "holds":
        row["reading"] = "does not hold" if means["dnr"] < means[best] else "no evidence"
    return [row]


def _c3(ctx, notes):
    if not ctx["scarce"] or _lacking(ctx, "C3", ("dnr", "joint"), notes):
        return []
    others = [m for m in BALANCERS if m in ctx["methods"]]
    absent = [m for m in BALANCERS if m not in ctx["methods"]]
    parts = [_row(ctx, "C3", m, "joint", "worse", level="part") for m in others]
    parts.append(_row(ctx, "C3", "dnr", "joint", "better", level="part"))
    note = f"absent: {', '.join(absent)}" if absent else ""
    return parts + [_overall(ctx, "C3", parts, "others worse, dnr better", "acc", note)]


def _c4(ctx, notes):
    if _lacking(ctx, "C4", ("dnr", "joint"), notes):
        return []
    ms = ctx["methods"]
    if "probe" not in ms["dnr"] or "probe" not in ms["joint"]:
        notes.append(f"C4 skipped on {ctx['task']}/{ctx['variant']}: no probe accuracies")
        return []
    mods = [m for m in ms["joint"]["probe"] if m in ms["dnr"]["probe"]]
    parts = [_row(ctx, "C4", "dnr", "joint", "better", "probe", m, level="part") for m in mods]
    return parts + [_overall(ctx, "C4", parts, "every modality", "probe")] if parts else []


def _c5(ctx, notes):
    return [] if _lacking(ctx, "C5", ("dnr_dagger", "gblending"), notes) else [
        _row(ctx, "C5", "dnr_dagger", "gblending", "better")]


def evaluate_claims(results: Sequence[dict[str, Any]], alpha: float = 0.05,
                    level: float = 0.95) -> dict[str, list]:
    """Check claims C1-C5 (see :data:`CLAIMS`) on each task and variant of ``results``.

    Args:
        results: parsed ``results.json`` contents (the module docstring gives the schema).
        alpha: significance level of the paired t-tests' verdicts.
        level: confidence level of the intervals.

    Returns:
        ``{"rows": [...], "notes": [...]}``: rows ordered by claim then task and variant, each
        with claim, task, variant, comparison, measure, n, mean, low, high, p, verdict,
        reading, note and level (``"claim"`` for a row that reads the claim, ``"part"`` for
        one comparison of a claim made of several); notes say what was skipped and why.
    """
    rows: list[dict] = []
    notes: list[str] = []
    for claim, check in (("C1", _c1), ("C2", _c2), ("C3", _c3), ("C4", _c4), ("C5", _c5)):
        for res in results:
            variants = res["variants"]
            if claim == "C3" and not any(v.get("scarce") for v in variants.values()):
                notes.append(f"C3 skipped on {res['task']}: no variant marked scarce")
            for name, var in variants.items():
                ctx = {"task": res["task"], "variant": name, "methods": var["methods"],
                       "reference": res["reference"],
                       "scarce": bool(var.get("scarce")), "alpha": alpha, "level": level}
                rows += check(ctx, notes)
    return {"rows": rows, "notes": notes}


def _cell(x: Optional[float], fmt: str = "{:+.2f}") -> str:
    return "-" if x is None or math.isnan(x) else fmt.format(x)


def _p(p: Optional[float]) -> str:
    return "-" if p is None or math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _tally(rows: list[dict]) -> str:
    claim_rows = [r for r in rows if r["level"] == "claim"]
    counts = {k: sum(r["reading"] == k for r in claim_rows)
              for k in ("holds", "does not hold", "no evidence")}
    return ", ".join(f"{k} {v}" for k, v in counts.items()) + f" (of {len(claim_rows)})"


def claims_markdown(evaluation: dict[str, list], command: str, alpha: float = 0.05,
                    level: float = 0.95) -> str:
    """``claims.md``: how it was produced, a tally per claim, a table per claim, the notes."""
    rows = evaluation["rows"]
    lines = [f"Produced by `{command}`; verdicts are two-sided paired t-tests over seeds at the "
             f"{100 * alpha:g}% level ({100 * level:g}% intervals; differences in percentage "
             "points, mean over seeds).", "",
             "Reading: holds if the verdict is the claimed direction, does not hold if it is "
             "the opposite (C2: also if D&R's mean is below the strongest other's), no evidence "
             "otherwise; a claim made of several comparisons (C3, C4) holds if all of them "
             "hold and does not hold if any does not.", "",
             "| claim | readings (task, variant) |", "|---|---|"]
    lines += [f"| {c} | {_tally([r for r in rows if r['claim'] == c])} |" for c in CLAIMS]
    for claim, text in CLAIMS.items():
        lines += ["", f"## {claim}: {text}", "",
                  "| task | variant | comparison | measure | seeds | Δ | CI | p | verdict | "
                  "reading | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["claim"] == claim):
            ci = "-" if r["low"] is None or math.isnan(r["low"]) else \
                f"[{r['low']:.2f}, {r['high']:.2f}]"
            reading = f"**{r['reading']}**" if r["level"] == "claim" else r["reading"]
            lines.append(f"| {r['task']} | {r['variant']} | {r['comparison']} | {r['measure']} "
                         f"| {r['n'] or '-'} | {_cell(r['mean'])} | {ci} | {_p(r['p'])} | "
                         f"{r['verdict'] or '-'} | {reading} | {r['note']} |")
    if evaluation["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in evaluation["notes"]]
    return "\n".join(lines)


def overview_markdown(results: Sequence[dict[str, Any]], alpha: float = 0.05,
                      level: float = 0.95) -> str:
    """Per task: every method's test accuracy (mean ± std, seeds), its passes over the
    training split (mean over seeds, prerequisite runs included; when the results record
    them) and its paired difference to the reference per variant (interval and verdict);
    runs of one modality alone listed after the methods."""
    lines = []
    for res in results:
        ref, variants = res["reference"], res["variants"]
        passes = any("passes" in e for var in variants.values() for e in var["methods"].values())
        head = (" | {v} passes" if passes else "")
        lines += ["", f"### {res['task']}", "",
                  "| method | " + " | ".join(f"{v} Acc{head.format(v=v)} | {v} Δ vs {ref} "
                                             f"[95% CI], verdict" for v in variants) + " |",
                  "|---|" + ("---|---|---|" if passes else "---|---|") * len(variants)]
        methods = [m for m in next(iter(variants.values()))["methods"]]
        for m in methods:
            cells = []
            for var in variants.values():
                e = var["methods"].get(m)
                if e is None:
                    cells += ["-", "-"] + (["-"] if passes else [])
                    continue
                cells.append(f"{mean_std(e['test']['acc'])} ({len(e['seeds'])})")
                if passes:
                    cells.append(f"{mean(e['passes']):.4g}" if "passes" in e else "-")
                if m == ref:
                    cells.append("reference")
                    continue
                r = paired_table({m: _by_seed(e, "test", "acc"),
                                  ref: _by_seed(var["methods"][ref], "test", "acc")},
                                 ref, level)[m]
                ci = "-" if math.isnan(r.low) else f"[{r.low:+.2f}, {r.high:+.2f}]"
                cells.append(f"{r.mean:+.2f} {ci}, {r.verdict(alpha)}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines).lstrip("\n")


def rank_rows(results: Sequence[dict[str, Any]], method: str = "dnr", alpha: float = 0.05,
              level: float = 0.95) -> list[dict[str, Any]]:
    """Per task and variant: ``method``'s rank by mean test accuracy among every method present
    (runs of one modality alone excluded; ties share the better rank), the best other method,
    and ``method``'s paired difference to it over their common seeds."""
    rows = []
    for res in results:
        for variant, var in res["variants"].items():
            ms = {m: e for m, e in var["methods"].items() if not m.startswith("alone_")}
            if method not in ms or len(ms) < 2:
                continue
            means = {m: mean(e["test"]["acc"]) for m, e in ms.items()}
            best = max((m for m in means if m != method), key=means.get)
            a, b = _by_seed(ms[method], "test", "acc"), _by_seed(ms[best], "test", "acc")
            common = [s for s in a if s in b]
            r = paired_table({method: {s: a[s] for s in common},
                              best: {s: b[s] for s in common}}, best, level)[method]
            rows.append({"task": res["task"], "variant": variant, "methods": len(means),
                         "rank": 1 + sum(v > means[method] for v in means.values()),
                         "mean": means[method], "best": best, "best_mean": means[best],
                         "n": r.n, "delta": r.mean, "low": r.low, "high": r.high,
                         "verdict": r.verdict(alpha)})
    return rows


def rank_markdown(results: Sequence[dict[str, Any]], method: str = "dnr", alpha: float = 0.05,
                  level: float = 0.95) -> str:
    """:func:`rank_rows` as a markdown table."""
    lines = [f"| task | variant | {method} rank | {method} Acc | best other (Acc) | "
             f"Δ vs it [{100 * level:g}% CI], verdict |", "|---|---|---|---|---|---|"]
    for r in rank_rows(results, method, alpha, level):
        ci = "-" if math.isnan(r["low"]) else f"[{r['low']:+.2f}, {r['high']:+.2f}]"
        lines.append(f"| {r['task']} | {r['variant']} | {r['rank']} of {r['methods']} | "
                     f"{r['mean']:.2f} | {r['best']} ({r['best_mean']:.2f}) | "
                     f"{r['delta']:+.2f} {ci} over {r['n']} seeds, {r['verdict']} |")
    return "\n".join(lines)


def _strict(x: Any) -> Any:
    """NaN / inf -> None, recursively, for strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    return [_strict(v) for v in x] if isinstance(x, (list, tuple)) else x


def write_claims(paths: Sequence[Union[str, Path]], out_dir: Union[str, Path], command: str,
                 alpha: float = 0.05, level: float = 0.95) -> tuple[Path, Path, list[Path]]:
    """Evaluate the claims on the existing ``paths`` and write ``claims.md`` and
    ``claims.json`` into ``out_dir``; returns their paths and the input paths missing."""
    results, missing = load_results(paths)
    ev = evaluate_claims(results, alpha, level)
    ev["notes"] = [f"{p}: missing, skipped" for p in missing] + ev["notes"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "claims.md", out / "claims.json"
    text = claims_markdown(ev, command, alpha, level)
    if results:
        text += ("\n\n## D&R's rank among every method present\n\nBy mean test accuracy "
                 "over each method's seeds (uni-modal runs excluded), with D&R's paired "
                 "difference to the best other method over their common seeds.\n\n"
                 + rank_markdown(results, "dnr", alpha, level))
        text += ("\n\n## Every method against joint training, per task\n\nTest accuracy (%, "
                 "mean ± std, number of seeds in brackets) and the paired difference to the "
                 "reference over each method's seeds (percentage points; `alone_<m>`: joint "
                 "training on modality m only).\n\n" + overview_markdown(results, alpha, level))
    md.write_text(text + "\n")
    payload = {"command": command, "alpha": alpha, "level": level, "claims": CLAIMS, **ev}
    js.write_text(json.dumps(_strict(payload), indent=1) + "\n")
    return md, js, missing


def improvement_rows(result: dict[str, Any], reference: Optional[str] = None,
                     key: str = "acc", level: float = 0.95, alpha: float = 0.05
                     ) -> list[dict[str, Any]]:
    """Every method's paired test-``key`` difference to ``reference`` (default the file's
    ``reference``) per variant of one ``results.json``: rows for
    :func:`mmrelearn.train.plots.plot_improvement` (variant, method and the
    :meth:`mmrelearn.stats.PairedResult.to_dict` fields)."""
    ref = reference or result["reference"]
    rows = []
    for name, var in result["variants"].items():
        per = {m: _by_seed(e, "test", key) for m, e in var["methods"].items()}
        for method, res in paired_table(per, ref, level).items():
            rows.append({"variant": name, "method": method, **res.to_dict(alpha)})
    return rows


def probe_points(result: dict[str, Any], variant: str) -> dict[str, dict[str, list[float]]]:
    """method -> modality -> per-seed probe accuracies of one variant, for
    :func:`mmrelearn.train.plots.plot_probe_scatter` (methods without probes left out)."""
    return {m: dict(e["probe"]) for m, e in result["variants"][variant]["methods"].items()
            if "probe" in e}
