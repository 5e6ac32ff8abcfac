"""Many runs, one after the other or in N separate processes (comparisons and sweeps).

Each run has its own directory, so processes share no file. Each process gets
cpu_count / N intra-op threads; with several GPUs and ``train.device`` ``auto`` or ``cuda``,
job slot i uses ``cuda:(i mod devices)`` (a stored run is matched ignoring ``train.device``).
"""
from __future__ import annotations

import os
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Optional, Sequence

from ..config import apply_overrides

__all__ = ["run_many"]


def _devices(raw: dict, jobs: int) -> list[Optional[str]]:
    """Per job slot: the CUDA device it uses, or None to keep the config's device."""
    import torch

    device = raw.get("train", {}).get("device", "auto")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if jobs < 2 or n < 2 or device not in ("auto", "cuda"):
        return [None] * jobs
    return [f"cuda:{i % n}" for i in range(jobs)]


def _worker(raw: dict, run_dir: str, threads: int, device: Optional[str]) -> dict:
    """Train (or reuse, or resume) one run in this process; returns its summary."""
    import torch

    from .run import run_or_reuse

    torch.set_num_threads(threads)
    if device is not None:
        raw = apply_overrides(raw, [f"train.device={device}"])
    return run_or_reuse(raw, Path(run_dir))


def run_many(items: Sequence[tuple[dict, Path]], jobs: int = 1, progress: bool = True,
             desc: str = "runs") -> int:
    """Run every ``(raw config, run directory)`` not finished yet, in the given order (with
    ``jobs`` processes, started in that order); returns how many were trained now. A finished
    run is reused only if it holds the same config (else :class:`RunExistsError`). The first
    failure stops the rest and is raised naming its run directory."""
    from tqdm.auto import tqdm

    from .run import run_or_reuse

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    todo = []
    for raw, d in items:
        if (Path(d) / "summary.json").is_file():
            run_or_reuse(raw, d)  # finished: only checked to hold this config
        else:
            todo.append((raw, Path(d)))
    bar = tqdm(total=len(todo), desc=desc, disable=not progress)
    if jobs == 1:
        for raw, d in todo:
            run_or_reuse(raw, d)
            bar.update()
        bar.close()
        return len(todo)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    devices = _devices(todo[0][0], jobs) if todo else []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        pending = {pool.submit(_worker, raw, str(d), threads, devices[i % jobs]): d
                   for i, (raw, d) in enumerate(todo)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                d = pending.pop(fut)
                if fut.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise RuntimeError(f"run {d} failed: {fut.exception()}") from fut.exception()
                bar.update()
    bar.close()
    return len(todo)
