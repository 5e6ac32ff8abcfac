"""Audio-visual clips: PyAV decoding, frame sampling, and reading the per-clip cache.

A clip is decoded once by :func:`decode_clip` into ``visual`` uint8 (T, 3, S, S) frames,
``wave`` float32 (n,) at the configured rate and length, and ``audio`` float32 (F, T') log
spectrogram of that wave. :mod:`mmrelearn.data.prepare` writes them into a cache directory
(``<part>/<clip>.npy``, see :data:`CACHE_PARTS`) and checks a cache against the asked
settings; :class:`CachedClipLoader` reads it back as network inputs. PyAV (``av``) is an
optional dependency, imported only when a file is decoded.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .audio import (SpectrogramConfig, add_waveform_noise, conform_wave, load_audio, spectrogram,
                    spectrogram_shape)
from .base import RawData
from .frames import center_square, imagenet_normalize, segment_centres
from .lazy import LazyMultimodalDataset, MediaError
from .transforms import sample_generator

__all__ = ["ClipSource", "cached_clips_data", "resize_center_crop", "read_video_frames",
           "read_video_audio", "decode_clip", "read_pairs", "official_split",
           "check_clip_options", "CachedClipLoader", "CLIP_MODALITIES", "CACHE_PARTS"]

#: the modalities a clip gives, and the arrays cached per clip (``<cache>/<part>/<clip>.npy``).
CLIP_MODALITIES = ("audio", "visual")
CACHE_PARTS = ("visual", "audio", "wave")


@dataclass(frozen=True)
class ClipSource:
    """Where one clip comes from.

    Attributes:
        clip: the clip's name in the cache (file stem, unique within a dataset).
        video: path of the video file.
        audio: path of a WAV file; ``None`` takes the audio track of ``video``.
        label: class name. group: actor/speaker (``None`` when the dataset has none).
    """

    clip: str
    video: str
    audio: Optional[str]
    label: str
    group: Optional[str] = None


def resize_center_crop(image: Any, size: int) -> np.ndarray:
    """:func:`~mmrelearn.data.frames.center_square` of a PIL image as uint8 (3, size, size)."""
    return center_square(image, size, "RGB").transpose(2, 0, 1).copy()  # (S, S, 3) -> (3, S, S)


def _open(path: Union[str, Path]) -> Any:
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "file not found")
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise MediaError(path, f"cannot be read as a media container ({err})") from None


def _decode(path: Union[str, Path], kind: str,
            keep: Optional[set[int]] = None) -> tuple[dict[int, Any], int, Any]:
    """Decode the first ``kind`` ("video"/"audio") stream of a file.

    Returns:
        (index -> frame for the indices in ``keep``, all when ``None``; frames decoded; stream).
    """
    import av

    with _open(path) as container:
        streams = getattr(container.streams, kind)
        if not streams:
            raise MediaError(path, f"no {kind} stream; expected a clip with a {kind} track")
        frames, count = {}, 0
        try:
            for count, frame in enumerate(container.decode(**{kind: 0}), 1):
                if keep is None or count - 1 in keep:
                    frames[count - 1] = frame
        except (av.FFmpegError, OSError) as err:
            raise MediaError(path, f"undecodable {kind} after {count} frame(s) "
                                   f"({err})") from None
        return frames, count, streams[0]


def _declared_frames(path: Union[str, Path]) -> int:
    """The frame count the container states (0 when it does not, as in FLV)."""
    with _open(path) as container:
        return int(container.streams.video[0].frames) if container.streams.video else 0


def read_video_frames(path: Union[str, Path], num_frames: int, size: int) -> Tensor:
    """Decode a clip and keep ``num_frames`` evenly spaced frames (see :func:`~mmrelearn.data.frames.segment_centres`).

    Each chosen frame is resized (shorter side ``size``) and centre-cropped to a square.

    Returns:
        uint8 (num_frames, 3, size, size) RGB.

    Raises:
        MediaError: missing or undecodable file, no video stream, or fewer decodable frames
            than ``num_frames`` (the message gives the count).
    """
    # Only the chosen frames are kept when the container states its frame count; otherwise
    # (FLV), or when the stated count proves wrong, every decoded frame is kept, then chosen.
    declared = _declared_frames(path)
    keep = set(segment_centres(declared, num_frames)) if declared >= num_frames else None
    frames, count, _ = _decode(path, "video", keep)
    if keep is not None and count != declared:
        frames, count, _ = _decode(path, "video")
    if count < num_frames:
        raise MediaError(path, f"only {count} decodable video frame(s); "
                               f"{num_frames} needed (option frames)")
    chosen = [resize_center_crop(frames[k].to_image(), size)
              for k in segment_centres(count, num_frames)]
    return torch.from_numpy(np.stack(chosen))  # (T, 3, size, size)


def read_video_audio(path: Union[str, Path]) -> tuple[Tensor, int]:
    """The audio track of a container as one mono waveform (channels averaged).

    Returns:
        (float32 (n,) samples, sample rate in Hz).

    Raises:
        MediaError: missing or undecodable file, no audio stream, or no audio samples.
    """
    import av

    frames, _, stream = _decode(path, "audio")
    resampler = av.AudioResampler(format="fltp")  # planar float, same layout and rate
    parts = [g.to_ndarray() for f in frames.values() for g in resampler.resample(f)]
    parts += [g.to_ndarray() for g in resampler.resample(None)]  # flush
    if not parts or sum(p.shape[1] for p in parts) == 0:
        raise MediaError(path, "the audio stream holds no samples")
    wave = np.concatenate(parts, axis=1).mean(axis=0)  # (channels, n) -> (n,)
    rate = stream.rate or frames[0].sample_rate
    return torch.from_numpy(wave.astype(np.float32)), int(rate)


def decode_clip(source: ClipSource, frames: int, image_size: int,
                cfg: SpectrogramConfig) -> dict[str, np.ndarray]:
    """Decode one clip into the arrays the cache holds (see :data:`CACHE_PARTS`).

    Returns:
        ``{"visual": uint8 (frames, 3, S, S), "wave": float32 (n,), "audio": float32 (F, T)}``;
        ``CachedClipLoader.inputs(decode_clip(...), i)`` equals a cached load of sample i.
    """
    visual = read_video_frames(source.video, frames, image_size)
    if source.audio is None:
        raw, rate = read_video_audio(source.video)
        wave = conform_wave(raw, rate, cfg, source.video)
    else:
        wave = load_audio(source.audio, cfg)
    wave = wave.float().contiguous()  # (n,)
    return {"visual": visual.numpy(), "wave": wave.numpy(),
            "audio": spectrogram(wave, cfg).numpy()}


# ---------------------------------------------------------------- list files

def read_pairs(path: Union[str, Path]) -> list[tuple[str, str, int]]:
    """Rows ``first,second`` of a two-column CSV list as (first, second, line number).

    Blank lines and a header row ``clip,label`` / ``path,class`` are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file {path} not found; expected CSV lines clip,label")
    rows = []
    with path.open(newline="") as fh:
        for n, row in enumerate(csv.reader(fh), 1):
            cells = [c.strip() for c in row]
            if not any(cells) or (n == 1 and cells in (["clip", "label"], ["path", "class"])):
                continue
            if len(cells) != 2 or not all(cells):
                raise ValueError(f"{path}, line {n}: expected two non-empty cells "
                                 f"(clip or path, class name), got {row!r}")
            rows.append((cells[0], cells[1], n))
    return rows


def official_split(records: Sequence[Mapping[str, Any]], dropped: set[str],
                   train_list: Optional[str], test_list: Optional[str]) -> Optional[dict]:
    """``{"train", "test"}`` index tensors from two list files of ``clip-or-path,label``.

    A row names a clip by the stem of its first cell; rows of ``dropped`` clips (failed to
    decode) are left out. Returns ``None`` when neither file is given.
    """
    if train_list is None and test_list is None:
        return None
    if train_list is None or test_list is None:
        raise ValueError("give both train_list and test_list for an official split, or neither")
    where = {r["clip"]: (i, r["label"]) for i, r in enumerate(records)}
    parts = {}
    for part, path in (("train", train_list), ("test", test_list)):
        idx = set()
        for cell, label, n in read_pairs(path):
            clip = PurePath(cell).stem
            if clip in dropped:
                continue
            if clip not in where:
                raise ValueError(f"{path}, line {n}: clip {clip!r} is not in the cache")
            if label != where[clip][1]:
                raise ValueError(f"{path}, line {n}: clip {clip!r} has label {label!r}, the "
                                 f"cache has {where[clip][1]!r}")
            idx.add(where[clip][0])
        parts[part] = torch.tensor(sorted(idx), dtype=torch.long)
    both = set(parts["train"].tolist()) & set(parts["test"].tolist())
    if both:
        raise ValueError(f"{train_list} and {test_list} share {len(both)} clip(s), e.g. "
                         f"{records[min(both)]['clip']!r}")
    return parts


def check_paths(dataset: str, **paths: Optional[str]) -> None:
    """FileNotFoundError naming the option when a given (not None) path does not exist: a typo
    in ``raw`` must not pass because the cache happens to be complete."""
    for key, path in paths.items():
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{dataset} {key}: {path} does not exist (set it to null "
                                    f"if the prepared cache is all you have)")


def check_clip_options(dataset: str, *, frames: int, image_size: int, on_error: str,
                       progress: bool, modalities: Sequence[str] = CLIP_MODALITIES,
                       audio_noise: Optional[Mapping[str, Any]] = None,
                       normalize: bool = True) -> Optional[tuple[float, int]]:
    """Check a video dataset's prepare/loader options; returns ``audio_noise`` as
    (snr_db, seed), or ``None``. Raises ValueError naming the option at fault."""
    mods = list(modalities) if not isinstance(modalities, str) else []
    if not mods or len(set(mods)) != len(mods) or any(m not in CLIP_MODALITIES for m in mods):
        raise ValueError(f"{dataset} modalities {modalities!r}: expected a non-empty list of "
                         f"distinct names among {list(CLIP_MODALITIES)}")
    for key, value in (("frames", frames), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{dataset} {key}: expected a positive int, got {value!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"{dataset} on_error: expected 'raise' or 'skip', got {on_error!r}")
    for key, value in (("normalize", normalize), ("progress", progress)):
        if not isinstance(value, bool):
            raise ValueError(f"{dataset} {key}: expected true or false, got {value!r}")
    if audio_noise is None:
        return None
    if (not isinstance(audio_noise, Mapping) or set(audio_noise) - {"snr_db", "seed"}
            or "snr_db" not in audio_noise):
        raise ValueError(f"{dataset} audio_noise {audio_noise!r}: expected a mapping with "
                         f"snr_db (required) and seed (default 0)")
    snr, seed = audio_noise["snr_db"], audio_noise.get("seed", 0)
    if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not math.isfinite(snr):
        raise ValueError(f"{dataset} audio_noise.snr_db: expected a number, got {snr!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{dataset} audio_noise.seed: expected a non-negative int, "
                         f"got {seed!r}")
    return float(snr), seed


class CachedClipLoader:
    """Picklable ``load(i)``: sample i's inputs read from a prepared cache.

    ``visual`` is float32 (T, 3, S, S): uint8 / 255, then (x - mean) / std per channel with
    :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD` when ``normalize``. ``audio`` is the cached
    float32 (F, T') spectrogram; with ``noise = (snr_db, seed)`` white noise is added to the
    cached waveform instead (drawn from ``sample_generator(seed, i)``, so sample i gets the
    same noise in every run and method) and the spectrogram is recomputed.

    Args:
        cache: the cache directory. clips: cache name of each sample, in sample order.
        modalities: the modalities returned, in order. cfg: the cache's spectrogram settings.
        normalize: apply the ImageNet statistics. noise: optional (snr_db, seed).
    """

    def __init__(self, cache: Union[str, Path], clips: Sequence[str], modalities: Sequence[str],
                 cfg: SpectrogramConfig, normalize: bool = True,
                 noise: Optional[tuple[float, int]] = None) -> None:
        self.cache, self.clips = Path(cache), list(clips)
        self.modalities, self.cfg = tuple(modalities), cfg
        self.normalize, self.noise = normalize, noise

    def _read(self, part: str, i: int) -> np.ndarray:
        path = self.cache / part / f"{self.clips[i]}.npy"
        try:
            return np.load(path)
        except (OSError, ValueError) as err:
            raise MediaError(path, f"unreadable cache file ({err}); delete it and run "
                                   f"prepare again") from None

    def arrays(self, i: int) -> dict[str, np.ndarray]:
        """The cached arrays sample i needs (``visual``, and ``audio`` or ``wave``)."""
        parts = [("wave" if self.noise else "audio") if m == "audio" else m
                 for m in self.modalities]
        return {p: self._read(p, i) for p in parts}

    def inputs(self, arrays: Mapping[str, np.ndarray], i: int) -> dict[str, Tensor]:
        """Network inputs of sample i from its arrays (read from the cache or decoded)."""
        out = {}
        for m in self.modalities:
            if m == "visual":
                x = torch.from_numpy(np.asarray(arrays["visual"])).float() / 255.0  # (T,3,S,S)
                out[m] = imagenet_normalize(x) if self.normalize else x
            elif self.noise is not None:
                wave = torch.from_numpy(np.asarray(arrays["wave"], dtype=np.float32))  # (n,)
                wave = add_waveform_noise(wave, self.noise[0],
                                          sample_generator(self.noise[1], i))
                out[m] = spectrogram(wave, self.cfg)  # (F, T')
            else:
                out[m] = torch.from_numpy(np.array(arrays["audio"], dtype=np.float32))
        return out

    def __call__(self, i: int) -> dict[str, Tensor]:
        return self.inputs(self.arrays(i), i)


def cached_clips_data(cache: Union[str, Path], manifest: Mapping[str, Any],
                      kept: Sequence[Mapping[str, Any]], class_names: Sequence[str], *,
                      modalities: Sequence[str], cfg: SpectrogramConfig, frames: int,
                      image_size: int, normalize: bool, noise: Optional[tuple[float, int]],
                      train_list: Optional[str], test_list: Optional[str],
                      groups: bool) -> RawData:
    """The :class:`RawData` of the clips ``kept`` of an opened cache (``open_cache``).

    Labels index ``class_names``; ``groups`` takes each clip's group (e.g. the actor); clips
    of the manifest that are not kept (failed to decode) are left out of the official split.
    """
    dropped = {c["clip"] for c in manifest["clips"]} - {c["clip"] for c in kept}
    labels = torch.tensor([list(class_names).index(c["label"]) for c in kept], dtype=torch.long)
    loader = CachedClipLoader(cache, [c["clip"] for c in kept], modalities, cfg, normalize,
                              noise)
    shapes = {m: spectrogram_shape(cfg) if m == "audio" else (frames, 3, image_size, image_size)
              for m in modalities}
    return RawData(inputs=None, dataset=LazyMultimodalDataset(loader, labels, shapes),
                   labels=labels, num_classes=len(class_names), class_names=list(class_names),
                   groups=[c["group"] for c in kept] if groups else None,
                   splits=official_split(kept, dropped, train_list, test_list))
