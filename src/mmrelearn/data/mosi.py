"""CMU-MOSI and CMU-MOSEI sentiment (vision, audio, text sequences) from MultiBench's pickles.

A file (``mosi_data.pkl``, ``mosi_raw.pkl``, ``mosei_senti_data.pkl``) is a dict with ``train``,
``valid`` and ``test``, each a dict of numpy arrays ``vision`` (N, T, dv), ``audio`` (N, T, da),
``text`` (N, T, 300 word vectors), ``labels`` (N, 1) or (N, 1, 1) sentiment in [-3, 3] and
``id``. MOSI has dv 20, da 5 and T 50; MOSEI dv 35, da 74; any sizes are accepted if they
agree across splits. The file's ``valid`` split is the validation split, ``test`` the test.

Preprocessing, as MultiBench's ``datasets/affect/get_data.py`` where it has a rule:
- non-finite values (the audio's -inf) become 0, counted in the log (MultiBench zeroes -inf
  in the audio only);
- samples whose text is all zeros are dropped, per split, counted in the log (its
  ``drop_entry``, which tests ``text.sum() == 0``);
- the word vectors are zero-padded at the front; as MultiBench's aligned loader does, every
  modality of a sample is cut at the sample's first non-zero text step, and the steps are moved
  to the front with zeros filling the end. The trailing all-zero steps are then padding for
  the ``transformer`` encoder's rule.
No normalisation is applied. Pickles can run code when loaded: open only files you trust.
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .base import RawData, register_dataset

__all__ = ["AFFECT_MODALITIES", "AFFECT_TASKS", "read_affect_pickle", "task_labels",
           "load_affect", "load_mosi", "load_mosei"]

log = logging.getLogger(__name__)

AFFECT_MODALITIES = ("vision", "audio", "text")
#: task -> class names (index = class); the names state each task's convention.
AFFECT_TASKS: dict[str, list[str]] = {
    "binary": ["negative (<0)", "positive (>=0)"],
    "binary_nonzero": ["negative (<0)", "positive (>0)"],
    "seven": [str(v) for v in range(-3, 4)],
}
_FILE_SPLITS = (("train", "train"), ("valid", "val"), ("test", "test"))  # file key -> ours


def _where(path: Path, split: str, key: str) -> str:
    return f"{path}, split {split!r}, key {key!r}"


def _numeric(value: Any, path: Path, split: str, key: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{_where(path, split, key)}: expected a numeric array, got dtype "
                         f"{arr.dtype}")
    return arr


def _check_split(part: Any, path: Path, split: str) -> dict[str, np.ndarray]:
    """One split's arrays: float32 (N, T, d) per modality and float64 labels (N,)."""
    if not isinstance(part, Mapping):
        raise ValueError(f"{path}, split {split!r}: expected a dict of arrays, got "
                         f"{type(part).__name__}")
    missing = [k for k in (*AFFECT_MODALITIES, "labels") if k not in part]
    if missing:
        raise ValueError(f"{path}, split {split!r}: missing key(s) {missing}; found "
                         f"{sorted(map(str, part))}")
    out = {}
    for key in AFFECT_MODALITIES:
        arr = _numeric(part[key], path, split, key)
        if arr.ndim != 3:
            raise ValueError(f"{_where(path, split, key)}: expected shape (N, T, d), got "
                             f"{arr.shape}")
        if arr.shape[:2] != out.get("vision", arr).shape[:2]:
            raise ValueError(f"{_where(path, split, key)}: shape {arr.shape} does not match "
                             f"vision's {out['vision'].shape} in N and T")
        out[key] = arr.astype(np.float32, copy=False)
    n = out["vision"].shape[0]
    y = _numeric(part["labels"], path, split, "labels")
    if y.shape not in ((n,), (n, 1), (n, 1, 1)):
        raise ValueError(f"{_where(path, split, 'labels')}: expected shape ({n}, 1) or "
                         f"({n}, 1, 1), got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError(f"{_where(path, split, 'labels')}: non-finite labels")
    if "id" in part and len(part["id"]) != n:
        raise ValueError(f"{_where(path, split, 'id')}: {len(part['id'])} ids for {n} samples")
    out["labels"] = y.reshape(n).astype(np.float64)
    return out


def read_affect_pickle(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Read and check a MultiBench affect pickle.

    Returns:
        ``{"train" | "valid" | "test": {"vision", "audio", "text": float32 (N, T, d),
        "labels": float64 (N,)}}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a pickle of that layout: a missing split or key, a wrong shape or
            dtype, or sizes that differ between splits; the message names file, split and key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"affect pickle path {path} not found; expected MultiBench's "
                                f"file "
                                f"(e.g. mosi_data.pkl, mosei_senti_data.pkl)")
    try:
        with path.open("rb") as fh:
            data = pickle.load(fh)
    except Exception as err:  # any unpickling failure is a bad file
        raise ValueError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from err
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a dict with train/valid/test, got "
                         f"{type(data).__name__}")
    missing = [s for s, _ in _FILE_SPLITS if s not in data]
    if missing:
        raise ValueError(f"{path}: missing split(s) {missing}; found {sorted(map(str, data))}")
    parts = {s: _check_split(data[s], path, s) for s, _ in _FILE_SPLITS}
    for split in ("valid", "test"):
        for key in AFFECT_MODALITIES:
            got, want = parts[split][key].shape[1:], parts["train"][key].shape[1:]
            if got != want:
                raise ValueError(f"{_where(path, split, key)}: (T, d) = {got} differs from "
                                 f"the train split's {want}")
    return parts


def task_labels(sentiment: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Classes of continuous sentiment for a task of :data:`AFFECT_TASKS`.

    ``binary``: 1 for sentiment >= 0, 0 below (zero counts as positive, the literature's
    "Acc-2 with zeros"; MultiBench's own classification labels count 0 as negative);
    ``binary_nonzero``: samples with sentiment exactly 0 are dropped, then
    1 for > 0; ``seven``: round(clip(s, -3, 3)) + 3, classes 0..6 for -3..3 (numpy rounds
    halves to even).

    Returns:
        int64 classes (N,) and a bool keep mask (N,).
    """
    keep = np.ones(sentiment.shape, dtype=bool)
    if task == "binary":
        return (sentiment >= 0).astype(np.int64), keep
    if task == "binary_nonzero":
        return (sentiment > 0).astype(np.int64), sentiment != 0
    if task == "seven":
        return np.round(np.clip(sentiment, -3.0, 3.0)).astype(np.int64) + 3, keep
    raise ValueError(f"task must be one of {list(AFFECT_TASKS)}, got {task!r}")


def _front_align(arrays: dict[str, np.ndarray]) -> None:
    """Start every sample at its first non-zero text step, zero-filling the end (in place)."""
    text = arrays["text"]  # (N, T, 300); every sample has some non-zero step
    t = text.shape[1]
    start = (text != 0).any(axis=2).argmax(axis=1)  # (N,) first valid step
    src = np.arange(t)[None, :] + start[:, None]  # (N, T) source step of each target step
    outside = src >= t
    src = np.minimum(src, t - 1)[:, :, None]  # (N, T, 1)
    for key in AFFECT_MODALITIES:
        moved = np.take_along_axis(arrays[key], src, axis=1)  # (N, T, d)
        moved[outside] = 0.0
        arrays[key] = moved


def _prepare_split(arrays: dict[str, np.ndarray], path: Path, split: str, task: str
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Clean one split (see the module docstring); returns its arrays and int64 classes."""
    for key in AFFECT_MODALITIES:
        bad = ~np.isfinite(arrays[key])
        if bad.any():
            log.info("%s, split %s: %d non-finite value(s) in %s replaced by 0", path, split,
                     int(bad.sum()), key)
            arrays[key] = np.where(bad, np.float32(0.0), arrays[key])
    has_text = (arrays["text"] != 0).any(axis=(1, 2))  # (N,)
    classes, keep_task = task_labels(arrays["labels"], task)
    n_text, n_task = int((~has_text).sum()), int((has_text & ~keep_task).sum())
    if n_text:
        log.info("%s, split %s: %d sample(s) with all-zero text dropped (as MultiBench)",
                 path, split, n_text)
    if n_task:
        log.info("%s, split %s: %d sample(s) with sentiment 0 dropped (task %s)", path, split,
                 n_task, task)
    keep = has_text & keep_task
    if not keep.any():
        raise ValueError(f"{path}, split {split!r}: no sample left of {len(keep)} "
                         f"({n_text} with all-zero text, {n_task} with sentiment 0 dropped)")
    kept = {k: arrays[k][keep] for k in AFFECT_MODALITIES}
    _front_align(kept)
    return kept, classes[keep]


def load_affect(path: str | Path, modalities: Sequence[str], task: str, name: str) -> RawData:
    """A MultiBench affect pickle as :class:`RawData` with its official train/val/test split."""
    mods = [modalities] if isinstance(modalities, str) else list(modalities)
    if not mods or len(set(mods)) != len(mods) or not set(mods) <= set(AFFECT_MODALITIES):
        raise ValueError(f"{name} modalities {modalities!r}: a non-empty subset of "
                         f"{list(AFFECT_MODALITIES)} without repeats")
    if task not in AFFECT_TASKS:
        raise ValueError(f"{name} task must be one of {list(AFFECT_TASKS)}, got {task!r}")
    parts = read_affect_pickle(path)
    inputs: dict[str, list[np.ndarray]] = {m: [] for m in mods}
    labels, splits, offset = [], {}, 0
    for key, split in _FILE_SPLITS:
        arrays, classes = _prepare_split(parts.pop(key), Path(path), key, task)
        for m in mods:
            inputs[m].append(arrays[m])
        labels.append(classes)
        splits[split] = torch.arange(offset, offset + len(classes))
        offset += len(classes)
    log.info("%s (%s, task %s): %s", name, ", ".join(mods), task,
             {s: len(idx) for s, idx in splits.items()})
    return RawData({m: torch.from_numpy(np.concatenate(v)) for m, v in inputs.items()},
                   torch.from_numpy(np.concatenate(labels)), len(AFFECT_TASKS[task]),
                   class_names=list(AFFECT_TASKS[task]), splits=splits)


@register_dataset("mosi")
def load_mosi(path: str, modalities: Sequence[str] = AFFECT_MODALITIES,
              task: str = "binary") -> RawData:
    """CMU-MOSI (Zadeh et al., 2016) from MultiBench's ``mosi_data.pkl`` / ``mosi_raw.pkl``.

    Args:
        path: the pickle.
        modalities: a non-empty subset of vision, audio, text, in the order wanted.
        task: ``binary``, ``binary_nonzero`` or ``seven`` (see :func:`task_labels`).
    """
    return load_affect(path, modalities, task, "mosi")


@register_dataset("mosei")
def load_mosei(path: str, modalities: Sequence[str] = AFFECT_MODALITIES,
               task: str = "binary") -> RawData:
    """CMU-MOSEI sentiment from MultiBench's ``mosei_senti_data.pkl``; options as ``mosi``."""
    return load_affect(path, modalities, task, "mosei")
