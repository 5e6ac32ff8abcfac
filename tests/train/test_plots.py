"""Comparison figures: the improvement bars and the probe scatter are written as PNGs."""
from __future__ import annotations

import math

from PIL import Image

from mmrelearn.train.plots import plot_improvement, plot_probe_scatter


def _assert_png(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


def test_plot_improvement_one_and_several_variants(tmp_path):
    rows = [{"method": "dnr", "mean": 2.0, "low": -0.48, "high": 4.48},
            {"method": "pmr", "mean": -1.0, "low": -2.0, "high": 0.0},
            {"method": "agm", "mean": 0.5, "low": math.nan, "high": math.nan}]  # one seed
    _assert_png(plot_improvement(rows, tmp_path / "one.png"))
    grouped = [dict(r, variant=v) for v in ("clean", "noisy") for r in rows[:2]]
    grouped.append({"variant": "noisy", "method": "agm", "mean": -3.0, "low": -4.0, "high": -2.0})
    _assert_png(plot_improvement(grouped, tmp_path / "groups.png", ylabel="Δ macro F1"))


def test_plot_probe_scatter(tmp_path):
    points = {"joint": {"audio": [50.0, 52.0, 49.0], "image": [96.0, 95.5, 96.5]},
              "dnr": {"audio": [51.0, 55.0, 50.0], "image": [95.0, 96.0, 94.5]}}
    _assert_png(plot_probe_scatter(points, tmp_path / "probe.png", modalities=("audio", "image")))
    _assert_png(plot_probe_scatter(points, tmp_path / "default.png", per_seed=False))
