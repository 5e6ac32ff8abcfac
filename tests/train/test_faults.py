"""Real faults: ``mmrelearn train`` and ``mmrelearn prepare`` run as separate processes, killed
with SIGKILL at seeded random moments, then resumed (or rerun), must end exactly where an
uninterrupted run ends, with no temporary file left behind.

The kill moments are drawn over the window in which the uninterrupted process was writing:
from the appearance of its first file (config.yaml, manifest.json) to that of its last one
(summary.json) or its exit. The training run is sized so that its epochs fill most of that
window (about a second on one thread).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest
import torch
import yaml

from mmrelearn.train.checkpoint import read_jsonl

KILLS = 3  # kill points per command
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "mmrelearn", *map(str, args)]


def _window(args, first: Path, last: Optional[Path] = None) -> float:
    """Run to the end; seconds from the appearance of ``first`` to that of ``last`` (or the
    exit)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        seen: dict[Path, float] = {}
        while proc.poll() is None:
            for path in (first, last):
                if path is not None and path not in seen and path.exists():
                    seen[path] = time.perf_counter()
            time.sleep(0.005)
        err.seek(0)
        assert proc.returncode == 0, err.read().decode()
    return seen.get(last, time.perf_counter()) - seen[first]


def _kill_after(args, first_file: Path, delay: float) -> bool:
    """Start, SIGKILL ``delay`` s after ``first_file`` appears; True if it was still running."""
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not first_file.exists():
        time.sleep(0.005)
    time.sleep(delay)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return running


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_killed_training_resumes_to_the_uninterrupted_run(tiny_raw, tmp_path, strip_time):
    tiny_raw["train"]["epochs"] = 15
    tiny_raw["data"]["num_samples"] = 2400  # about 70 ms an epoch
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_raw))
    full = tmp_path / "full"
    window = _window(_cli("train", "-c", config, "--run-dir", full), full / "config.yaml",
                     full / "summary.json")
    rng, interrupted = random.Random(0), []
    for k in range(KILLS):
        cut = tmp_path / f"cut{k}"
        delay = rng.uniform(0.05, 0.95) * window
        interrupted.append(_kill_after(_cli("train", "-c", config, "--run-dir", cut),
                                       cut / "config.yaml", delay))
        again = (["--resume", cut] if (cut / "config.yaml").exists()
                 else ["-c", config, "--run-dir", cut])  # killed before the directory existed
        done = subprocess.run(_cli("train", *again), env=ENV, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()
        assert _files(cut) == _files(full), f"kill {k} after {delay:.2f} s"  # no *.tmp left
        for name in ("metrics.jsonl", "reports.jsonl"):
            assert strip_time(read_jsonl(cut / name)) == strip_time(read_jsonl(full / name))
        a, b = (yaml.safe_load((d / "summary.json").read_text()) for d in (full, cut))
        for key in ("best_epoch", "train", "val", "test", "test_last_epoch"):
            assert a[key] == b[key], key
        wa, wb = (torch.load(d / "checkpoints/last.pt", weights_only=True)["model"]
                  for d in (full, cut))
        assert all(torch.equal(wa[n], wb[n]) for n in wa)
    assert any(interrupted)  # at least one kill hit a running process


def test_killed_prepare_reruns_to_the_uninterrupted_cache(tmp_path):
    pytest.importorskip("av")
    import mediafiles

    raw = mediafiles.make_cremad_raw(tmp_path / "raw")
    data = {"name": "cremad", "raw": str(raw), "cache": None, "frames": 2, "image_size": 16,
            "progress": False, "audio": {"preset": "crema_d", "sample_rate": 8000,
                                         "duration": 0.25, "n_fft": 64, "hop_length": 32}}

    def config(cache: Path) -> Path:
        path = tmp_path / f"{cache.name}.yaml"
        path.write_text(yaml.safe_dump({"data": {**data, "cache": str(cache)}}))
        return path

    full = tmp_path / "full"
    window = _window(_cli("prepare", "-c", config(full)), full / "manifest.json")
    rng, interrupted = random.Random(1), []
    for k in range(KILLS):
        cut = tmp_path / f"cut{k}"
        delay = rng.uniform(0.05, 0.95) * window
        interrupted.append(_kill_after(_cli("prepare", "-c", config(cut)), cut / "manifest.json",
                                       delay))
        done = subprocess.run(_cli("prepare", "-c", config(cut)), env=ENV, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()
        assert _files(cut) == _files(full), f"kill {k} after {delay:.2f} s"  # no *.tmp left
        for name in _files(full):
            assert (cut / name).read_bytes() == (full / name).read_bytes(), name
    assert any(interrupted)


def test_resume_removes_temporaries_and_a_cut_line(tiny_raw, tmp_path, strip_time, crash_run):
    """What a kill inside a write leaves (the fault tests above reach it only by chance)."""
    from mmrelearn.config import config_from_dict
    from mmrelearn.train import train

    full = train(config_from_dict(tiny_raw), run_dir=tmp_path / "full")
    cut = tmp_path / "cut"
    crash_run(tiny_raw, cut, 3)
    (cut / "checkpoints" / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    (cut / ".metrics.jsonl.k1ll3d.tmp").write_text("{}")
    with open(cut / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "lr": 0.0')  # an append cut short
    resumed = train(run_dir=cut, resume=True)
    assert resumed["test"] == full["test"]
    assert strip_time(read_jsonl(cut / "metrics.jsonl")) == strip_time(
        read_jsonl(tmp_path / "full" / "metrics.jsonl"))
    assert not list(cut.rglob("*.tmp"))
