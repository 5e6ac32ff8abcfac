"""Paired tables over finished runs (``mmrelearn compare --vs``) against values by hand."""
from __future__ import annotations

import json
import math
from statistics import mean

import pytest

from mmrelearn.cli import main
from mmrelearn.report import load_summaries, paired_markdown, paired_rows

# test accuracies (fractions) per seed 0, 1, 2
ACC = {"clean-joint": [0.70, 0.71, 0.70], "clean-dnr": [0.71, 0.74, 0.72],
       "noisy-joint": [0.70, 0.70, 0.71], "noisy-dnr": [0.60, 0.61, 0.62]}


def _write_runs(root, acc=ACC, seeds=(0, 1, 2)):
    dirs = []
    for name, vals in acc.items():
        for seed, a in zip(seeds, vals):
            d = root / name / f"seed{seed}"
            d.mkdir(parents=True)
            summary = {"name": name, "method": name.rsplit("-", 1)[-1], "seed": seed,
                       "train_seconds_total": 1.0,
                       "test": {"acc": a, "macro_f1": a - 0.05, "weighted_f1": a - 0.1}}
            (d / "summary.json").write_text(json.dumps(summary))
            dirs.append(str(d))
    return dirs


def test_paired_rows_by_hand(tmp_path):
    rows = paired_rows(load_summaries(_write_runs(tmp_path)), "joint")
    clean, noisy = rows
    assert (clean["setting"], clean["method"], clean["seeds"]) == ("clean", "dnr", [0, 1, 2])
    # d = 1, 3, 2 points: mean 2, sd 1, se 1/sqrt(3); t_{0.975,2} = 4.302653
    half = 4.302652729 / math.sqrt(3.0)
    assert clean["value"] == pytest.approx(217.0 / 3.0)
    assert clean["reference_value"] == pytest.approx(211.0 / 3.0)
    assert clean["mean"] == pytest.approx(2.0)
    assert (clean["low"], clean["high"]) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert clean["p"] == pytest.approx(1.0 - 2.0 * math.sqrt(3.0) / math.sqrt(14.0))
    assert clean["verdict"] == "no evidence"
    # d = -10, -9, -9: mean -28/3, se 1/3, t = -28, p = 1 - 28 / sqrt(786) (2 dof)
    assert noisy["mean"] == pytest.approx(-28.0 / 3.0)
    assert noisy["p"] == pytest.approx(1.0 - 28.0 / math.sqrt(786.0))
    assert noisy["verdict"] == "worse"


def test_paired_markdown_numbers(tmp_path):
    table = paired_markdown(load_summaries(_write_runs(tmp_path)), "joint").splitlines()
    assert table[0] == "| setting | method | seeds | Acc | Δ Acc vs joint | 95% CI | p | verdict |"
    assert table[2] == "| clean | joint | 3 | 70.33 | - | - | - | reference |"
    # 2 ± 2.4841 -> [-0.48, 4.48]; p = 0.07418
    assert table[3] == "| clean | dnr | 3 | 72.33 | +2.00 | [-0.48, 4.48] | 0.074 | no evidence |"
    assert table[4] == "| noisy | joint | 3 | 70.33 | - | - | - | reference |"
    # -9.33 ± 4.302653 / 3 = ± 1.4342 -> [-10.77, -7.90]; p = 0.00127
    assert table[5] == "| noisy | dnr | 3 | 61.00 | -9.33 | [-10.77, -7.90] | 0.001 | worse |"
    f1 = paired_markdown(load_summaries(_write_runs(tmp_path / "b")), "joint", "macro_f1")
    assert "| clean | dnr | 3 | 67.33 | +2.00 | [-0.48, 4.48] | 0.074 | no evidence |" in f1


def test_one_setting_pairs_by_method(tmp_path):
    runs = _write_runs(tmp_path, {"baseline": [0.70, 0.71, 0.70], "mine": [0.74, 0.75, 0.76]})
    summaries = load_summaries(runs)
    for s in summaries:
        s["method"] = "joint" if s["name"] == "baseline" else "dnr"
    (row,) = paired_rows(summaries, "joint")
    assert row["setting"] == "mine" and row["mean"] == pytest.approx(14.0 / 3.0)


def test_cli_compare_vs(tmp_path, capsys):
    runs = _write_runs(tmp_path)
    out = tmp_path / "paired.md"
    assert main(["compare", "--vs", "joint", "--metric", "weighted_f1", *runs,
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| noisy | dnr | 3 | 51.00 | -9.33 | [-10.77, -7.90] | 0.001 | worse |" in printed
    assert out.read_text().strip() == printed.strip()


def test_cli_compare_vs_errors(tmp_path, capsys):
    runs = _write_runs(tmp_path)
    assert main(["compare", "--vs", "pmr", *runs]) == 2
    assert "reference method 'pmr' is not among the runs' methods ['dnr', 'joint']" in \
        capsys.readouterr().err
    short = [r for r in runs if not r.endswith("clean-joint/seed2")]
    assert main(["compare", "--vs", "joint", *short]) == 2
    assert "setting 'clean': 'dnr' cannot be paired with 'joint': 'joint' lacks seeds [2]" in \
        capsys.readouterr().err
    noisy_only = [r for r in runs if "clean-joint" not in r]
    assert main(["compare", "--vs", "joint", *noisy_only]) == 2
    assert "no 'joint' runs on setting 'clean'" in capsys.readouterr().err
    assert main(["compare", "--metric", "acc", *runs]) == 2
    assert "it needs --vs" in capsys.readouterr().err
    assert main(["compare", "--vs", "joint", "--layout", "paper", *runs]) == 2


def test_paired_rows_over_the_methods_seeds(tmp_path):
    # dnr on seeds 0 and 1 only, joint on 0, 1, 2: paired over 0 and 1
    runs = [r for r in _write_runs(tmp_path) if not r.endswith("clean-dnr/seed2")]
    clean = paired_rows(load_summaries(runs), "joint")[0]
    assert clean["seeds"] == [0, 1] and clean["n"] == 2
    assert clean["reference_value"] == pytest.approx(100 * mean(ACC["clean-joint"][:2]))
