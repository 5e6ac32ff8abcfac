"""CREMA-D (Cao et al., IEEE TAC 2014): 7,442 acted clips of 91 actors, six emotions.

The distribution holds ``AudioWAV/<clip>.wav`` and ``VideoFlash/<clip>.flv`` per clip, named
``<actor>_<sentence>_<emotion>_<level>`` (e.g. ``1001_DFA_ANG_XX``). The emotion is the label
(ANG, DIS, FEA, HAP, NEU, SAD -> classes 0..5); the actor is the group, so ``split_by: group``
keeps every actor in one split. Clips are decoded once into a cache (:func:`prepare_cremad`,
or ``mmrelearn prepare``) and read from it by :func:`load_cremad`. The defaults follow the
CREMA-D setup of OGM-GE (Peng et al., CVPR 2022) that D&R reuses: one frame per clip and the
``crema_d`` spectrogram preset (3 s at 22,050 Hz -> 257 x 188).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union


from .audio import SpectrogramConfig, spectrogram_config
from .base import RawData, register_dataset
from .media import ClipSource, cached_clips_data, check_clip_options, check_paths
from .prepare import (PrepareReport, cache_complete, clip_settings, open_cache, prepare_clips,
                      register_preparer)

__all__ = ["EMOTIONS", "CLIP_PATTERN", "parse_clip_name", "list_cremad_clips",
           "prepare_cremad", "load_cremad"]

log = logging.getLogger(__name__)

#: the six emotions in class order.
EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
#: ``<actor>_<sentence>_<emotion>_<level>``, e.g. 1001_DFA_ANG_XX.
CLIP_PATTERN = re.compile(r"^(?P<actor>[0-9]+)_(?P<sentence>[A-Z]+)_(?P<emotion>[A-Z]{3})_"
                          r"(?P<level>[A-Z]+)$")
_NAME_TEXT = "<actor>_<sentence>_<emotion>_<level> (e.g. 1001_DFA_ANG_XX)"
_AUDIO_DIR, _VIDEO_DIR = "AudioWAV", "VideoFlash"


def parse_clip_name(name: str) -> tuple[str, str]:
    """(actor, emotion) of a clip name; ValueError unless it matches :data:`CLIP_PATTERN` with
    an emotion of :data:`EMOTIONS`."""
    m = CLIP_PATTERN.match(name)
    if m is None or m["emotion"] not in EMOTIONS:
        raise ValueError(f"clip name {name!r}: expected {_NAME_TEXT} with an emotion among "
                         f"{list(EMOTIONS)}")
    return m["actor"], m["emotion"]


def list_cremad_clips(raw: Union[str, Path], on_error: str = "raise") -> list[ClipSource]:
    """Every clip with a WAV or an FLV file under ``raw``, sorted by name.

    A clip with only one of its two files is listed (its decoding then fails, naming the
    missing file). Files whose names do not parse raise ValueError, or are skipped (logged)
    with ``on_error="skip"``.
    """
    raw = Path(raw)
    folders = [raw / _AUDIO_DIR, raw / _VIDEO_DIR]
    if not all(f.is_dir() for f in folders):
        raise FileNotFoundError(f"CREMA-D raw folder {raw}: expected {_AUDIO_DIR}/<clip>.wav "
                                f"and {_VIDEO_DIR}/<clip>.flv; missing "
                                f"{[str(f) for f in folders if not f.is_dir()]}")
    names = sorted({p.stem for p in folders[0].glob("*.wav")}
                   | {p.stem for p in folders[1].glob("*.flv")})
    clips, bad = [], []
    for name in names:
        try:
            actor, emotion = parse_clip_name(name)
        except ValueError as err:
            if on_error == "raise":
                raise ValueError(f"{raw}: {err}") from None
            bad.append(name)
            continue
        clips.append(ClipSource(name, str(folders[1] / f"{name}.flv"),
                                str(folders[0] / f"{name}.wav"), emotion, actor))
    if bad:
        log.warning("cremad: skipped %d file name(s) not of the form %s, e.g. %s", len(bad),
                    _NAME_TEXT, bad[:5])
    if not clips:
        raise ValueError(f"CREMA-D raw folder {raw}: no clip named {_NAME_TEXT}")
    return clips


@register_preparer("cremad")
def prepare_cremad(raw: str, cache: str, frames: int = 1, image_size: int = 224,
                   audio: Union[str, Mapping[str, Any], SpectrogramConfig, None] = None,
                   on_error: str = "raise", progress: bool = True) -> PrepareReport:
    """Decode every CREMA-D clip under ``raw`` into ``cache`` (resumable).

    Args: as :func:`load_cremad`.

    Returns:
        The :class:`~mmrelearn.data.prepare.PrepareReport` of the run.
    """
    check_clip_options("cremad", frames=frames, image_size=image_size, on_error=on_error,
                       progress=progress)
    cfg = spectrogram_config(audio, default="crema_d")
    settings = clip_settings("cremad", frames, image_size, cfg, classes=list(EMOTIONS))
    return prepare_clips(cache, settings, list_cremad_clips(raw, on_error), on_error, progress)


@register_dataset("cremad")
def load_cremad(cache: str, raw: Optional[str] = None,
                modalities: Sequence[str] = ("audio", "visual"), frames: int = 1,
                image_size: int = 224, audio: Union[str, Mapping[str, Any], None] = None,
                train_list: Optional[str] = None, test_list: Optional[str] = None,
                audio_noise: Optional[Mapping[str, Any]] = None, on_error: str = "raise",
                normalize: bool = True, progress: bool = True) -> RawData:
    """CREMA-D read from a prepared cache.

    Args:
        cache: the cache directory (see :mod:`mmrelearn.data.prepare`).
        raw: the CREMA-D folder (``AudioWAV/``, ``VideoFlash/``); when given and the cache
            is missing or incomplete, :func:`prepare_cremad` runs first (it resumes).
        modalities: non-empty subset of "audio" (float32 (F, T) log spectrogram) and "visual"
            (float32 (frames, 3, image_size, image_size)), in this order of outputs.
        frames: frames per clip, evenly spaced (segment centres). Default 1, as OGM-GE.
        image_size: frames are resized (shorter side) and centre-cropped to this size.
        audio: spectrogram settings: a preset name or a mapping (``preset`` + overrides);
            default the ``crema_d`` preset (see :func:`mmrelearn.data.audio.spectrogram_config`).
        train_list, test_list: the official split as CSV lines ``clip,label`` (e.g.
            ``1001_DFA_ANG_XX,ANG``); validation is then carved from train by ``build_data``.
        audio_noise: ``{"snr_db", "seed" (default 0)}``: white noise on the cached waveform
            of sample i, drawn from ``sample_generator(seed, i)``, before its spectrogram.
        on_error: "raise" on the first clip that cannot be decoded, or "skip" such clips
            (listed in ``<cache>/failed.jsonl`` and left out of the dataset).
        normalize: scale frames to [0, 1], then ImageNet mean/std per channel (else [0, 1]).
        progress: show a progress bar while preparing.

    Returns:
        :class:`RawData` with a lazy dataset, six classes (:data:`EMOTIONS`), ``groups`` =
        actor ids, and ``splits`` when both list files are given.
    """
    noise = check_clip_options("cremad", frames=frames, image_size=image_size,
                               on_error=on_error, progress=progress, modalities=modalities,
                               audio_noise=audio_noise, normalize=normalize)
    check_paths("cremad", raw=raw)
    cfg = spectrogram_config(audio, default="crema_d")
    settings = clip_settings("cremad", frames, image_size, cfg, classes=list(EMOTIONS))
    if raw is not None and not cache_complete(cache):
        prepare_cremad(raw, cache, frames, image_size, cfg, on_error, progress)
    manifest, kept = open_cache(cache, settings, "cremad", on_error)
    return cached_clips_data(cache, manifest, kept, EMOTIONS, modalities=modalities, cfg=cfg,
                             frames=frames, image_size=image_size, normalize=normalize,
                             noise=noise, train_list=train_list, test_list=test_list,
                             groups=True)
