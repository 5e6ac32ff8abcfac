"""The comparison runner: interleaved order, results.json, paired tables, timing ratios."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrelearn.comparison import (comparison_jobs, paper_layout_markdown, run_comparison,
                                  timing_rows)


def _spec(tiny_raw):
    tiny_raw["train"].update(epochs=2, monitor_purity=False)
    return {"title": "# tiny", "task": "tiny", "base": tiny_raw, "probe": True,
            "unimodal": ["m1"], "scarce": ["noisy"],
            "descriptions": {"clean": "as generated", "noisy": "m0 at 0 dB"},
            "methods": {"joint": ["method={name: joint}"], "dnr": ["method.every=1"]},
            "variants": {"clean": [], "noisy": ["data.noise={modality: m0, snr_db: 0}"]}}


def test_jobs_are_interleaved_seed_by_seed(tiny_raw, tmp_path):
    jobs = comparison_jobs(_spec(tiny_raw), tmp_path, seeds=2, epochs=3)
    order = [(j.seed, j.variant, j.method) for j in jobs]
    assert order == [(s, v, m) for s in (0, 1) for v in ("clean", "noisy")
                     for m in ("joint", "dnr", "alone_m1")]
    alone = next(j for j in jobs if j.method == "alone_m1")
    assert alone.raw["data"]["modalities"] == ["m1"] and alone.raw["method"] == {"name": "joint"}
    assert alone.run_dir == tmp_path / "clean" / "alone_m1" / "seed0"
    assert all(j.raw["train"]["epochs"] == 3 and j.raw["seed"] == j.seed for j in jobs)
    noisy = {j.method: j for j in jobs if j.variant == "noisy"}
    assert noisy["dnr"].raw["data"]["noise"] == {"modality": "m0", "snr_db": 0}
    assert noisy["alone_m1"].raw["data"]["noise"] is None  # m0's noise: not in an m1-only run


def test_a_costly_method_on_fewer_seeds(tiny_raw, tmp_path):
    spec = {**_spec(tiny_raw), "method_seeds": {"dnr": 1}}
    jobs = comparison_jobs(spec, tmp_path, seeds=3)
    assert [j.seed for j in jobs if j.method == "dnr"] == [0, 0]  # one per variant
    assert [j.seed for j in jobs if j.method == "joint"] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match=r"method_seeds names \['pmr'\]"):
        comparison_jobs({**spec, "method_seeds": {"pmr": 2}}, tmp_path, seeds=3)


def test_timing_rows_by_hand():
    methods = {
        "joint": {"seeds": [0, 1, 2], "timing": {"train_s": [10.0, 20.0, 10.0],
                                                  "eval_s": [2.0, 2.0, 2.0],
                                                  "method_s": [0.0, 0.0, 0.0]}},
        # seed order differs from the reference's: ratios must pair by seed
        "dnr": {"seeds": [2, 0, 1], "timing": {"train_s": [12.0, 11.0, 30.0],
                                               "eval_s": [2.0, 2.0, 2.0],
                                               "method_s": [1.2, 1.1, 0.0]}},
    }
    rows = {r["method"]: r for r in timing_rows(methods)}
    # dnr / joint per seed: seed 0 11/10, seed 1 30/20, seed 2 12/10 -> median 1.2
    assert rows["dnr"]["train_ratio"] == pytest.approx(1.2)
    # totals: seed 0 14.1/12, seed 1 32/22, seed 2 15.2/12 -> median 15.2 / 12
    assert rows["dnr"]["total_ratio"] == pytest.approx(15.2 / 12)
    # hook / train: 0.1, 0.0, 0.1 -> median 0.1
    assert rows["dnr"]["hook_over_train"] == pytest.approx(0.1)
    assert rows["joint"]["train_ratio"] == 1.0 and rows["dnr"]["train_s"] == 12.0


def test_paper_layout_by_hand():
    methods = {"joint": {"test": {"acc": [90.0, 92.0], "weighted_f1": [89.0, 89.0],
                                  "macro_f1": [88.0, 91.0]}}}
    text = paper_layout_markdown(methods, [["Joint-training", "joint"], ["Greedy", None]],
                                 note="Greedy: two modalities only")
    # acc: mean 91, sample std sqrt(2) = 1.41; macro: mean 89.5, std sqrt(4.5) = 2.12
    assert text.splitlines() == [
        "| Method | seeds | Acc | Weighted F1 | Macro F1 |", "|---|---|---|---|---|",
        "| Joint-training | 2 | 91.00 ± 1.41 | 89.00 ± 0.00 | 89.50 ± 2.12 |",
        "| Greedy | - | / | / | / |", "", "Greedy: two modalities only"]


def test_a_paper_layout_naming_no_method_is_refused_before_any_run(tiny_raw, tmp_path):
    spec = {**_spec(tiny_raw), "paper_layout": [["Joint", "joint"], ["PMR", "pmr"]]}
    with pytest.raises(ValueError, match=r"paper_layout rows \[\['PMR', 'pmr'\]\]"):
        comparison_jobs(spec, tmp_path / "out", seeds=1)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished 2-seed comparison (run once for the tests that read it)."""
    import copy

    from conftest import TINY

    out = tmp_path_factory.mktemp("comparison")
    spec = _spec(copy.deepcopy(TINY))
    spec["methods"]["dnr_h2"] = ["method={name: dnr, every: 2}"]  # a second key, one method
    return out, run_comparison(spec, out, seeds=2, progress=False)


def test_run_comparison_writes_results_json_and_figures(finished):
    tmp_path, text = finished
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["task"] == "tiny" and res["reference"] == "joint"
    assert res["variants"]["noisy"]["scarce"] and not res["variants"]["clean"]["scarce"]
    for variant in ("clean", "noisy"):
        methods = res["variants"][variant]["methods"]
        assert list(methods) == ["joint", "dnr", "dnr_h2", "alone_m1"]
        dnr = methods["dnr"]
        assert dnr["seeds"] == [0, 1] and len(dnr["test"]["acc"]) == 2
        summary = json.loads((tmp_path / variant / "dnr" / "seed1" / "summary.json").read_text())
        assert dnr["test"]["acc"][1] == pytest.approx(100 * summary["test"]["acc"])
        assert dnr["selected"]["train_acc"][1] == pytest.approx(100 * summary["train"]["acc"])
        assert set(dnr["probe"]) == {"m0", "m1"} and "probe" not in methods["alone_m1"]
        assert set(dnr["timing"]) == {"train_s", "eval_s", "method_s"}
        assert dnr["timing"]["method_s"][0] > 0 and methods["joint"]["timing"]["method_s"][0] < 0.01
    assert "Paired by seed against joint" in text and "| dnr | 2 |" in text
    # runs of one method under two keys are grouped and paired under their own keys
    for variant in ("clean", "noisy"):
        assert f"| {variant} | dnr_h2 | 2 |" in text and f"| {variant} | dnr | 2 |" in text
    assert "| method | train / joint | total / joint | hook / train |" in text
    for name in ("improvement.png", "clean_probes.png", "noisy_probes.png", "clean_curves.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert (tmp_path / "results.md").read_text().strip() == text.strip()


def test_results_json_feeds_the_claims(finished):
    from mmrelearn.claims import evaluate_claims, load_results

    tmp_path = finished[0]
    results, missing = load_results([tmp_path / "results.json", Path(tmp_path / "none.json")])
    assert len(results) == 1 and len(missing) == 1
    rows = evaluate_claims(results)["rows"]
    assert {r["claim"] for r in rows} >= {"C1", "C4"}


def test_a_run_stored_before_a_new_config_key_is_reused(tiny_raw, tmp_path):
    import yaml

    spec = {**_spec(tiny_raw), "probe": False, "unimodal": [], "variants": {"clean": []}}
    spec["methods"] = {"joint": ["method={name: joint}"]}
    run_comparison(spec, tmp_path, seeds=1, epochs=1, progress=False)
    stored = tmp_path / "clean" / "joint" / "seed0" / "config.yaml"
    raw = yaml.safe_load(stored.read_text())
    del raw["model"]["fusion_dim"]  # as written by a version that did not have this key
    stored.write_text(yaml.safe_dump(raw, sort_keys=False))
    text = run_comparison(spec, tmp_path, seeds=1, epochs=1, progress=False)
    assert "for 0 runs trained now (1 finished runs reused; 1 process(es))" in text


def test_two_processes_give_the_same_results(tiny_raw, tmp_path):
    spec = _spec(tiny_raw)
    spec.update(probe=False, unimodal=[])
    run_comparison(spec, tmp_path / "one", seeds=2, progress=False)
    text = run_comparison(spec, tmp_path / "two", seeds=2, progress=False, processes=2)
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    for variant, e in one["variants"].items():
        for m, x in e["methods"].items():
            assert two["variants"][variant]["methods"][m]["test"] == x["test"], (variant, m)
    assert "8 runs trained now (0 finished runs reused; 2 process(es))" in text
