"""The command line end to end on a tiny config: files written, figures and numbers finite."""
from __future__ import annotations

import json
import math

import yaml
from PIL import Image

from mmrelearn.cli import main
from mmrelearn.train.checkpoint import read_jsonl


def _write(tmp_path, raw, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_eval_compare(tmp_path, tiny_raw, capsys):
    tiny_raw["output_dir"] = str(tmp_path / "runs")
    tiny_raw["train"]["epochs"] = 3
    cfg = _write(tmp_path, tiny_raw)
    for seed in (0, 1):
        assert main(["train", "-c", str(cfg), "--set", f"seed={seed}", "--set", "method.every=1"]) == 0
    tiny_raw["method"] = {"name": "joint"}
    tiny_raw["name"] = "tiny-joint"
    assert main(["train", "-c", str(_write(tmp_path, tiny_raw, "j.yaml"))]) == 0
    out = capsys.readouterr().out
    assert "test acc" in out

    run = tmp_path / "runs/tiny/seed0"
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["method"]["every"] == 1 and resolved["seed"] == 0
    records = read_jsonl(run / "metrics.jsonl")
    assert len(records) == 3
    assert all(math.isfinite(r["train"]["total"]) and math.isfinite(r["val"]["acc"])
               for r in records)
    assert all(math.isfinite(p["gap"]) for r in records for p in r["purity"].values())
    with Image.open(run / "curves.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200

    assert main(["eval", str(run)]) == 0
    ev = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    assert ev["test"]["acc"] == summary["test"]["acc"] and ev["epoch"] == summary["best_epoch"]
    assert main(["eval", str(run), "--probe"]) == 0
    probe = json.loads(capsys.readouterr().out)["probe"]
    assert set(probe) == {"m0", "m1"}
    assert all(0.0 <= p["test_acc"] <= 1.0 and p["C"] > 0 for p in probe.values())

    table_path = tmp_path / "table.md"
    runs = [str(tmp_path / "runs/tiny/seed0"), str(tmp_path / "runs/tiny/seed1"),
            str(tmp_path / "runs/tiny-joint/seed0")]
    assert main(["compare", *runs, "--out", str(table_path)]) == 0
    table = capsys.readouterr().out
    assert "| tiny | dnr | 2 |" in table and "| tiny-joint | joint | 1 |" in table
    assert table_path.read_text().strip() == table.strip()


def test_cli_errors_are_clear(tmp_path, tiny_raw, capsys):
    tiny_raw["train"]["epocs"] = 3
    assert main(["train", "-c", str(_write(tmp_path, tiny_raw))]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['epocs']" in err and "epochs" in err
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["compare", str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err


def test_prepare_names_datasets_without_a_prepare_step(tmp_path, tiny_raw, capsys):
    assert main(["prepare", "-c", str(_write(tmp_path, tiny_raw))]) == 2
    err = capsys.readouterr().err
    assert "'synthetic'" in err and "cremad" in err


def test_prepare_decodes_then_resumes(tmp_path, capsys):
    import pytest

    pytest.importorskip("av")
    import mediafiles

    raw = mediafiles.make_cremad_raw(tmp_path / "raw")
    cfg = {"name": "c", "data": {"name": "cremad", "cache": str(tmp_path / "cache"),
                                 "image_size": 16, "progress": False,
                                 "audio": {"preset": "crema_d", "sample_rate": 8000,
                                           "duration": 0.25, "n_fft": 64, "hop_length": 32}},
           "model": {"encoders": {"audio": {"type": "resnet18", "width": 4},
                                  "visual": {"type": "resnet18", "width": 4}}}}
    path = _write(tmp_path, cfg)
    assert main(["prepare", "-c", str(path), "--set", f"data.raw={raw}"]) == 0
    assert "12 clips" in capsys.readouterr().out and (tmp_path / "cache/manifest.json").is_file()
    assert main(["prepare", "-c", str(path), "--set", f"data.raw={raw}"]) == 0
    assert "0 decoded now, 12 already cached" in capsys.readouterr().out
