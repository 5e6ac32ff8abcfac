"""The ``prepare`` step: decode every clip of a video dataset once into a cache directory.

A cache holds ``manifest.json`` (the settings and the clips, written first), one array per
clip and part (``visual/<clip>.npy`` uint8 (T, 3, S, S), ``audio/<clip>.npy`` float32 (F, T),
``wave/<clip>.npy`` float32 (n,)) and ``failed.jsonl`` (clips skipped with ``on_error:
skip``). Every file is written under a temporary name and moved into place with
``os.replace``, so an interrupted prepare never leaves a partial file under a final name; a
rerun removes the temporaries and decodes only the clips not cached yet (run one prepare per
cache at a time: a second one would remove the first one's temporaries). Dataset modules
register their prepare function with :func:`register_preparer`; :func:`prepare_dataset` runs
one from a ``data`` config section.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
from tqdm.auto import tqdm

from ..train.checkpoint import atomic_write_text
from . import media
from .audio import SpectrogramConfig
from .base import DATASETS, SPLIT_KEYS
from .lazy import MediaError
from .media import CACHE_PARTS, ClipSource

__all__ = ["PrepareReport", "PREPARERS", "register_preparer", "prepare_dataset",
           "prepare_clips", "clip_settings", "save_array", "remove_temporaries",
           "read_manifest", "check_settings", "read_failed", "clip_complete", "cache_complete",
           "open_cache", "MANIFEST", "FAILED", "CACHE_FORMAT"]

log = logging.getLogger(__name__)

MANIFEST, FAILED = "manifest.json", "failed.jsonl"
#: version of the cache layout, stored in (and checked against) every manifest.
CACHE_FORMAT = 1
_TMP_GLOB = ".*.tmp"  # temporaries: ".<final name>.<random>.tmp" in the final file's folder


@dataclass
class PrepareReport:
    """What one prepare run did.

    Attributes:
        dataset, cache: the dataset name and cache directory. clips: clips listed.
        decoded: clips decoded now. cached: clips found already cached (not decoded).
        skipped: clips that failed (``on_error: skip``; listed in ``failed.jsonl``).
        removed_temporaries: stale temporary files removed. seconds: wall time.
    """

    dataset: str
    cache: str
    clips: int
    decoded: int
    cached: int
    skipped: int
    removed_temporaries: int
    seconds: float


#: dataset name -> ``fn(raw, cache, **options) -> PrepareReport``; see :func:`register_preparer`.
PREPARERS: dict[str, Callable[..., PrepareReport]] = {}


def register_preparer(name: str) -> Callable[[Callable[..., PrepareReport]],
                                             Callable[..., PrepareReport]]:
    """Decorator: record the prepare function of dataset ``name`` (returned unchanged)."""

    def deco(fn: Callable[..., PrepareReport]) -> Callable[..., PrepareReport]:
        if name in PREPARERS:
            raise ValueError(f"a prepare step for {name!r} is already registered")
        PREPARERS[name] = fn
        return fn

    return deco


def clip_settings(dataset: str, frames: int, image_size: int, cfg: SpectrogramConfig,
                  **extra: Any) -> dict[str, Any]:
    """The settings a cache is made with (stored in its manifest and checked on reuse)."""
    return {"format": CACHE_FORMAT, "dataset": dataset, "frames": frames,
            "image_size": image_size, "audio": dataclasses.asdict(cfg), **extra}


# ---------------------------------------------------------------- cache reading

def read_manifest(cache: Union[str, Path]) -> Optional[dict[str, Any]]:
    """The cache's ``manifest.json`` (settings and clips), or ``None`` when there is none."""
    path = Path(cache) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete the cache and prepare it "
                         f"again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("clips"), list):
        raise ValueError(f"{path}: not a clip-cache manifest (expected a mapping with a "
                         f"'clips' list)")
    return manifest


def _diff(found: Any, wanted: Any, key: str) -> list[str]:
    if isinstance(found, dict) and isinstance(wanted, dict):
        return [d for k in sorted(set(found) | set(wanted))
                for d in _diff(found.get(k), wanted.get(k), f"{key}.{k}")]
    if key == "clips" and found != wanted:
        old, new = {c["clip"] for c in found or []}, {c["clip"] for c in wanted}
        return [(f"clips (the cache has {len(old)}, now {len(new)}: {len(new - old)} new, "
                 f"{len(old - new)} gone, or other labels/groups)")]
    return [] if found == wanted else [f"{key} (cache {found!r}, asked {wanted!r})"]


def check_settings(cache: Union[str, Path], manifest: Mapping[str, Any],
                   wanted: Mapping[str, Any]) -> None:
    """Raise ValueError naming every key of ``wanted`` whose value differs in ``manifest``."""
    diffs = [d for k in wanted for d in _diff(manifest.get(k), wanted[k], k)]
    if diffs:
        raise ValueError(f"cache {cache} was prepared with other settings: {'; '.join(diffs)}. "
                         f"Use a new cache directory for these settings (or the cache's own)")


def read_failed(cache: Union[str, Path]) -> dict[str, dict[str, str]]:
    """clip -> ``{"clip", "file", "reason"}`` from the cache's ``failed.jsonl``."""
    path = Path(cache) / FAILED
    if not path.is_file():
        return {}
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rec = json.loads(line) if line.strip() else None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {n}: not a JSON line ({err})") from None
        if rec is not None and not (isinstance(rec, dict) and "clip" in rec):
            raise ValueError(f"{path}, line {n}: expected a JSON object with a 'clip' key")
        if rec is not None:
            out[rec["clip"]] = rec
    return out


def clip_complete(cache: Union[str, Path], clip: str) -> bool:
    """Whether every cached array of ``clip`` (:data:`CACHE_PARTS`) exists."""
    return all((Path(cache) / part / f"{clip}.npy").is_file() for part in CACHE_PARTS)


def cache_complete(cache: Union[str, Path]) -> bool:
    """A manifest exists and each of its clips is cached or recorded as failed."""
    manifest = read_manifest(cache)
    if manifest is None:
        return False
    failed = read_failed(cache)
    return all(c["clip"] in failed or clip_complete(cache, c["clip"]) for c in manifest["clips"])


def open_cache(cache: Union[str, Path], settings: Mapping[str, Any], dataset: str,
               on_error: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check a prepared cache; returns (manifest, records of the clips to use).

    Raises:
        FileNotFoundError: no manifest. ValueError: other settings, or clips not prepared.
        MediaError: a clip failed to decode and ``on_error`` is "raise".
    """
    manifest = read_manifest(cache)
    if manifest is None:
        raise FileNotFoundError(f"{dataset}: {Path(cache) / MANIFEST} not found; prepare the "
                                f"cache first (mmrelearn prepare), or set the raw option")
    check_settings(cache, manifest, settings)
    failed = read_failed(cache)
    if failed and on_error == "raise":
        rec = next(iter(failed.values()))
        raise MediaError(rec["file"], f"{rec['reason']} (clip {rec['clip']}, one of "
                                      f"{len(failed)} listed in {Path(cache) / FAILED}); fix it "
                                      f"and prepare again, or set on_error: skip")
    kept = [c for c in manifest["clips"] if c["clip"] not in failed]
    missing = [c["clip"] for c in kept if not clip_complete(cache, c["clip"])]
    if missing:
        raise ValueError(f"{dataset}: cache {cache} is incomplete, {len(missing)} of "
                         f"{len(kept)} clips not prepared (e.g. {missing[:3]}); run prepare "
                         f"again or set the raw option to finish it")
    if failed:
        log.warning("%s: leaving out %d clip(s) that failed to decode (see %s)", dataset,
                    len(failed), Path(cache) / FAILED)
    return manifest, kept


# ---------------------------------------------------------------- cache writing

def save_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary file beside ``path``, then ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # No fsync (it would dominate the time of small files): the rename protects against
        # an interrupted process; after a power cut a file may be empty, and the loader then
        # names it as unreadable.
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_temporaries(cache: Union[str, Path]) -> int:
    """Delete temporaries left by an interrupted prepare; returns how many."""
    cache, n = Path(cache), 0
    for folder in (cache, *(cache / part for part in CACHE_PARTS)):
        for tmp in (folder.glob(_TMP_GLOB) if folder.is_dir() else ()):
            tmp.unlink()
            n += 1
    return n


def _write_failed(cache: Path, failed: Mapping[str, dict[str, str]]) -> None:
    atomic_write_text("".join(json.dumps(r) + "\n" for r in failed.values()), cache / FAILED)


def _start(cache: Path, settings: Mapping[str, Any],
           sources: Sequence[ClipSource]) -> dict[str, Any]:
    """Write the manifest (or check it against ``settings``); returns it."""
    names = [s.clip for s in sources]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"clip names must be unique; repeated: {dup[:5]}")
    manifest = {**settings, "clips": [{"clip": s.clip, "label": s.label, "group": s.group}
                                      for s in sources]}
    cache.mkdir(parents=True, exist_ok=True)
    found = read_manifest(cache)
    if found is None:
        atomic_write_text(json.dumps(manifest, indent=1), cache / MANIFEST)
    else:
        check_settings(cache, found, manifest)
    return manifest


def prepare_clips(cache: Union[str, Path], settings: Mapping[str, Any],
                  sources: Sequence[ClipSource], on_error: str = "raise",
                  progress: bool = True) -> PrepareReport:
    """Decode every clip not cached yet (:func:`mmrelearn.data.media.decode_clip`).

    Args:
        cache: the cache directory (created if needed).
        settings: :func:`clip_settings` of the cache; an existing manifest must agree.
        sources: the clips, in dataset order.
        on_error: "raise" the first :class:`MediaError`, or "skip" the clip (recorded in
            ``failed.jsonl``; a later prepare retries it).
        progress: show a progress bar.
    """
    start, cache = time.perf_counter(), Path(cache)
    _start(cache, settings, sources)
    removed = remove_temporaries(cache)
    cfg = SpectrogramConfig(**settings["audio"])
    failed = read_failed(cache)
    decoded = cached = skipped = 0
    bar = tqdm(sources, desc=f"prepare {settings['dataset']}", unit="clip", disable=not progress)
    for src in bar:
        if clip_complete(cache, src.clip):
            cached += 1
        else:
            try:
                arrays = media.decode_clip(src, settings["frames"], settings["image_size"], cfg)
            except MediaError as err:
                if on_error == "raise":
                    raise
                failed[src.clip] = {"clip": src.clip, "file": err.path, "reason": err.problem}
                _write_failed(cache, failed)
                skipped += 1
                continue
            for part in CACHE_PARTS:
                save_array(cache / part / f"{src.clip}.npy", arrays[part])
            decoded += 1
        if failed.pop(src.clip, None) is not None:  # failed before, cached now
            _write_failed(cache, failed)
    report = PrepareReport(settings["dataset"], str(cache), len(sources), decoded, cached,
                           skipped, removed, time.perf_counter() - start)
    log.info("prepare %s into %s: %d decoded, %d already cached, %d skipped (%.1f s)",
             report.dataset, cache, decoded, cached, skipped, report.seconds)
    return report


def prepare_dataset(name: str, options: Mapping[str, Any]) -> PrepareReport:
    """Run dataset ``name``'s prepare step with the options of a ``data`` config section.

    Keys used only by the loader or by ``build_data`` (``val_fraction``, ``split_by``,
    ``noise``, ``audio_noise``, ``normalize``, ...) are ignored; ``raw`` and ``cache`` are
    required.

    Raises:
        ValueError: no prepare step for ``name``, an unknown key (named), or no raw/cache.
    """
    if name not in PREPARERS:
        raise ValueError(f"dataset {name!r} has no prepare step; datasets with one: "
                         f"{sorted(PREPARERS)}")
    opts = dict(options)
    if opts.pop("name", name) != name:
        raise ValueError(f"prepare {name}: options name {options['name']!r} differs")
    fn = PREPARERS[name]
    own = set(inspect.signature(fn).parameters)
    loader = set(inspect.signature(DATASETS[name]).parameters) if name in DATASETS else set()
    unknown = sorted(set(opts) - own - loader - set(SPLIT_KEYS))
    if unknown:
        raise ValueError(f"prepare {name}: unknown option(s) {unknown}; valid options: "
                         f"{sorted(own | loader | set(SPLIT_KEYS))}")
    for key, what in (("raw", "the folder of the raw files"), ("cache", "the cache folder")):
        if opts.get(key) is None:
            raise ValueError(f"prepare {name}: option {key!r} is not set; give {what} "
                             f"(data.{key}, e.g. --set data.{key}=/path)")
    return fn(**{k: v for k, v in opts.items() if k in own})
