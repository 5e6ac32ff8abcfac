"""Atomic checkpoint and JSON writes, and the RNG state a resumed run needs."""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

__all__ = ["atomic_save", "atomic_write_text", "append_jsonl", "read_jsonl", "truncate_jsonl",
           "rng_state", "set_rng_state"]


def _atomic(path: Path, write) -> None:
    # Write to a temporary file in the same directory, then rename: a crash leaves either the
    # old file or the new one, never half of one.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` that never leaves a partial file at ``path``."""
    _atomic(Path(path), lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: Union[str, Path]) -> None:
    _atomic(Path(path), lambda f: f.write(text.encode()))


def append_jsonl(record: dict, path: Union[str, Path]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Union[str, Path]) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not a JSON line ({e})") from e
    return out


def truncate_jsonl(path: Union[str, Path], max_epoch: int) -> None:
    """Keep only records with ``epoch <= max_epoch`` (drops lines of an epoch that crashed)."""
    records = [r for r in read_jsonl(path) if r.get("epoch", -1) <= max_epoch]
    atomic_write_text("".join(json.dumps(r) + "\n" for r in records), path)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
