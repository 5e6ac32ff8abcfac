"""The paper's claims on synthetic results files whose outcomes are known by construction."""
from __future__ import annotations

import json
import math

import pytest

from mmrelearn.claims import evaluate_claims, improvement_rows, probe_points, write_claims

SEEDS = [0, 1, 2, 3, 4]
BASE = [0.0, 1.0, -1.0, 2.0, -2.0]  # shared by every method of a seed: the pairing removes it
JITTER = [[0.1, -0.1, 0.0, 0.05, -0.05], [-0.05, 0.1, 0.05, -0.1, 0.0],
          [0.0, 0.05, -0.1, 0.1, -0.05], [0.05, 0.0, -0.05, -0.1, 0.1]]


def _entry(offset, k=0, noise=None, probe=None):
    jit = noise if noise is not None else JITTER[k % len(JITTER)]
    acc = [70.0 + offset + b + j for b, j in zip(BASE, jit)]
    e = {"seeds": SEEDS, "test": {"acc": acc, "macro_f1": acc, "weighted_f1": acc}}
    if probe is not None:
        e["probe"] = {m: [60.0 + o + b + j for b, j in zip(BASE, JITTER[(k + 1) % len(JITTER)])]
                      for m, o in probe.items()}
    return e


def _variant(offsets, scarce=False, probes=None, noise=None):
    probes, noise = probes or {}, noise or {}
    return {"description": "synthetic", "scarce": scarce,
            "methods": {m: _entry(o, k, noise.get(m), probes.get(m))
                        for k, (m, o) in enumerate(offsets.items())}}


def _good():
    clean = {"joint": 0, "gblending": 1, "ogm_ge": 0.5, "greedy": 1.5, "pmr": 2, "agm": 0.8,
             "dnr": 4, "dnr_dagger": 5}
    noisy = {"joint": 0, "gblending": -3, "ogm_ge": -4, "greedy": -2, "pmr": -3, "agm": -5,
             "dnr": 2, "dnr_dagger": 1}
    return {"task": "good", "reference": "joint", "variants": {
        "clean": _variant(clean, probes={"joint": {"audio": 0, "image": 10},
                                         "dnr": {"audio": 3, "image": 13}}),
        "noisy": _variant(noisy, scarce=True, probes={"joint": {"audio": 0, "image": 10},
                                                      "dnr": {"audio": 3, "image": 7}})}}


def _bad():  # no greedy, no probes; D&R and D&R-dagger clearly below
    offsets = {"joint": 0, "gblending": -3, "ogm_ge": -3, "pmr": -3, "agm": -3, "dnr": -4,
               "dnr_dagger": -5}
    return {"task": "bad", "reference": "joint",
            "variants": {"scarce": _variant(offsets, scarce=True)}}


def _noisy():  # D&R +0.2 on average with seed-to-seed swings of several points; no dnr_dagger
    offsets = {"joint": 0, "gblending": -0.5, "ogm_ge": -0.5, "pmr": -0.5, "agm": -0.5,
               "dnr": 0.2}
    return {"task": "noisy", "reference": "joint", "variants": {"clean": _variant(
        offsets, noise={"dnr": [3.0, -2.0, 1.0, -3.0, 1.0], "joint": [0.0] * 5})}}


def _by(rows, claim, task, variant=None, comparison=None, measure=None):
    out = [r for r in rows if r["claim"] == claim and r["task"] == task
           and variant in (None, r["variant"]) and comparison in (None, r["comparison"])
           and measure in (None, r["measure"])]
    assert len(out) == 1, out
    return out[0]


@pytest.fixture
def evaluation():
    return evaluate_claims([_good(), _bad(), _noisy()])


def test_c1_dnr_vs_joint(evaluation):
    rows = evaluation["rows"]
    good = _by(rows, "C1", "good", "clean")
    assert good["comparison"] == "dnr vs joint" and good["n"] == 5
    # d = 4 + JITTER[2] - JITTER[0] per seed (dnr is method k=6, joint k=0); jitters sum to 0
    assert good["mean"] == pytest.approx(4.0)
    assert (good["verdict"], good["reading"]) == ("better", "holds")
    bad = _by(rows, "C1", "bad")
    assert bad["mean"] == pytest.approx(-4.0)
    assert (bad["verdict"], bad["reading"]) == ("worse", "does not hold")
    noisy = _by(rows, "C1", "noisy")
    # d = 0.2 + [3, -2, 1, -3, 1]: mean 0.2, far from significant
    assert noisy["mean"] == pytest.approx(0.2) and noisy["p"] > 0.5
    assert (noisy["verdict"], noisy["reading"]) == ("no evidence", "no evidence")


def test_c2_best_of_seven(evaluation):
    rows = evaluation["rows"]
    clean = _by(rows, "C2", "good", "clean")
    assert clean["comparison"] == "dnr vs pmr" and clean["reading"] == "holds"
    assert "D&R ranks 1 of 7" in clean["note"] and "absent" not in clean["note"]
    noisy = _by(rows, "C2", "good", "noisy")
    assert noisy["comparison"] == "dnr vs joint" and noisy["reading"] == "holds"
    bad = _by(rows, "C2", "bad")
    assert bad["comparison"] == "dnr vs joint" and bad["verdict"] == "worse"
    assert bad["reading"] == "does not hold"
    assert "D&R ranks 6 of 6" in bad["note"] and "absent: greedy" in bad["note"]
    # D&R's mean (70.2) above the strongest other (joint, 70.0) but not significantly
    weak = _by(rows, "C2", "noisy")
    assert weak["comparison"] == "dnr vs joint" and weak["reading"] == "no evidence"


def test_c3_scarce_modality(evaluation):
    rows = [r for r in evaluation["rows"] if r["claim"] == "C3"]
    assert {r["task"] for r in rows} == {"good", "bad"}
    assert {r["variant"] for r in rows if r["task"] == "good"} == {"noisy"}
    good_parts = [r for r in rows if r["task"] == "good" and r["level"] == "part"]
    assert [r["comparison"] for r in good_parts] == [
        "gblending vs joint", "ogm_ge vs joint", "greedy vs joint", "pmr vs joint",
        "agm vs joint", "dnr vs joint"]
    assert [r["verdict"] for r in good_parts] == ["worse"] * 5 + ["better"]
    assert _by(rows, "C3", "good", comparison="others worse, dnr better")["reading"] == "holds"
    bad = _by(rows, "C3", "bad", comparison="others worse, dnr better")
    assert bad["reading"] == "does not hold" and bad["note"] == "absent: greedy"
    assert _by(rows, "C3", "bad", comparison="dnr vs joint")["reading"] == "does not hold"
    assert "C3 skipped on noisy: no variant marked scarce" in evaluation["notes"]


def test_c4_probes(evaluation):
    rows = evaluation["rows"]
    clean_audio = _by(rows, "C4", "good", "clean", measure="audio probe")
    assert clean_audio["mean"] == pytest.approx(3.0) and clean_audio["verdict"] == "better"
    assert _by(rows, "C4", "good", "clean", comparison="every modality")["reading"] == "holds"
    img = _by(rows, "C4", "good", "noisy", measure="image probe")
    assert img["mean"] == pytest.approx(-3.0) and img["reading"] == "does not hold"
    assert _by(rows, "C4", "good", "noisy", comparison="every modality")["reading"] == \
        "does not hold"
    assert "C4 skipped on bad/scarce: no probe accuracies" in evaluation["notes"]
    assert not [r for r in rows if r["claim"] == "C4" and r["task"] != "good"]


def test_c5_dagger_vs_gblending(evaluation):
    rows = evaluation["rows"]
    assert _by(rows, "C5", "good", "clean")["reading"] == "holds"
    noisy = _by(rows, "C5", "good", "noisy")
    assert noisy["mean"] == pytest.approx(4.0) and noisy["reading"] == "holds"
    assert _by(rows, "C5", "bad")["reading"] == "does not hold"
    assert "C5 skipped on noisy/clean: no dnr_dagger" in evaluation["notes"]


def test_seed_mismatch_is_an_error():
    res = _bad()
    res["variants"]["scarce"]["methods"]["dnr"]["seeds"] = [0, 1, 2, 3, 9]
    with pytest.raises(ValueError, match=r"bad/scarce: dnr vs joint.*'joint' lacks seeds \[9\]"):
        evaluate_claims([res])


def test_write_claims(tmp_path):
    paths = []
    for res in (_good(), _noisy()):
        paths.append(tmp_path / f"{res['task']}.json")
        paths[-1].write_text(json.dumps(res))
    res = _bad()  # one seed: intervals and p are NaN, written as null
    for e in res["variants"]["scarce"]["methods"].values():
        e["seeds"], e["test"]["acc"] = [0], e["test"]["acc"][:1]
    paths.append(tmp_path / "bad.json")
    paths[-1].write_text(json.dumps(res))
    gone = tmp_path / "absent" / "results.json"
    md, js, missing = write_claims([*paths, gone], tmp_path / "out", "python benchmarks/claims.py")
    assert missing == [gone]
    text = md.read_text().splitlines()
    assert text[0].startswith("Produced by `python benchmarks/claims.py`; verdicts are "
                              "two-sided paired t-tests over seeds at the 5% level")
    assert "| C1 | holds 2, does not hold 0, no evidence 2 (of 4) |" in text
    # seed 0 alone: d = -4 + JITTER[1][0] - JITTER[0][0] = -4.15; no interval, no p
    assert "| bad | scarce | dnr vs joint | acc | 1 | -4.15 | - | - | no evidence | " \
           "**no evidence** |  |" in text
    assert f"- {gone}: missing, skipped" in text
    data = json.loads(js.read_text())  # strict JSON: no NaN
    one = [r for r in data["rows"] if r["task"] == "bad" and r["claim"] == "C1"][0]
    assert one["p"] is None and one["low"] is None and one["mean"] == pytest.approx(-4.15)
    assert data["command"] == "python benchmarks/claims.py" and "C5" in data["claims"]


def test_figure_rows():
    rows = improvement_rows(_good())
    assert len(rows) == 14 and {r["variant"] for r in rows} == {"clean", "noisy"}
    dnr = [r for r in rows if r["variant"] == "clean" and r["method"] == "dnr"][0]
    assert dnr["mean"] == pytest.approx(4.0) and not math.isnan(dnr["low"])
    points = probe_points(_good(), "clean")
    assert set(points) == {"joint", "dnr"} and len(points["dnr"]["audio"]) == 5


def test_overview_table():
    from mmrelearn.claims import overview_markdown

    text = overview_markdown([_bad()]).splitlines()
    assert text[0] == "### bad"
    assert text[2] == "| method | scarce Acc | scarce Δ vs joint [95% CI], verdict |"
    joint = next(line for line in text if line.startswith("| joint |"))
    # 70 + BASE + JITTER[0] = 70.1, 70.9, 69.0, 72.05, 67.95: mean 70, sd sqrt(10.225 / 4)
    assert joint == "| joint | 70.00 ± 1.60 (5) | reference |"
    dnr = next(line for line in text if line.startswith("| dnr |"))
    # d = -4 + JITTER[5 % 4] - JITTER[0]: mean -4.0, differences within +-0.2: "worse"
    assert dnr.startswith("| dnr | 66.00 ± 1.") and "-4.00 [" in dnr and dnr.endswith("worse |")
    # with passes recorded (teachers included), each variant gets their mean over seeds
    res = _bad()
    for e in res["variants"]["scarce"]["methods"].values():
        e["passes"] = [60.0] * len(e["seeds"])
    res["variants"]["scarce"]["methods"]["dnr"]["passes"] = [180.0] * 5
    text = overview_markdown([res]).splitlines()
    assert text[2] == "| method | scarce Acc | scarce passes | scarce Δ vs joint [95% CI], verdict |"
    assert next(line for line in text if line.startswith("| joint |")) == (
        "| joint | 70.00 ± 1.60 (5) | 60 | reference |")
    dnr = next(line for line in text if line.startswith("| dnr |"))
    assert dnr.startswith("| dnr | 66.00 ± 1.") and dnr.split(" | ")[2] == "180"


def test_two_methods_pair_over_their_common_seeds():
    res = _good()
    gb = res["variants"]["clean"]["methods"]["gblending"]  # run on 3 of the 5 seeds
    gb["seeds"], gb["test"]["acc"] = gb["seeds"][:3], gb["test"]["acc"][:3]
    row = _by(evaluate_claims([res])["rows"], "C5", "good", "clean")
    assert row["n"] == 3 and row["comparison"] == "dnr_dagger vs gblending"
    # offsets 5 and 1 with JITTER[7 % 4] and JITTER[1] over seeds 0-2: 4 + (0.1, -0.1, -0.1)
    assert row["mean"] == pytest.approx(4.0 - 0.1 / 3)


def test_rank_among_every_method():
    from mmrelearn.claims import rank_markdown, rank_rows

    rows = rank_rows([_good(), _bad()])
    clean = next(r for r in rows if (r["task"], r["variant"]) == ("good", "clean"))
    # clean offsets: dnr_dagger 5 > dnr 4 > ... : D&R 2nd of 8, 1 point below D&R-dagger
    assert (clean["rank"], clean["methods"], clean["best"]) == (2, 8, "dnr_dagger")
    assert clean["delta"] == pytest.approx(-1.0 + sum(
        j1 - j0 for j1, j0 in zip(JITTER[6 % 4], JITTER[7 % 4])) / 5)
    noisy = next(r for r in rows if (r["task"], r["variant"]) == ("good", "noisy"))
    assert (noisy["rank"], noisy["best"]) == (1, "dnr_dagger")  # dnr 2 > dnr_dagger 1
    bad = next(r for r in rows if r["task"] == "bad")
    # alone_* never counted; D&R -4 is 6th of 7 (only dnr_dagger at -5 below)
    assert (bad["rank"], bad["methods"], bad["best"]) == (6, 7, "joint")
    assert bad["verdict"] == "worse"
    text = rank_markdown([_bad()]).splitlines()
    assert text[2].startswith("| bad | scarce | 6 of 7 | 66.00 | joint (70.00) | -4.00 [")
