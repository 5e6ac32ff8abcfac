"""Kinetics-Sounds (Arandjelovic & Zisserman, ICCV 2017): Kinetics clips of 31 sound classes.

There is no fixed distribution: the clips are user-collected videos (mp4 or any container
PyAV reads) with a video and an audio track, named by a list file of CSV lines
``path,class`` (paths relative to ``raw`` or to the list's folder). A clip's cache name is its
file stem, so stems must be unique. Class i is the i-th of the sorted class names unless a
``classes`` list fixes the order (the cache stores names, so the order can change later).
Clips are decoded once into a cache (:func:`prepare_kinetics_sounds`, or ``mmrelearn
prepare``) and read by :func:`load_kinetics_sounds`; defaults: 3 frames per clip and the
``kinetics_sounds`` spectrogram preset (10 s at 16 kHz, 128 mel bands).
"""
from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any, Mapping, Optional, Sequence, Union


from .audio import SpectrogramConfig, spectrogram_config
from .base import RawData, register_dataset
from .media import ClipSource, cached_clips_data, check_clip_options, check_paths, read_pairs
from .prepare import (PrepareReport, cache_complete, clip_settings, open_cache, prepare_clips,
                      register_preparer)

__all__ = ["read_clip_list", "kinetics_sources", "prepare_kinetics_sounds",
           "load_kinetics_sounds"]

_NAME = "kinetics_sounds"


def read_clip_list(path: Union[str, Path],
                   raw: Optional[Union[str, Path]] = None) -> list[tuple[str, str, str]]:
    """Rows of a ``path,class`` list as (clip stem, video path, class name).

    A relative path is taken under ``raw`` when the file exists there, else under the list's
    folder (where a missing file is reported when the clip is decoded).
    """
    path = Path(path)
    out = []
    for cell, label, _ in read_pairs(path):
        video = Path(cell)
        if not video.is_absolute():
            options = ([Path(raw) / cell] if raw is not None else []) + [path.parent / cell]
            video = next((p for p in options if p.exists()), options[-1])
        out.append((PurePath(cell).stem, str(video), label))
    return out


def _check_classes(classes: Optional[Sequence[str]]) -> Optional[list[str]]:
    if classes is None:
        return None
    names = list(classes) if not isinstance(classes, str) else []
    if not names or len(set(names)) != len(names) or not all(isinstance(c, str) for c in names):
        raise ValueError(f"{_NAME} classes {classes!r}: expected a non-empty list of distinct "
                         f"class names")
    return names


def kinetics_sources(raw: Union[str, Path], list_file: Optional[str] = None,
                     train_list: Optional[str] = None, test_list: Optional[str] = None,
                     classes: Optional[Sequence[str]] = None
                     ) -> tuple[list[ClipSource], list[str]]:
    """The clips named by the given lists (each once, sorted by stem) and the class names."""
    lists = [p for p in (list_file, train_list, test_list) if p is not None]
    if not lists:
        raise ValueError(f"{_NAME}: give list_file (CSV lines path,class), or train_list "
                         f"and test_list, to say which clips to prepare")
    found: dict[str, tuple[str, str, str]] = {}  # stem -> (video, class, list file)
    for lst in lists:
        for stem, video, label in read_clip_list(lst, raw):
            seen = found.setdefault(stem, (video, label, lst))
            if seen[:2] != (video, label):
                raise ValueError(f"{lst}: clip {stem!r} is {video} ({label}) but {seen[2]} "
                                 f"gives {seen[0]} ({seen[1]}); clip file stems must be unique")
    names = _check_classes(classes) or sorted({label for _, label, _ in found.values()})
    unknown = sorted({label for _, label, _ in found.values()} - set(names))
    if unknown:
        raise ValueError(f"{_NAME}: classes {unknown} of {lists} are not in the classes "
                         f"option {names}")
    return [ClipSource(s, v, None, label) for s, (v, label, _) in sorted(found.items())], names


@register_preparer(_NAME)
def prepare_kinetics_sounds(raw: str, cache: str, list_file: Optional[str] = None,
                            train_list: Optional[str] = None, test_list: Optional[str] = None,
                            classes: Optional[Sequence[str]] = None, frames: int = 3,
                            image_size: int = 224,
                            audio: Union[str, Mapping[str, Any], SpectrogramConfig, None] = None,
                            on_error: str = "raise", progress: bool = True) -> PrepareReport:
    """Decode every listed clip (video frames and its own audio track) into ``cache``.

    Args: as :func:`load_kinetics_sounds`.

    Returns:
        The :class:`~mmrelearn.data.prepare.PrepareReport` of the run.
    """
    check_clip_options(_NAME, frames=frames, image_size=image_size, on_error=on_error,
                       progress=progress)
    cfg = spectrogram_config(audio, default=_NAME)
    sources, _ = kinetics_sources(raw, list_file, train_list, test_list, classes)
    settings = clip_settings(_NAME, frames, image_size, cfg)
    return prepare_clips(cache, settings, sources, on_error, progress)


@register_dataset(_NAME)
def load_kinetics_sounds(cache: str, raw: Optional[str] = None, list_file: Optional[str] = None,
                         train_list: Optional[str] = None, test_list: Optional[str] = None,
                         classes: Optional[Sequence[str]] = None,
                         modalities: Sequence[str] = ("audio", "visual"), frames: int = 3,
                         image_size: int = 224,
                         audio: Union[str, Mapping[str, Any], None] = None,
                         audio_noise: Optional[Mapping[str, Any]] = None,
                         on_error: str = "raise", normalize: bool = True,
                         progress: bool = True) -> RawData:
    """Kinetics-Sounds read from a prepared cache.

    Args:
        cache: the cache directory (see :mod:`mmrelearn.data.prepare`).
        raw: folder the list paths are relative to; when given and the cache is missing or
            incomplete, :func:`prepare_kinetics_sounds` runs first (it resumes).
        list_file: CSV lines ``path,class`` of the clips to prepare (with ``raw``).
        train_list, test_list: the official split in the same format; their clips are
            prepared too, and ``build_data`` carves validation from train.
        classes: class names in class order; default the sorted names found in the lists.
        modalities: non-empty subset of "audio" (float32 (F, T) log-mel spectrogram) and
            "visual" (float32 (frames, 3, image_size, image_size)), in this order of outputs.
        frames: frames per clip, evenly spaced (segment centres). Default 3.
        image_size: frames are resized (shorter side) and centre-cropped to this size.
        audio: spectrogram settings: a preset name or a mapping (``preset`` + overrides);
            default the ``kinetics_sounds`` preset.
        audio_noise: ``{"snr_db", "seed" (default 0)}``: white noise on the cached waveform
            of sample i, drawn from ``sample_generator(seed, i)``, before its spectrogram.
        on_error: "raise" on the first clip that cannot be decoded, or "skip" such clips
            (listed in ``<cache>/failed.jsonl`` and left out of the dataset).
        normalize: scale frames to [0, 1], then ImageNet mean/std per channel (else [0, 1]).
        progress: show a progress bar while preparing.

    Returns:
        :class:`RawData` with a lazy dataset, no groups, and ``splits`` when both
        ``train_list`` and ``test_list`` are given.
    """
    noise = check_clip_options(_NAME, frames=frames, image_size=image_size, on_error=on_error,
                               progress=progress, modalities=modalities,
                               audio_noise=audio_noise, normalize=normalize)
    check_paths(_NAME, raw=raw, list_file=list_file)  # the official lists are read below
    cfg = spectrogram_config(audio, default=_NAME)
    names = _check_classes(classes)
    if raw is not None and not cache_complete(cache):
        prepare_kinetics_sounds(raw, cache, list_file, train_list, test_list, names, frames,
                                image_size, cfg, on_error, progress)
    settings = clip_settings(_NAME, frames, image_size, cfg)
    manifest, kept = open_cache(cache, settings, _NAME, on_error)
    found = sorted({c["label"] for c in manifest["clips"]})  # failed clips' labels included
    names = names or found
    if set(found) - set(names):
        raise ValueError(f"{_NAME}: cache {cache} has classes {sorted(set(found) - set(names))}"
                         f" that are not in the classes option {names}")
    return cached_clips_data(cache, manifest, kept, names, modalities=modalities, cfg=cfg,
                             frames=frames, image_size=image_size, normalize=normalize,
                             noise=noise, train_list=train_list, test_list=test_list,
                             groups=False)
