"""The paper's analyses end to end on tiny runs: ``mmrelearn tsne`` (Fig. 3) and
``mmrelearn plot`` (Fig. 4), and the test purity monitor that the latter draws."""
from __future__ import annotations

import copy
import json
import logging
import math

import numpy as np
import pytest
import torch

from mmrelearn.analysis import purity_curves, tsne_embeddings
from mmrelearn.cli import main
from mmrelearn.config import ConfigError, config_from_dict
from mmrelearn.train import train
from mmrelearn.train.checkpoint import read_jsonl


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """D&R on seeds 0 and 1 and joint training on seed 0, test purity monitored."""
    from conftest import TINY

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method, seed in (("dnr", 0), ("dnr", 1), ("joint", 0)):
        raw = copy.deepcopy(TINY)
        raw.update(name=f"tiny-{method}", seed=seed)
        raw["train"]["monitor_test_purity"] = True
        if method == "joint":
            raw["method"] = {"name": "joint"}
        out[method, seed] = root / f"{method}{seed}"
        train(config_from_dict(raw), run_dir=out[method, seed])
    return out


def _without_test_purity(records):
    out = []
    for r in records:
        r = {k: v for k, v in r.items() if k != "time_s"}
        if "purity" in r:
            r["purity"] = {m: {k: v for k, v in p.items() if k != "test"}
                           for m, p in r["purity"].items()}
        out.append(r)
    return out


def test_test_purity_is_logged_and_changes_no_training_number(tiny_raw, tmp_path, runs):
    # the same config as runs["dnr", 0] without the test purity monitor
    tiny_raw["name"] = "tiny-dnr"
    summary = train(config_from_dict(tiny_raw), run_dir=tmp_path / "off")
    on, off = runs["dnr", 0], tmp_path / "off"
    rec_on, rec_off = (read_jsonl(d / "metrics.jsonl") for d in (on, off))
    assert all(0.0 <= p["test"] <= 1.0 for r in rec_on for p in r["purity"].values())
    assert not any("test" in p for r in rec_off for p in r["purity"].values())
    # losses, val/test metrics, train/val purities, the D&R report, the selected epoch
    assert _without_test_purity(rec_on) == _without_test_purity(rec_off)
    assert read_jsonl(on / "reports.jsonl") == read_jsonl(off / "reports.jsonl")
    s_on = json.loads((on / "summary.json").read_text())
    for key in ("best_epoch", "train", "val", "test", "test_last_epoch"):
        assert s_on[key] == summary[key], key
    w_on, w_off = (torch.load(d / "checkpoints/last.pt", weights_only=True)["model"]
                   for d in (on, off))
    assert all(torch.equal(w_on[k], w_off[k]) for k in w_on)


def test_test_purity_needs_the_purity_monitor(tiny_raw):
    tiny_raw["train"].update(monitor_purity=False, monitor_test_purity=True)
    with pytest.raises(ConfigError, match="train.monitor_test_purity"):
        config_from_dict(tiny_raw)


def test_tsne_command(runs, tmp_path, capsys):
    dnr, joint = str(runs["dnr", 0]), str(runs["joint", 0])
    out = tmp_path / "tsne.png"
    assert main(["tsne", joint, dnr, "--max-samples", "40", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.stat().st_size > 1000
    assert main(["tsne", dnr, "--split", "test", "--checkpoint", "last"]) == 0
    assert (runs["dnr", 0] / "tsne_test.png").stat().st_size > 1000
    assert main(["tsne", joint, dnr]) == 2  # two runs: where would the figure go?
    assert "--out" in capsys.readouterr().err

    emb = tsne_embeddings(dnr, max_samples=40, seed=3)
    assert set(emb.coords) == {"m0", "m1"} and emb.n_split == 60 and len(emb.labels) == 40
    summary = json.loads((runs["dnr", 0] / "summary.json").read_text())
    assert emb.epoch == summary["best_epoch"]
    assert all(c.shape == (40, 2) and np.isfinite(c).all() for c in emb.coords.values())
    again = tsne_embeddings(dnr, max_samples=40, seed=3)  # seeded: the same picture
    assert np.array_equal(again.labels, emb.labels)
    assert all(np.array_equal(again.coords[m], emb.coords[m]) for m in emb.coords)


def test_plot_command(runs, tmp_path, capsys):
    dirs = [runs["dnr", 0], runs["dnr", 1], runs["joint", 0]]
    out = tmp_path / "fig4.png"
    assert main(["plot", *map(str, dirs), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert main(["plot", str(dirs[0])]) == 0
    assert (dirs[0] / "purity.png").stat().st_size > 1000

    groups = purity_curves(dirs)
    assert list(groups) == ["dnr", "joint"] and len(groups["dnr"]["runs"]) == 2
    assert groups["dnr"]["reinit"] == [2] and groups["joint"]["reinit"] == []  # H = 2, 5 epochs
    assert set(groups["dnr"]["curves"]) == {("gap", "m0"), ("gap", "m1"), ("test_acc", None),
                                            ("test_purity", "m0"), ("test_purity", "m1")}
    for g in groups.values():
        for x, mean, lo, hi in g["curves"].values():
            assert list(x) == [0, 1, 2, 3, 4]
            assert np.isfinite(mean).all() and (lo <= mean + 1e-12).all() \
                and (mean <= hi + 1e-12).all()
    # the mean over the two D&R seeds, by hand
    a, b = (read_jsonl(d / "metrics.jsonl") for d in dirs[:2])
    expected = [(ra["test"]["acc"] + rb["test"]["acc"]) / 2 for ra, rb in zip(a, b)]
    assert np.allclose(groups["dnr"]["curves"]["test_acc", None][1], expected)


def test_plot_says_what_was_not_logged(tiny_raw, tmp_path, caplog):
    tiny_raw["train"].update(epochs=2, log_test_every_epoch=False)
    run = tmp_path / "run"
    train(config_from_dict(tiny_raw), run_dir=run)
    with caplog.at_level(logging.WARNING, logger="mmrelearn.analysis"):
        assert main(["plot", str(run)]) == 0
    assert (run / "purity.png").stat().st_size > 1000
    text = caplog.text
    assert "train.log_test_every_epoch: true" in text
    assert "train.monitor_test_purity: true" in text
    curves = purity_curves([run])["dnr"]["curves"]
    assert curves["test_acc", None] is None and curves["test_purity", "m0"] is None
    assert all(math.isfinite(v) for v in curves["gap", "m0"][1])
