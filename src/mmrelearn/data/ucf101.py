"""UCF-101 actions as two modalities, RGB frames and TV-L1 optical flow, on the official splits.

Layout under ``root``, that of the frames published with the two-stream fusion code of
Feichtenhofer et al. (CVPR 2016; archives ``ucf101_jpegs_256``, ``ucf101_tvl1_flow``)::

    ucfTrainTestlist/classInd.txt          "1 ApplyEyeMakeup" ... "101 YoYo"  (numbered from 1)
    ucfTrainTestlist/trainlist0{1,2,3}.txt "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    ucfTrainTestlist/testlist0{1,2,3}.txt  "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"
    jpegs_256/v_ApplyEyeMakeup_g08_c01/frame000001.jpg ...
    tvl1_flow/{u,v}/v_ApplyEyeMakeup_g08_c01/frame000001.jpg ...  (horizontal, vertical flow)

Test lists have no class number: the class is the line's folder. Flow JPEGs are grey, 128 = no
motion; flow frame i is the motion from RGB frame i to i + 1 (one flow frame fewer). Video
``v_<Class>_gNN_cMM`` is clip MM of group NN (same actors); each split tests 7 of the 25 groups
(split 1: groups 1-7) and trains on the others, so no group is in both parts.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import re
from pathlib import Path, PurePosixPath
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .base import RawData, register_dataset
from .frames import center_square, imagenet_normalize, segment_centres
from .lazy import LazyMultimodalDataset, MediaError

__all__ = ["load_ucf101", "UCF101Frames", "ListEntry", "read_class_index", "read_split_list",
           "list_frames", "flow_indices", "read_frame", "MODALITIES"]

log = logging.getLogger(__name__)

MODALITIES = ("rgb", "flow")
_ON_ERROR = ("raise", "skip")
_VIDEO = re.compile(r"^v_(?P<cls>.+)_g(?P<group>\d+)_c(?P<clip>\d+)$")
_NUMBER = re.compile(r"\d+")


class ListEntry(NamedTuple):
    """One line of an official split list: ``<folder>/<video>.avi[ <number>]``."""
    path: Path  # the list file
    line: int  # 1-based line number
    folder: str  # class folder, e.g. "ApplyEyeMakeup"
    video: str  # file stem, e.g. "v_ApplyEyeMakeup_g08_c01"
    number: Optional[int]  # 1-based class number (training lists only)


def read_class_index(path: Path) -> list[str]:
    """Class names from ``classInd.txt`` (lines ``<k> <Name>``, k = 1, 2, ... in order)."""
    if not path.is_file():
        raise FileNotFoundError(f"UCF-101 class index {path} not found; expected lines "
                                f"'<number> <ClassName>' numbered from 1")
    names: list[str] = []
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        parts = text.split()
        if parts and (len(parts) != 2 or parts[0] != str(len(names) + 1)):
            raise ValueError(f"{path}, line {line}: expected '{len(names) + 1} <ClassName>', "
                             f"got {text!r}")
        names += parts[1:]
    lowered = [n.lower() for n in names]
    if not names or len(set(lowered)) != len(names):
        raise ValueError(f"{path}: expected distinct class names (case aside), got {names}")
    return names


def read_split_list(path: Path, labelled: bool) -> list[ListEntry]:
    """Entries of a ``trainlist0N.txt`` (``labelled``: a class number ends each line) or a
    ``testlist0N.txt`` (the number, when present, is checked like a training one)."""
    form = "'<Class>/v_<Class>_gNN_cMM.avi" + (" <number>'" if labelled else "'")
    if not path.is_file():
        raise FileNotFoundError(f"UCF-101 split list {path} not found; expected lines {form}")
    entries, seen = [], {}
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        parts = text.split()
        if not parts:
            continue
        where = parts[0].split("/")
        video = PurePosixPath(parts[0]).stem
        ok = len(parts) == 2 if labelled else len(parts) in (1, 2)
        if not ok or len(where) != 2 or not _VIDEO.match(video) or \
                (len(parts) == 2 and not parts[1].isdigit()):
            raise ValueError(f"{path}, line {line}: expected {form}, got {text!r}")
        if video in seen:
            raise ValueError(f"{path}: video {video} on lines {seen[video]} and {line}")
        seen[video] = line
        number = int(parts[1]) if len(parts) == 2 else None
        entries.append(ListEntry(path, line, where[0], video, number))
    return entries


def list_frames(folder: Path, pattern: str = "*.jpg") -> list[str]:
    """Names of the files in ``folder`` matching ``pattern``, in frame order: by the last number
    in the name (so ``img_9.jpg`` comes before ``img_10.jpg``), then by name."""
    with os.scandir(folder) as it:
        names = [e.name for e in it if e.is_file() and fnmatch.fnmatchcase(e.name, pattern)]

    def key(name: str) -> tuple[int, str]:
        numbers = _NUMBER.findall(name)
        return (int(numbers[-1]) if numbers else -1, name)

    return sorted(names, key=key)


def flow_indices(positions: Sequence[int], stack: int, num_flow: int) -> list[int]:
    """Flow frames p, p+1, ..., p+L-1 of every position p, clamped to ``num_flow - 1`` (the last
    RGB frame has no flow frame after it)."""
    return [min(p + j, num_flow - 1) for p in positions for j in range(stack)]


def read_frame(path: str, mode: str, size: int) -> np.ndarray:
    """One image as uint8 (size, size[, 3]) for mode "L" ("RGB"): shorter side resized to
    ``size`` (bilinear), centre square cropped. MediaError if missing, truncated or no image."""
    try:
        with Image.open(path) as img:
            return center_square(img, size, mode)
    except (OSError, ValueError) as err:
        raise MediaError(path, f"unreadable frame ({err})") from None


class UCF101Frames:
    """Picklable ``load(i)``: reads the sampled JPEGs of video i with Pillow.

    ``rgb[i]`` holds video i's T sampled RGB files, ``flow[i]`` its T * L (u, v) file pairs,
    stack after stack; the other arguments are those of :func:`load_ucf101`.
    """

    def __init__(self, modalities: Sequence[str], rgb: list[tuple[str, ...]],
                 flow: list[tuple[tuple[str, str], ...]], image_size: int, frames: int,
                 flow_stack: int = 1, flow_channels: int = 2, normalize: bool = True) -> None:
        self.modalities, self.rgb, self.flow = tuple(modalities), rgb, flow
        self.size, self.frames, self.stack = image_size, frames, flow_stack
        self.channels, self.normalize = flow_channels, normalize

    def __call__(self, i: int) -> dict[str, Tensor]:
        read = {"rgb": self._rgb, "flow": self._flow}
        return {m: read[m](i) for m in self.modalities}

    def _rgb(self, i: int) -> Tensor:
        pixels = np.stack([read_frame(f, "RGB", self.size) for f in self.rgb[i]])  # (T, S, S, 3)
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, S, S)
        return imagenet_normalize(x) if self.normalize else x

    def _flow(self, i: int) -> Tensor:
        pixels = np.stack([[read_frame(u, "L", self.size), read_frame(v, "L", self.size)]
                           for u, v in self.flow[i]])  # (T*L, 2, S, S)
        x = (torch.from_numpy(pixels).float() - 128.0) / 128.0  # 0 = no motion, in [-1, 1)
        if self.channels == 3:
            # (u, v, |flow|): three channels, so a stem made for RGB takes a pair unchanged
            x = torch.cat([x, x.pow(2).sum(dim=1, keepdim=True).sqrt()], dim=1)
        # (T*L, C, S, S) -> (T, L*C, S, S): channels u_1, v_1[, m_1], u_2, ...
        return x.reshape(self.frames, self.stack * self.channels, self.size, self.size)


class _Folder:
    """The sub-folders of one directory, found by exact name or else ignoring case."""

    def __init__(self, path: Path, what: str) -> None:
        if not path.is_dir():
            raise FileNotFoundError(f"UCF-101 {what} directory {path} not found; expected one "
                                    f"folder of JPEG frames per video")
        with os.scandir(path) as it:
            names = sorted(e.name for e in it if e.is_dir())
        self.path, self.what, self.exact = path, what, set(names)
        self.lower = {n.lower(): n for n in reversed(names)}  # first name wins

    def find(self, video: str) -> Path:
        # Some frame archives name folders in another case than the lists do
        # (v_HandstandPushups_* for the listed v_HandStandPushups_*).
        name = video if video in self.exact else self.lower.get(video.lower())
        if name is None:
            raise MediaError(self.path / video, f"missing {self.what} folder of video {video}")
        return self.path / name


def _frames_of(folder: Path, pattern: str, need: int, why: str) -> list[str]:
    names = list_frames(folder, pattern)
    if len(names) < need:
        raise MediaError(folder, f"{len(names)} frame(s) matching {pattern!r}, fewer than the "
                                 f"{need} needed ({why})")
    return names


def _plan(video: str, dirs: dict[str, _Folder], frames: int, stack: int, pattern: str
          ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Check one video's folders; return its sampled RGB files and (u, v) flow file pairs."""
    rgb: tuple[str, ...] = ()
    flow: tuple[tuple[str, str], ...] = ()
    positions: list[int] = []
    if "rgb" in dirs:
        folder = dirs["rgb"].find(video)
        names = _frames_of(folder, pattern, frames, f"frames={frames}")
        positions = segment_centres(len(names), frames)
        rgb = tuple(str(folder / names[p]) for p in positions)
    if "u" in dirs:
        fu, fv = dirs["u"].find(video), dirs["v"].find(video)
        # the usual one flow frame fewer than RGB frames is enough when RGB sets the positions
        need, why = max(stack, frames - bool(rgb)), f"frames={frames}, flow_stack={stack}"
        us, vs = _frames_of(fu, pattern, need, why), _frames_of(fv, pattern, need, why)
        if len(us) != len(vs):
            raise MediaError(fv, f"{len(vs)} flow frames, but {fu} has {len(us)}")
        # with RGB, flow follows the RGB frames' positions so both show the same moments
        positions = positions or segment_centres(len(us), frames)
        flow = tuple((str(fu / us[k]), str(fv / vs[k]))
                     for k in flow_indices(positions, stack, len(us)))
    return rgb, flow


def _label(entry: ListEntry, lookup: dict[str, int]) -> int:
    # Names are matched ignoring case: the official files spell some differently
    # (classInd's HandstandPushups holds videos v_HandStandPushups_*).
    label = lookup.get(entry.folder.lower())
    if label is None:
        raise MediaError(entry.path, f"line {entry.line}: unknown class {entry.folder!r} "
                                     f"(not in classInd.txt)")
    if entry.number is not None and entry.number != label + 1:
        raise MediaError(entry.path, f"line {entry.line}: class number {entry.number}, but "
                                     f"{entry.folder} is class {label + 1} in classInd.txt")
    return label


def _select(entries: list[ListEntry], lookup: dict[str, int], dirs: dict[str, _Folder],
            opts: dict, problems: list[str]) -> list[tuple[ListEntry, int, tuple, tuple]]:
    """The usable videos of one list (at most ``max_per_class`` per class), in list order."""
    cap = opts["max_per_class"]
    order = entries if cap is None else sorted(entries, key=lambda e: e.video)
    taken: dict[int, int] = {}
    chosen = {}
    for e in order:
        try:
            label = _label(e, lookup)
            if cap is not None and taken.get(label, 0) >= cap:
                continue
            plan = _plan(e.video, dirs, opts["frames"], opts["flow_stack"], opts["pattern"])
        except MediaError as err:
            if opts["on_error"] == "raise":
                raise
            problems.append(f"{e.video} ({err})")
            continue
        taken[label] = taken.get(label, 0) + 1
        chosen[e.video] = (e, label, *plan)
    return [chosen[e.video] for e in entries if e.video in chosen]


def _check(split: int, modalities: Sequence[str], ints: dict[str, Optional[int]],
           flow_channels: int, on_error: str) -> None:
    if isinstance(split, bool) or split not in (1, 2, 3):
        raise ValueError(f"ucf101 split: expected 1, 2 or 3, got {split!r}")
    mods = list(modalities)
    if not mods or len(set(mods)) != len(mods) or any(m not in MODALITIES for m in mods):
        raise ValueError(f"ucf101 modalities {mods}: each must be one of {list(MODALITIES)}, "
                         f"non-empty and without repeats")
    for key, value in ints.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"ucf101 {key}: expected a positive int, got {value!r}")
    if flow_channels not in (2, 3) or isinstance(flow_channels, bool):
        raise ValueError(f"ucf101 flow_channels: expected 2 or 3, got {flow_channels!r}")
    if on_error not in _ON_ERROR:
        raise ValueError(f"ucf101 on_error: expected one of {list(_ON_ERROR)}, got {on_error!r}")


def _read_lists(lists: Path, split: int) -> tuple[list[str], list[list[ListEntry]]]:
    classes = read_class_index(lists / "classInd.txt")
    parts = [read_split_list(lists / f"trainlist0{split}.txt", labelled=True),
             read_split_list(lists / f"testlist0{split}.txt", labelled=False)]
    both = sorted({e.video for e in parts[0]} & {e.video for e in parts[1]})
    if both:
        raise ValueError(f"{lists}: video(s) {both[:5]} in both trainlist0{split}.txt and "
                         f"testlist0{split}.txt")
    return classes, parts


def _open_dirs(base: Path, rgb_dir: str, flow_dir: str, modalities: Sequence[str]
               ) -> dict[str, _Folder]:
    dirs = {"rgb": _Folder(base / rgb_dir, "RGB")} if "rgb" in modalities else {}
    if "flow" in modalities:
        dirs.update(u=_Folder(base / flow_dir / "u", "flow u"),
                    v=_Folder(base / flow_dir / "v", "flow v"))
    return dirs


@register_dataset("ucf101")
def load_ucf101(root: str, rgb_dir: str = "jpegs_256", flow_dir: str = "tvl1_flow",
                list_dir: str = "ucfTrainTestlist", split: int = 1,
                modalities: Sequence[str] = ("rgb", "flow"), frames: int = 3,
                image_size: int = 224, flow_stack: int = 1, flow_channels: int = 2,
                frame_pattern: str = "*.jpg", on_error: str = "raise",
                max_per_class: Optional[int] = None, normalize: bool = True) -> RawData:
    """UCF-101 videos of one official split as RGB and optical-flow clips read on access.

    A video gives T = ``frames`` positions, the centre frames of T equal segments (TSN's
    deterministic test-time sampling). "rgb" is (T, 3, S, S) float32: shorter side resized to
    S = ``image_size``, centre square, / 255, ImageNet mean/std. "flow" is (T, C * L, S, S):
    per position the L = ``flow_stack`` consecutive (u, v) pairs as (pixel - 128) / 128, 0 being
    no motion. C = 2 follows the UCF-101 setup of the balanced-learning benchmark of OGM-GE's
    authors (GeWu-Lab BalanceBenchmark, ucf101_dataset.py: 3 frames of (u, v), a ResNet-18 with
    a 2-channel first conv; it scales pixels to [0, 1] rather than centring them).

    Args:
        root: directory holding ``list_dir`` (and, by default, the frame folders).
        rgb_dir: folder of per-video RGB frame folders (relative paths are under ``root``).
        flow_dir: folder holding ``u/`` and ``v/``, each with per-video flow frame folders.
        list_dir: folder of classInd.txt, trainlist0N.txt and testlist0N.txt.
        split: official split N in 1..3: train = trainlist0N, test = testlist0N (build_data
            carves val from train, never from test).
        modalities: among "rgb" and "flow", in the order returned.
        frames: T, positions sampled per video.
        image_size: S, side of the square crops.
        flow_stack: L, consecutive flow pairs per position; indices past the last flow frame
            are clamped to it. With RGB loaded the positions are those of the RGB frames.
        flow_channels: 2 for (u, v) per pair; 3 for (u, v, sqrt(u^2 + v^2)), so that a stem
            made for RGB takes a pair (L = 1) unchanged.
        frame_pattern: glob of frame file names, ordered by the last number in the name.
        on_error: "raise" stops at the first unusable video (unknown class, missing folder,
            fewer frames than ``frames`` or ``flow_stack``); "skip" leaves it out and logs the
            count and the first names. A corrupt JPEG raises MediaError when it is read.
        max_per_class: at most this many usable videos per class of each list, the first by
            sorted name (quick runs); None keeps all.
        normalize: ImageNet mean/std on RGB (else RGB is in [0, 1]).

    Returns:
        :class:`RawData` with a lazy dataset (train-list videos, then test-list ones, in list
        order), 0-based labels from classInd.txt, groups "gNN" and the official split.
    """
    _check(split, modalities, {"frames": frames, "image_size": image_size, "flow_stack":
                               flow_stack, "max_per_class": max_per_class}, flow_channels,
           on_error)
    if not Path(root).is_dir():
        raise FileNotFoundError(f"ucf101 root {root} is not a directory; expected the folder "
                                f"holding {list_dir}/ (and the frame folders)")
    lists = Path(root) / list_dir
    classes, parts = _read_lists(lists, split)
    dirs = _open_dirs(Path(root), rgb_dir, flow_dir, modalities)
    opts = {"frames": frames, "flow_stack": flow_stack, "pattern": frame_pattern,
            "max_per_class": max_per_class, "on_error": on_error}
    lookup, problems = {c.lower(): k for k, c in enumerate(classes)}, []
    train, test = (_select(p, lookup, dirs, opts, problems) for p in parts)
    if problems:
        log.warning("ucf101: left out %d video(s) (on_error=skip), e.g. %s", len(problems),
                    "; ".join(problems[:5]))
    if not train or not test:
        raise ValueError(f"ucf101: no usable video in the {'train' if not train else 'test'} "
                         f"list of split {split} in {lists}")
    videos = train + test
    load = UCF101Frames(modalities, [v[2] for v in videos], [v[3] for v in videos], image_size,
                        frames, flow_stack, flow_channels, normalize)
    shapes = {"rgb": (frames, 3, image_size, image_size),
              "flow": (frames, flow_channels * flow_stack, image_size, image_size)}
    labels = torch.tensor([v[1] for v in videos], dtype=torch.long)
    dataset = LazyMultimodalDataset(load, labels, {m: shapes[m] for m in modalities})
    groups = ["g" + _VIDEO.match(v[0].video).group("group") for v in videos]
    splits = {"train": torch.arange(len(train)), "test": torch.arange(len(train), len(videos))}
    return RawData(None, labels, len(classes), classes, dataset=dataset, groups=groups,
                   splits=splits)
