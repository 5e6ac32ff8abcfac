"""DDP under torchrun on CPU (gloo, 2 processes): every rank ends with the same weights, equal
to a single process on the same global batch; evaluation and the D&R diagnosis see the whole
split once; rank 0 alone writes; resume equals uninterrupted; refusals and a failing rank end
the job. The processes run ``tests/ddp_worker.py`` (one torchrun job for most checks)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

import mmrelearn
from mmrelearn import distributed
from mmrelearn.config import ConfigError, config_from_dict
from mmrelearn.data import DATASETS
from mmrelearn.train import build_trainer, evaluate, train
from mmrelearn.train.checkpoint import read_jsonl

sys.path.insert(0, str(Path(__file__).parents[1]))
import ddp_worker  # noqa: E402
from conftest import TINY  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build")

WORKER = Path(ddp_worker.__file__)
METHODS = {"joint": {}, "dnr": {"lam": 3.0, "every": 2}, "ogm_ge": {"conv_only": False},
           "pmr": {}, "agm": {}, "gblending": {"super_epoch": 2}, "mmcosine": {},
           "umt": {"teacher_epochs": 2}}
RES = {"type": "resnet18", "width": 2, "small_input": True}
GREEDY = {"name": "greedy_tiny", "seed": 0,
          "data": {"name": "tiny_images", "num_samples": 64, "val_fraction": 0.25,
                   "test_fraction": 0.25, "split_seed": 0},
          "model": {"encoders": {"a": dict(RES), "v": dict(RES)}, "fusion": "mmtm"},
          "method": {"name": "greedy", "epsilon": 0.0, "rebalance_steps": 2, "start_epoch": 1},
          "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
          "train": {"epochs": 3, "batch_size": 8, "progress": False}}


def _raw(name: str, **method) -> dict:
    """The tiny config without BatchNorm and dropout (each process normalises its own part of
    the batch, and draws its own dropout masks: neither equals one process on the whole
    batch), 123 training samples: the last batch of 27 splits 14 / 13."""
    raw = copy.deepcopy(TINY)
    raw["data"]["num_samples"] = 246
    for enc in raw["model"]["encoders"].values():
        enc.update(batchnorm=False, dropout=0.0)
    raw["method"] = {"name": name, **method}
    raw["train"].update(epochs=4, eval_batch_size=16)  # 63 val samples: 4 batches dealt
    return raw


def _torchrun(job: dict, path: Path, timeout: float) -> subprocess.CompletedProcess:
    path.write_text(json.dumps(job))
    src = str(Path(mmrelearn.__file__).parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(WORKER), str(path)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """One torchrun job: every method, a resumed run and refusals; returns its folder."""
    root = tmp_path_factory.mktemp("ddp")
    runs = [{"name": n, "raw": _raw(n, **kw), "run_dir": str(root / "runs" / n)}
            for n, kw in METHODS.items()]
    runs.append({"name": "greedy", "raw": GREEDY, "run_dir": str(root / "runs" / "greedy")})
    full = copy.deepcopy(TINY)  # BatchNorm and dropout: resume restores every rank's RNG
    full["train"]["epochs"] = 4
    runs += [{"name": "full", "raw": full, "run_dir": str(root / "runs" / "full")},
             {"name": "cut", "raw": full, "run_dir": str(root / "runs" / "cut"),
              "crash_epoch": 2}]
    odd = _raw("joint")
    odd["train"]["batch_size"] = 33
    runs += [{"name": "odd", "raw": odd, "run_dir": str(root / "runs" / "odd"),
              "expect_error": True},
             {"name": "mla", "raw": _raw("mla"), "run_dir": str(root / "runs" / "mla"),
              "expect_error": True},
             {"name": "nce", "raw": _raw("mmcosine", lam=0.5),  # NCE pairs within a batch
              "run_dir": str(root / "runs" / "nce"), "expect_error": True}]
    (root / "out").mkdir()
    spec = {"out": str(root / "out"), "audit": str(root / "runs"), "runs": runs,
            "hang_after_s": 200}
    done = _torchrun(spec, root / "job.json", timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


def _state(root: Path, name: str, rank: int) -> dict:
    return torch.load(root / "out" / f"{name}_rank{rank}.pt", weights_only=True)


def _single(raw: dict, run_dir: Path, monkeypatch) -> dict:
    monkeypatch.setitem(DATASETS, "tiny_images", ddp_worker.tiny_images)
    torch.set_num_threads(1)
    train(config_from_dict(raw), run_dir=run_dir)
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


# ---------------------------------------------------------------- one process: the pieces

def test_split_batches_are_the_single_process_batches_cut_in_parts():
    data = list(range(27))
    gen = [torch.Generator().manual_seed(3) for _ in range(3)]
    single = list(DataLoader(data, batch_size=10, shuffle=True, generator=gen[0]))
    parts = [list(DataLoader(data, generator=gen[1 + r], batch_sampler=distributed.SplitBatches(
        BatchSampler(RandomSampler(data, generator=gen[1 + r]), 10, False), r, 2)))
        for r in range(2)]
    assert [len(b) for b in parts[0]] == [5, 5, 4] and [len(b) for b in parts[1]] == [5, 5, 3]
    for i, batch in enumerate(single):
        assert torch.equal(torch.cat([parts[0][i], parts[1][i]]), batch)
    assert distributed.SplitBatches(BatchSampler(range(27), 10, False), 0, 2).global_size(2) == 7


def test_dealt_batches_give_each_batch_to_one_rank():
    dealt = [list(distributed.DealtBatches(7, 2, r, 3)) for r in range(3)]
    assert dealt == [[[0, 1], [6]], [[2, 3]], [[4, 5]]]
    assert [len(distributed.DealtBatches(7, 2, r, 3)) for r in range(3)] == [2, 1, 1]
    assert list(distributed.DealtBatches(3, 8, 1, 2)) == []  # a rank may get no batch


def test_single_process_helpers_are_the_identity():
    assert distributed.world_size() == 1 and distributed.is_main()
    x = torch.arange(3.0)
    assert distributed.all_reduce_sum(x) is x
    assert distributed.reduce_floats({"a": 0.1, "n": 3}) == {"a": 0.1, "n": 3}
    parts = [torch.ones(2), torch.zeros(1)]
    assert torch.equal(distributed.gather_batches(DataLoader([0]), parts), torch.cat(parts))
    assert distributed.from_main(lambda: 7) == 7
    assert distributed.batch_share(DataLoader([0]), 0, 5) == 1.0


@pytest.mark.parametrize("batch, n, match", [
    (33, 123, "33 is not divisible by 2"),
    (32, 97, "last batch of 32 holds 1, fewer than the 2 processes")])
def test_global_batch_that_cannot_be_split_is_refused(batch, n, match):
    with pytest.raises(ConfigError, match=f"train.batch_size.*{match}"):
        distributed.check_global_batch(batch, n, 2)
    distributed.check_global_batch(32, 96, 2)  # fine: 3 batches of 16 + 16


# ---------------------------------------------------------------- two processes

@pytest.mark.parametrize("name", [*METHODS, "greedy"])
def test_every_rank_ends_with_bitwise_identical_weights(job, name):
    a, b = _state(job, name, 0), _state(job, name, 1)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert repr(a["method"]) == repr(b["method"])  # AGM's running means, PMR's prototypes...


@pytest.mark.parametrize("name", list(METHODS))
def test_ddp_matches_one_process_on_the_same_global_batch(job, name, tmp_path, monkeypatch):
    one = _single(_raw(name, **METHODS[name]), tmp_path / name, monkeypatch)
    ddp = torch.load(job / "runs" / name / "checkpoints" / "last.pt", weights_only=True)
    for k, v in one["model"].items():
        assert torch.allclose(ddp["model"][k], v, atol=1e-5, rtol=0), (name, k)
    assert torch.equal(ddp["train_generator"], one["train_generator"])  # same batches drawn
    ddp_log = read_jsonl(job / "runs" / name / "metrics.jsonl")
    one_log = read_jsonl(tmp_path / name / "metrics.jsonl")
    for r_ddp, r_one in zip(ddp_log, one_log, strict=True):
        assert r_ddp["val"]["acc"] == r_one["val"]["acc"]
        assert r_ddp["passes"] == r_one["passes"] == 1.0
        for term, v in r_one["train"].items():  # the global batches' mean losses
            assert r_ddp["train"][term] == pytest.approx(v, rel=1e-5, abs=1e-6), term


def test_dnr_diagnosis_gathers_the_whole_split_once(job, tmp_path, monkeypatch):
    _single(_raw("dnr", **METHODS["dnr"]), tmp_path / "one", monkeypatch)
    (ddp,), (one,) = (read_jsonl(d / "reports.jsonl") for d in (job / "runs/dnr", tmp_path / "one"))
    assert ddp["epoch"] == one["epoch"] == 2 and ddp["dnr"]["applied"]
    assert (ddp["dnr"]["n_train"], ddp["dnr"]["n_val"]) == (123, 63)  # no padded duplicate
    for m, d in one["dnr"]["modalities"].items():
        for key, v in d.items():
            assert ddp["dnr"]["modalities"][m][key] == pytest.approx(v, abs=1e-6), (m, key)


def test_evaluation_under_ddp_equals_one_process_exactly(job, monkeypatch):
    """The summary's last-epoch test metrics, computed by two ranks holding two and one of
    the test split's batches, equal one process evaluating the same weights: bitwise."""
    raw = _raw("joint")
    trainer = build_trainer(config_from_dict(raw), job / "unused")
    last = torch.load(job / "runs/joint/checkpoints/last.pt", weights_only=True)
    trainer.model.load_state_dict(last["model"])
    mine = evaluate(trainer.model, trainer.loaders["test"], trainer.device, trainer.num_classes)
    summary = json.loads((job / "runs/joint/summary.json").read_text())
    assert summary["test_last_epoch"] == mine


def test_resume_under_ddp_equals_uninterrupted(job, strip_time):
    full, cut = job / "runs/full", job / "runs/cut"
    assert strip_time(read_jsonl(full / "metrics.jsonl")) == strip_time(
        read_jsonl(cut / "metrics.jsonl"))
    assert read_jsonl(full / "reports.jsonl") == read_jsonl(cut / "reports.jsonl")
    wf, wc = (torch.load(d / "checkpoints/last.pt", weights_only=True) for d in (full, cut))
    assert all(torch.equal(wf["model"][k], wc["model"][k]) for k in wf["model"])
    assert len(wf["rng_ranks"]) == 2  # each rank's own RNG (dropout) came back
    for rank in (0, 1):
        a, b = _state(job, "full", rank), _state(job, "cut", rank)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_rank_zero_alone_writes_the_run_directories(job):
    writes = [json.loads((job / "out" / f"writes_rank{r}.json").read_text()) for r in (0, 1)]
    assert writes[1] == []
    written = {Path(p).name for _, p in writes[0]}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "curves.png"} <= written
    assert (job / "runs/joint/checkpoints/best.pt").is_file()


def test_bad_runs_are_refused_on_every_rank_before_anything_is_written(job):
    for r in (0, 1):
        odd = (job / "out" / f"odd_rank{r}.err").read_text()
        assert "train.batch_size is the global batch" in odd and "33 is not divisible by 2" in odd
        mla = (job / "out" / f"mla_rank{r}.err").read_text()
        assert "method.name: 'mla' is not supported under DDP" in mla and "'ogm_ge'" in mla
        nce = (job / "out" / f"nce_rank{r}.err").read_text()
        assert "method.name: 'mmcosine' is not supported under DDP" in nce
    assert not any((job / "runs" / n).exists() for n in ("odd", "mla", "nce"))


def test_a_failing_rank_ends_the_job_with_its_error(tmp_path):
    raw = _raw("joint")
    raw["train"]["epochs"] = 3
    spec = {"out": str(tmp_path), "audit": str(tmp_path / "runs"), "hang_after_s": 60,
            "runs": [{"name": "j", "raw": raw, "run_dir": str(tmp_path / "runs/j")}],
            "fail": {"rank": 1, "epoch": 1}}
    done = _torchrun(spec, tmp_path / "job.json", timeout=90)
    assert done.returncode != 0
    assert "rank 1 fails on purpose at epoch 1" in done.stdout + done.stderr
    assert "Timeout" not in done.stderr  # ended by the failure, not by the hang guard
    assert len(read_jsonl(tmp_path / "runs/j/metrics.jsonl")) == 1  # epoch 0 was kept


def test_torchrun_cli_trains_and_rank_zero_prints(tmp_path):
    import yaml

    raw = _raw("dnr", lam=3.0, every=1)
    raw["train"]["epochs"] = 2
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    src = str(Path(mmrelearn.__file__).parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "mmrelearn", "train", "-c", str(cfg), "--run-dir", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best epoch") == 1  # printed by rank 0 only
    assert (tmp_path / "run/summary.json").is_file()
