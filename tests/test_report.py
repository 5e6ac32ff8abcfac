"""Tables over finished runs: mean and sample standard deviation, both layouts."""
from __future__ import annotations

import pytest

from mmrelearn.report import aggregate, markdown_table, paper_table


def _summary(name, method, seed, acc):
    return {"name": name, "method": method, "seed": seed, "train_seconds_total": 10.0 + seed,
            "test": {"acc": acc, "macro_f1": acc - 0.1, "weighted_f1": acc - 0.2}}


def test_mean_and_sample_std_by_hand():
    rows = aggregate([_summary("a-joint", "joint", 0, 0.90), _summary("a-joint", "joint", 1, 0.94)])
    mean, std = rows[0]["acc"]
    assert mean == pytest.approx(92.0)
    assert std == pytest.approx(((2.0 ** 2 + 2.0 ** 2) / 1) ** 0.5)  # n - 1 = 1
    assert rows[0]["train_seconds"] == pytest.approx(10.5)


def test_passes_column_counts_prerequisite_runs():
    old = {**_summary("a-joint", "joint", 0, 0.9), "epochs": 4}  # written before passes
    new = {**_summary("a-umt", "umt", 0, 0.9), "epochs": 4,
           "passes": {"run": 4.0, "prerequisites": 8.0, "total": 12.0}}
    table = markdown_table(aggregate([old, new]))
    assert "| a-joint | joint | 1 | 4 | 90.00" in table
    assert "| a-umt | umt | 1 | 12 | 90.00" in table


def test_layouts():
    runs = [_summary("clean-joint", "joint", 0, 0.9), _summary("clean-dnr", "dnr", 0, 0.95),
            _summary("noisy-joint", "joint", 0, 0.8)]
    rows = aggregate(runs)
    table = markdown_table(rows, time_reference="joint")
    assert "| clean-dnr | dnr | 1 | - | 95.00 ± 0.00 | 85.00 ± 0.00 | 75.00 ± 0.00 | 1.00x |" in table
    paper = paper_table(rows).splitlines()
    assert paper[0] == ("| Method | clean Acc | clean Macro F1 | clean Weighted F1 | noisy Acc | "
                        "noisy Macro F1 | noisy Weighted F1 |")
    assert paper[2] == ("| joint | 90.00 ± 0.00 | 80.00 ± 0.00 | 70.00 ± 0.00 | 80.00 ± 0.00 | "
                        "70.00 ± 0.00 | 60.00 ± 0.00 |")
    assert paper[3] == "| dnr | 95.00 ± 0.00 | 85.00 ± 0.00 | 75.00 ± 0.00 | - | - | - |"
