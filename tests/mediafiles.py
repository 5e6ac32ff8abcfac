"""Tiny media files in the real formats of CREMA-D, Kinetics-Sounds and UCF-101, for tests."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from PIL import Image

#: CREMA-D emotion codes in class order.
EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
ACTORS = ("1001", "1002", "1003")
#: 12 clips: actor k gets four emotions starting at 4k, so all six appear.
CREMAD_CLIPS = [f"{a}_DFA_{EMOTIONS[(4 * k + j) % 6]}_XX" for k, a in enumerate(ACTORS)
                for j in range(4)]
#: Kinetics-Sounds-like (stem, class): six clips of three classes.
KS_CLIPS = [("a1", "dog barking"), ("a2", "dog barking"), ("b1", "playing drums"),
            ("b2", "playing drums"), ("c1", "bird chirping"), ("c2", "bird chirping")]

RGB_LEVELS = [20, 40, 60, 80, 100, 120]  # RGB frame k (0-based) is solid grey RGB_LEVELS[k]
U_LEVELS = [128, 148, 168, 188, 255]  # flow frame k: u and v grey levels
V_LEVELS = [128, 108, 88, 68, 0]
CLASSES = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
# (folder, video, class number) in list order; c02 is listed before c01 in the first class
TRAIN = [("ApplyEyeMakeup", "v_ApplyEyeMakeup_g08_c02", 1),
         ("ApplyEyeMakeup", "v_ApplyEyeMakeup_g08_c01", 1),
         ("HandstandPushups", "v_HandStandPushups_g08_c01", 2),
         ("HandstandPushups", "v_HandStandPushups_g08_c02", 2),
         ("YoYo", "v_YoYo_g08_c01", 3), ("YoYo", "v_YoYo_g08_c02", 3)]
# the official files' case mismatch: folder HandStandPushups vs classInd's HandstandPushups
TEST = [("ApplyEyeMakeup", "v_ApplyEyeMakeup_g01_c01"),
        ("HandStandPushups", "v_HandStandPushups_g01_c01"), ("YoYo", "v_YoYo_g01_c01")]


def _av():
    import av  # optional dependency; callers skip without it

    return av


def write_flv(path, colour, n_frames=5):
    with _av().open(str(path), "w") as out:
        video = out.add_stream("flv", rate=10)  # Sorenson H.263, CREMA-D's VideoFlash codec
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        for _ in range(n_frames):
            img = np.full((24, 32, 3), colour, np.uint8)
            out.mux(video.encode(_av().VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(video.encode())


def write_wav(path, k, rate=8000, seconds=0.2):
    t = np.arange(int(rate * seconds)) / rate
    x = (0.3 * np.sin(2 * np.pi * (200 + 50 * k) * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(rate)
        f.writeframes(x.tobytes())


def make_cremad_raw(root, clips=CREMAD_CLIPS):
    """CREMA-D layout: AudioWAV/<clip>.wav and VideoFlash/<clip>.flv."""
    (root / "AudioWAV").mkdir(parents=True)
    (root / "VideoFlash").mkdir()
    for k, clip in enumerate(clips):
        write_flv(root / "VideoFlash" / f"{clip}.flv", (20 * k, 255 - 20 * k, 100))
        write_wav(root / "AudioWAV" / f"{clip}.wav", k)
    return root


def write_mp4(path, k, audio=True, n_frames=6):
    """mpeg4 video (32 x 24, 10 fps, grey level 30 k) + AAC audio (0.5 s tone) at 8 kHz."""
    with _av().open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        track = out.add_stream("aac", rate=8000) if audio else None  # streams before muxing
        if track is not None:
            track.layout = "mono"
        for _ in range(n_frames):
            img = np.full((24, 32, 3), 30 * k, np.uint8)
            out.mux(video.encode(_av().VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(video.encode())
        if track is not None:
            t = np.arange(4000) / 8000
            x = (0.4 * np.sin(2 * np.pi * (300 + 100 * k) * t)).astype(np.float32)[None]
            frame = _av().AudioFrame.from_ndarray(x, format="fltp", layout="mono")
            frame.sample_rate = 8000
            out.mux(track.encode(frame))
            out.mux(track.encode())


def make_ks_raw(root: Path) -> Path:
    """videos/<stem>.mp4 plus all.csv (with header), train.csv and test.csv lists."""
    (root / "videos").mkdir(parents=True)
    for k, (stem, _) in enumerate(KS_CLIPS):
        write_mp4(root / "videos" / f"{stem}.mp4", k)
    (root / "all.csv").write_text("path,class\n" + "".join(f"videos/{s}.mp4,{c}\n"
                                                            for s, c in KS_CLIPS))
    (root / "train.csv").write_text("".join(f"videos/{s}.mp4,{c}\n" for s, c in KS_CLIPS
                                            if s.endswith("1")))
    (root / "test.csv").write_text("".join(f"videos/{s}.mp4,{c}\n" for s, c in KS_CLIPS
                                           if s.endswith("2")))
    return root


def _solid(path: Path, level: int, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = level if mode == "L" else (level, level, level)
    Image.new(mode, (20, 16), colour).save(path, quality=100)  # solid grey decodes exactly


def _video(root: Path, folder: str) -> None:
    for k, level in enumerate(RGB_LEVELS):
        _solid(root / "jpegs_256" / folder / f"frame{k + 1:06d}.jpg", level, "RGB")
    for k, (u, v) in enumerate(zip(U_LEVELS, V_LEVELS, strict=True)):
        _solid(root / "tvl1_flow" / "u" / folder / f"frame{k + 1:06d}.jpg", u)
        _solid(root / "tvl1_flow" / "v" / folder / f"frame{k + 1:06d}.jpg", v)


def make_ucf_tree(tmp_path: Path) -> Path:
    """A fake UCF-101 tree: list files, RGB frames, u/v flow frames."""
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{k} {c}\r\n" for k, c in
                                                enumerate(CLASSES, start=1)))
    (lists / "trainlist01.txt").write_text("".join(f"{f}/{v}.avi {n}\r\n" for f, v, n in TRAIN))
    (lists / "testlist01.txt").write_text("".join(f"{f}/{v}.avi\r\n" for f, v in TEST))
    for _, video, _ in TRAIN[:2] + TRAIN[3:]:
        _video(tmp_path, video)
    _video(tmp_path, "v_HandstandPushups_g08_c01")  # frame folder cased unlike the list entry
    for _, video in TEST:
        _video(tmp_path, video)
    return tmp_path
