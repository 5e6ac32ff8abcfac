"""mmrelearn sweep: the grid, the baseline, reuse, refusal of another config, parallel jobs."""
from __future__ import annotations

import json

import pytest
import yaml

from mmrelearn.cli import main
from mmrelearn.config import ConfigError
from mmrelearn.sweep import parse_grid, run_sweep, sweep_runs


def _base(tiny_raw):
    tiny_raw["train"].update(epochs=2, monitor_purity=False)
    tiny_raw["method"] = {"name": "dnr", "lam": 3.0, "every": 1}
    return tiny_raw


def test_parse_grid():
    grid = parse_grid(["method.lam=1,3,5", "method.every=5,10", "data.dims=[6,6],[4,8]",
                       "optim.lr=1e-3,0.01"])
    assert grid == {"method.lam": [1, 3, 5], "method.every": [5, 10],
                    "data.dims": [[6, 6], [4, 8]], "optim.lr": [1e-3, 0.01]}
    for bad, match in [(["method.lam"], "expected KEY=V1,V2"),
                       (["method.lam=1", "method.lam=2"], "given twice"),
                       (["method.lam="], "expected comma-separated values"),
                       (["method.lam=1,1"], "listed twice"), ([], "at least one --grid")]:
        with pytest.raises(ConfigError, match=match):
            parse_grid(bad)


def test_runs_cover_the_product_and_one_baseline_per_seed(tiny_raw, tmp_path):
    grid = {"method.lam": [1, 3], "method.every": [1, 2]}
    runs = sweep_runs(_base(tiny_raw), grid, [0, 1], tmp_path)
    mains = [r for r in runs if not r.is_baseline]
    assert len(mains) == 8 and len([r for r in runs if r.is_baseline]) == 2
    assert {(r.point["method.lam"], r.point["method.every"], r.seed) for r in mains} == {
        (lam, every, s) for lam in (1, 3) for every in (1, 2) for s in (0, 1)}
    r = next(r for r in mains if r.point == {"method.lam": 3, "method.every": 2} and r.seed == 1)
    assert r.raw["method"] == {"name": "dnr", "lam": 3, "every": 2} and r.raw["seed"] == 1
    assert r.run_dir == tmp_path / "method.lam=3__method.every=2" / "seed1"
    base = next(r for r in runs if r.is_baseline and r.seed == 1)
    assert base.raw["method"] == {"name": "joint"} and base.raw["data"] == r.raw["data"]
    # a non-method key is swept: the baseline runs once per value of it, with that value
    runs = sweep_runs(_base(tiny_raw), {"method.lam": [1, 3], "optim.lr": [0.01, 0.05]}, [0],
                      tmp_path)
    bases = [r for r in runs if r.is_baseline]
    assert sorted(b.raw["optim"]["lr"] for b in bases) == [0.01, 0.05]
    assert all(b.raw["method"] == {"name": "joint"} for b in bases)


def test_an_invalid_grid_value_fails_before_any_run(tiny_raw, tmp_path):
    with pytest.raises(ConfigError, match="method.lam=abc"):
        run_sweep(_base(tiny_raw), {"method.lam": [3, "abc"]}, [0], tmp_path / "out",
                  progress=False)
    assert not (tmp_path / "out").exists()


def test_sweep_writes_table_and_figure_reuses_and_refuses(tiny_raw, tmp_path):
    out = tmp_path / "sw"
    grid = {"method.lam": [1, 5]}
    text = run_sweep(_base(tiny_raw), grid, [0, 1], out, progress=False)
    res = json.loads((out / "sweep.json").read_text())
    assert set(res["points"]) == {"method.lam=1", "method.lam=5", "baseline/base"}
    lam5 = res["points"]["method.lam=5"]
    summary = json.loads((out / "method.lam=5/seed1/summary.json").read_text())
    assert lam5["seeds"] == [0, 1] and lam5["test_acc"][1] == pytest.approx(
        100 * summary["test"]["acc"])
    base = res["points"]["baseline/base"]["test_acc"]
    assert lam5["vs_baseline"]["differences"] == pytest.approx(
        [a - b for a, b in zip(lam5["test_acc"], base)])
    assert "| grid | 5 | 2 |" in text and "| joint | - | 2 |" in text and "reference" in text
    assert (out / "sweep.png").stat().st_size > 1000
    assert (out / "sweep.md").read_text().strip() == text.strip()
    assert "6 runs, 6 trained now" in text
    # a second call reuses every finished run
    mtime = (out / "method.lam=1/seed0/summary.json").stat().st_mtime_ns
    again = run_sweep(_base(tiny_raw), grid, [0, 1], out, progress=False)
    assert "6 runs, 0 trained now" in again
    assert (out / "method.lam=1/seed0/summary.json").stat().st_mtime_ns == mtime
    # a run directory of another config (here: another learning rate) is refused
    other = _base(tiny_raw)
    other["optim"]["lr"] = 0.2
    (out / "method.lam=1/seed0/summary.json").unlink()
    with pytest.raises(FileExistsError, match="another configuration"):
        run_sweep(other, grid, [0], out, progress=False)


def test_two_jobs_give_the_same_numbers_as_one(tiny_raw, tmp_path):
    grid = {"method.lam": [1, 5]}
    run_sweep(_base(tiny_raw), grid, [0, 1], tmp_path / "one", jobs=1, progress=False)
    run_sweep(_base(tiny_raw), grid, [0, 1], tmp_path / "two", jobs=2, progress=False)
    one, two = (json.loads((tmp_path / d / "sweep.json").read_text()) for d in ("one", "two"))
    for name, e in one["points"].items():
        assert two["points"][name]["test_acc"] == e["test_acc"], name
    # every run wrote only its own directory
    for d in (tmp_path / "two").glob("**/seed*"):
        assert (d / "summary.json").is_file() and (d / "config.yaml").is_file()


def test_cli_sweep(tiny_raw, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(_base(tiny_raw)))
    out = tmp_path / "cli"
    rc = main(["sweep", "-c", str(cfg), "--grid", "method.every=1,2", "--seeds", "0",
               "--set", "train.epochs=2", "--out", str(out), "--no-progress"])
    assert rc == 0 and "| grid | 2 | 1 |" in capsys.readouterr().out
    assert (out / "sweep.png").is_file()
    assert main(["sweep", "-c", str(cfg), "--grid", "method.every=1", "--seeds", "a",
                 "--out", str(out)]) == 2
    assert "--seeds: expected comma-separated integers" in capsys.readouterr().err
