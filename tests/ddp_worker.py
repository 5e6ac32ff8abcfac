"""One rank of a DDP test job, started by ``torchrun --nproc_per_node 2 ddp_worker.py JOB``.

``JOB`` is a JSON file: ``{"out": dir, "audit": dir, "runs": [...], "fail": null}``. Each run
``{"name", "raw", "run_dir"}`` is trained with :func:`mmrelearn.train.train` (optionally
``"crash_epoch"``: interrupted there on every rank, as a kill would, then resumed; optionally
``"expect_error"``: its error message is recorded). After each run every rank saves its model
and method state to ``out/<name>_rank<r>.pt``. Every rank records each file it opens for
writing, renames, removes or creates under ``audit`` (``out/writes_rank<r>.json``).
``"fail": {"rank": r, "epoch": e}`` makes rank r raise at the start of epoch e.
"""
from __future__ import annotations

import faulthandler
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mmrelearn.config import ConfigError, config_from_dict
from mmrelearn.data import DATASETS, RawData
from mmrelearn.train import loop, train


def tiny_images(num_samples: int = 64, seed: int = 0) -> RawData:
    """Two 1x8x8 image modalities, 2 classes (as tests/methods/test_greedy.py)."""
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.arange(num_samples) % 2)[torch.randperm(num_samples, generator=gen)]
    shift = labels.float()[:, None, None, None]
    a = torch.randn(num_samples, 1, 8, 8, generator=gen) + 1.5 * shift
    v = torch.randn(num_samples, 1, 8, 8, generator=gen) + 0.3 * shift
    return RawData({"a": a, "v": v}, labels, 2, ["0", "1"])


def _audit(root: str, writes: list) -> None:
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & write_flags)
            paths = [path] if writing else []
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate"):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return
        for p in paths:
            p = os.fsdecode(p) if isinstance(p, (bytes, os.PathLike)) else p
            if isinstance(p, str) and os.path.abspath(p).startswith(root):
                writes.append([event, p])

    sys.addaudithook(hook)


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    if job.get("hang_after_s"):  # a hang ends with every thread's stack, not the test timeout
        faulthandler.dump_traceback_later(job["hang_after_s"], exit=True)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    DATASETS.setdefault("tiny_images", tiny_images)
    out = Path(job["out"])
    writes: list = []
    _audit(os.path.abspath(job["audit"]), writes)  # rank 0's list shows the hook works

    fit, train_epoch = loop.Trainer.fit, loop.Trainer._train_epoch
    current: dict = {}

    def saving_fit(self):
        numbers = fit(self)
        torch.save({"model": self.model.state_dict(), "method": self.method.state_dict()},
                   out / f"{current['name']}_rank{rank}.pt")
        return numbers

    def failing_epoch(self, epoch):
        fail = job.get("fail")
        if fail and rank == fail["rank"] and epoch == fail["epoch"]:
            raise RuntimeError(f"rank {rank} fails on purpose at epoch {epoch}")
        if current.get("crash_epoch") == epoch:
            raise KeyboardInterrupt("simulated crash")
        return train_epoch(self, epoch)

    loop.Trainer.fit, loop.Trainer._train_epoch = saving_fit, failing_epoch
    for run in job["runs"]:
        current.clear()
        current.update(run)
        try:
            if run.get("crash_epoch") is not None:
                try:
                    train(config_from_dict(run["raw"]), run_dir=run["run_dir"])
                except KeyboardInterrupt:
                    pass
                dist.barrier()
                current["crash_epoch"] = None
                train(run_dir=run["run_dir"], resume=True)
            else:
                train(config_from_dict(run["raw"]), run_dir=run["run_dir"])
        except (ConfigError, ValueError) as err:
            if not run.get("expect_error"):
                raise
            (out / f"{run['name']}_rank{rank}.err").write_text(str(err))
        dist.barrier()
    (out / f"writes_rank{rank}.json").write_text(json.dumps(writes))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
