"""Atomic checkpoint and JSON writes, and the RNG state a resumed run needs.

Checkpoints hold only what ``torch.load(weights_only=True)`` accepts (tensors, numbers,
strings, lists, tuples, dicts): a run directory received from someone else is opened without
unpickling arbitrary objects, so it cannot run code (:func:`load_checkpoint`).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

__all__ = ["atomic_save", "atomic_write_text", "append_jsonl", "read_jsonl", "truncate_jsonl",
           "rng_state", "set_rng_state", "load_checkpoint", "convert_checkpoint",
           "remove_temporaries", "TMP_GLOB"]

log = logging.getLogger(__name__)

#: temporaries of :func:`atomic_save` / :func:`atomic_write_text`: ".<final name>.<random>.tmp"
TMP_GLOB = ".*.tmp"


def _atomic(path: Path, write) -> None:
    # Write to a temporary file in the same directory, then rename: a crash leaves either the
    # old file or the new one, never half of one.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # TMP_GLOB
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
    """Keep only records with ``epoch <= max_epoch`` (drops lines of an epoch that crashed).

    A last line without its newline is the part of an append cut by a killed process: dropped.
    """
    path = Path(path)
    if not path.exists():
        return
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]  # "" when the cut line was the only one
        atomic_write_text(text, path)
    records = [r for r in read_jsonl(path) if r.get("epoch", -1) <= max_epoch]
    atomic_write_text("".join(json.dumps(r) + "\n" for r in records), path)


def remove_temporaries(folder: Union[str, Path]) -> int:
    """Delete the temporaries (:data:`TMP_GLOB`) a killed atomic write left in ``folder``."""
    folder = Path(folder)
    stale = list(folder.glob(TMP_GLOB)) if folder.is_dir() else []
    for tmp in stale:
        tmp.unlink()
    return len(stale)


def _numpy_state() -> dict[str, Any]:
    # np.random.get_state() holds an ndarray, which weights_only=True refuses: plain values
    key, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"key": key, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
            "gauss": float(gauss)}


def rng_state() -> dict[str, Any]:
    """Torch, NumPy, Python (and CUDA) RNG states as tensors and plain values."""
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_state(),
             "python": random.getstate()}  # (version, tuple of ints, float or None)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["key"], np.asarray(n["keys"], dtype=np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))  # a list after a JSON-like load
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Union[str, Path], map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``: tensors and plain values only, never code.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: naming ``path``, when it holds objects that cannot be loaded safely (a
            pickled object, e.g. a checkpoint of an older version, or a hostile file) or is
            not a torch checkpoint at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        name = found[1] if found else "objects beyond tensors and plain values"
        hint = ("; if it is a checkpoint you wrote yourself with an older mmrelearn (NumPy RNG "
                "state as an array), convert it once with: python -c \"from "
                "mmrelearn.train.checkpoint import convert_checkpoint; "
                f"convert_checkpoint('{path}')\"" if name.startswith("numpy") else "")
        raise ValueError(f"{path} holds objects that cannot be loaded safely ({name}); it was "
                         f"not loaded: checkpoints are read with torch.load(weights_only=True), "
                         f"which accepts tensors and plain values only{hint}") from None
    except (RuntimeError, EOFError, OSError) as err:  # not a zip / torch file, truncated
        raise ValueError(f"{path} is not a readable torch checkpoint ({err})") from None


def convert_checkpoint(path: Union[str, Path]) -> Path:
    """Rewrite a TRUSTED checkpoint of an older version so that :func:`load_checkpoint` opens
    it: the NumPy RNG state (an ndarray tuple) becomes plain values.

    It unpickles the file with ``weights_only=False``, which runs whatever code the file holds:
    only for files you wrote yourself.
    """
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=False)
    rng = state.get("rng") if isinstance(state, dict) else None
    if rng is not None and isinstance(rng.get("numpy"), tuple):
        key, keys, pos, has_gauss, gauss = rng["numpy"]
        rng["numpy"] = {"key": key, "keys": np.asarray(keys).tolist(), "pos": int(pos),
                        "has_gauss": int(has_gauss), "gauss": float(gauss)}
    atomic_save(state, path)
    load_checkpoint(path)  # raises if anything else in it still needs unpickling
    log.info("converted %s to the weights_only format", path)
    return path
