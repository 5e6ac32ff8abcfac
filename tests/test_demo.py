"""The main job's machinery on a 2-epoch, 1-seed budget: files, tables, reuse of finished runs."""
from __future__ import annotations

import json

from PIL import Image

from mmrelearn.demo import load_demo_spec, run_demo


def test_demo_spec_is_valid_and_fair():
    from mmrelearn.config import apply_overrides, config_from_dict

    spec = load_demo_spec()
    cfgs = {(v, m): config_from_dict(apply_overrides(spec["base"], [*vo, *mo]))
            for v, vo in spec["variants"].items() for m, mo in spec["methods"].items()}
    assert {m for _, m in cfgs} == {"joint", "dnr"}
    for variant in spec["variants"]:
        joint, dnr = cfgs[(variant, "joint")], cfgs[(variant, "dnr")]
        # same data, splits, model, optimiser and epochs for both methods
        assert joint.data == dnr.data and joint.model == dnr.model
        assert joint.optim == dnr.optim and joint.train == dnr.train


def test_demo_runs_and_reuses_finished_runs(tmp_path):
    text = run_demo(out_dir=tmp_path, seeds=1, epochs=2, progress=False)
    assert "| clean-joint | joint | 1 |" in text and "| noisy-dnr | dnr | 1 |" in text
    assert "P_train" in text
    assert (tmp_path / "results.md").read_text().strip() == text.strip()
    for variant in ("clean", "noisy"):
        with Image.open(tmp_path / f"{variant}_curves.png") as im:
            assert im.size[0] > 600
    summary = tmp_path / "clean/dnr/seed0/summary.json"
    stamp = summary.stat().st_mtime_ns
    again = run_demo(out_dir=tmp_path, seeds=1, epochs=2, progress=False)
    assert "for 4 runs trained now (0 finished runs reused" in text
    assert "for 0 runs trained now (4 finished runs reused" in again
    # everything but the wall-time line is identical, and no run was retrained
    assert again.splitlines()[:-1] == text.splitlines()[:-1]
    assert summary.stat().st_mtime_ns == stamp
    assert json.loads(summary.read_text())["epochs"] == 2


def test_demo_refuses_a_stale_run_of_another_config(tmp_path):
    import pytest

    from mmrelearn.train import RunExistsError

    run_demo(out_dir=tmp_path, seeds=1, epochs=1, progress=False)
    with pytest.raises(RunExistsError, match="another configuration"):
        run_demo(out_dir=tmp_path, seeds=1, epochs=2, progress=False)


def test_comparison_with_probes(tmp_path, tiny_raw):
    from mmrelearn.demo import run_comparison

    tiny_raw["train"].update(epochs=2, monitor_purity=False)
    spec = {"title": "# tiny", "descriptions": {"clean": "as generated"}, "base": tiny_raw,
            "probe": True, "methods": {"joint": ["method={name: joint}"],
                                       "dnr": ["method.every=1"]},
            "variants": {"clean": []}}
    text = run_comparison(spec, tmp_path, seeds=2, progress=False)
    assert "| method | m0 probe acc | m1 probe acc |" in text
    probe_table = text.split("| method | m0 probe acc | m1 probe acc |")[1]
    row = next(line for line in probe_table.splitlines() if line.startswith("| dnr |"))
    assert row.count("±") == 2
    probe = json.loads((tmp_path / "clean/dnr/seed1/probe_best.json").read_text())["modalities"]
    assert set(probe) == {"m0", "m1"} and 0.0 <= probe["m0"]["test_acc"] <= 1.0
