"""Video/audio decoding, frame sampling, the cached-clip loader and the atomic cache writer."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from mmrelearn.data import prepare as prep
from mmrelearn.data.audio import spectrogram, spectrogram_config
from mmrelearn.data.lazy import MediaError
from mmrelearn.data.frames import IMAGENET_MEAN, IMAGENET_STD, segment_centres
from mmrelearn.data.media import (CachedClipLoader, ClipSource,
                                  check_clip_options, decode_clip, official_split,
                                  read_pairs, read_video_audio, read_video_frames,
                                  resize_center_crop)

av = pytest.importorskip("av")

#: one distinct solid colour per frame, far apart so lossy coding cannot confuse them.
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255),
           (255, 0, 255), (255, 255, 255), (0, 0, 0), (128, 0, 0), (0, 128, 0)]


def write_video(path, n_frames, codec="flv", audio=None, size=(32, 24)):
    """A 10 fps clip whose frame k is COLOURS[k]; ``audio`` = int16 (2, n) at 8 kHz (PCM)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=10)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        track = None
        if audio is not None:
            track = out.add_stream("pcm_s16le", rate=8000)
            track.layout = "stereo"
        for k in range(n_frames):
            img = np.zeros((size[1], size[0], 3), np.uint8)
            img[:] = COLOURS[k]
            out.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(video.encode())
        if track is not None:
            frame = av.AudioFrame.from_ndarray(audio.T.reshape(1, -1).copy(), format="s16",
                                               layout="stereo")
            frame.sample_rate = 8000
            out.mux(track.encode(frame))
            out.mux(track.encode())
    return path


def test_frame_indices_are_segment_centres():
    # floor((k + 1/2) * 10 / 3) = floor(1.67), floor(5), floor(8.33)
    assert segment_centres(10, 3) == [1, 5, 8]
    assert segment_centres(10, 1) == [5]
    assert segment_centres(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="cannot pick 4 of 3"):
        segment_centres(3, 4)


@pytest.mark.parametrize("name, codec", [("clip.flv", "flv"), ("clip.mp4", "mpeg4")])
def test_read_video_frames_picks_evenly_spaced_frames(tmp_path, name, codec):
    # FLV does not state its frame count (all frames decoded, then chosen); mp4 does
    # (only the chosen frames are kept)
    path = write_video(tmp_path / name, 10, codec=codec)
    frames = read_video_frames(path, 3, 16)
    assert frames.dtype == torch.uint8 and frames.shape == (3, 3, 16, 16)
    for t, k in enumerate([1, 5, 8]):  # the frames of segment_centres(10, 3)
        centre = frames[t, :, 8, 8].int()
        assert (centre - torch.tensor(COLOURS[k])).abs().max() <= 8


@pytest.mark.parametrize("stated", [20, 9])
def test_wrong_stated_frame_count_falls_back_to_all_frames(tmp_path, monkeypatch, stated):
    from mmrelearn.data import media

    path = write_video(tmp_path / "clip.mp4", 10, codec="mpeg4")
    honest = read_video_frames(path, 3, 8)
    monkeypatch.setattr(media, "_declared_frames", lambda p: stated)
    assert torch.equal(read_video_frames(path, 3, 8), honest)


def test_resize_center_crop_exact():
    from PIL import Image

    img = np.zeros((3, 6, 3), np.uint8)  # (H, W, 3): columns are 0, 10, ..., 50 grey
    img[:] = (np.arange(6) * 10)[None, :, None]
    # shorter side already 3: no scaling; left = (6 - 3) // 2 = 1 -> columns 1, 2, 3
    out = resize_center_crop(Image.fromarray(img), 3)
    assert out.shape == (3, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [10, 20, 30]
    solid = Image.fromarray(np.full((20, 40, 3), 77, np.uint8))  # 40 x 20 -> 20 x 10 -> 10 x 10
    assert np.all(resize_center_crop(solid, 10) == 77)


def test_too_few_frames_missing_and_corrupt_files(tmp_path):
    path = write_video(tmp_path / "short.flv", 2)
    with pytest.raises(MediaError, match=r"short\.flv.*only 2 decodable video frame"):
        read_video_frames(path, 3, 8)
    with pytest.raises(MediaError, match=r"nothere\.flv: file not found"):
        read_video_frames(tmp_path / "nothere.flv", 1, 8)
    (tmp_path / "junk.flv").write_bytes(b"not a video at all")
    with pytest.raises(MediaError, match=r"junk\.flv: cannot be read"):
        read_video_frames(tmp_path / "junk.flv", 1, 8)
    with pytest.raises(MediaError, match=r"short\.flv: no audio stream"):
        read_video_audio(path)


def test_read_video_audio_averages_channels(tmp_path):
    left = np.linspace(-16000, 16000, 800).round().astype(np.int16)
    right = np.full(800, 8000, np.int16)
    path = write_video(tmp_path / "av.mkv", 3, codec="mpeg4", audio=np.stack([left, right]))
    wave, rate = read_video_audio(path)
    assert rate == 8000 and wave.dtype == torch.float32 and wave.shape == (800,)
    expected = (left.astype(np.float64) + right) / 2 / 32768  # mean of the two channels
    assert np.abs(wave.numpy() - expected).max() < 1e-6


def test_decode_clip_matches_cached_load(tmp_path):
    audio = np.stack([np.arange(800, dtype=np.int16) * 10] * 2)
    path = write_video(tmp_path / "c.mkv", 4, codec="mpeg4", audio=audio)
    cfg = spectrogram_config({"sample_rate": 8000, "duration": 0.1, "n_fft": 64,
                              "hop_length": 32, "fill": "pad"})
    arrays = decode_clip(ClipSource("c", str(path), None, "x"), 2, 8, cfg)
    assert arrays["visual"].shape == (2, 3, 8, 8) and arrays["visual"].dtype == np.uint8
    assert arrays["wave"].shape == (800,) and arrays["audio"].shape == (33, 26)
    for part, x in arrays.items():
        (tmp_path / part).mkdir()
        np.save(tmp_path / part / "c.npy", x)
    loader = pickle.loads(pickle.dumps(CachedClipLoader(tmp_path, ["c"], ["visual", "audio"],
                                                        cfg)))  # DataLoader workers pickle it
    cached, fresh = loader(0), loader.inputs(arrays, 0)
    assert list(cached) == ["visual", "audio"]
    assert all(torch.equal(cached[m], fresh[m]) for m in cached)
    assert torch.equal(cached["audio"], spectrogram(torch.from_numpy(arrays["wave"]), cfg))


def test_loader_normalizes_with_imagenet_statistics(tmp_path):
    cfg = spectrogram_config("crema_d")
    visual = np.zeros((1, 3, 2, 2), np.uint8)
    visual[0, :, 0, 0] = 255  # one white pixel, the rest black
    arrays = {"visual": visual}
    norm = CachedClipLoader(tmp_path, ["c"], ["visual"], cfg).inputs(arrays, 0)["visual"]
    plain = CachedClipLoader(tmp_path, ["c"], ["visual"], cfg, normalize=False).inputs(
        arrays, 0)["visual"]
    assert norm.dtype == torch.float32 and norm.shape == (1, 3, 2, 2)
    for c in range(3):  # (1 - mean) / std and (0 - mean) / std, per channel
        assert norm[0, c, 0, 0].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
        assert norm[0, c, 1, 1].item() == pytest.approx(-IMAGENET_MEAN[c] / IMAGENET_STD[c])
    assert plain[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0] and plain[0, :, 1, 1].sum() == 0


def test_unreadable_cache_file_names_it(tmp_path):
    (tmp_path / "visual").mkdir()
    (tmp_path / "visual" / "c.npy").write_bytes(b"garbage")
    loader = CachedClipLoader(tmp_path, ["c"], ["visual"], spectrogram_config("crema_d"))
    with pytest.raises(MediaError, match=r"c\.npy: unreadable cache file"):
        loader(0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(modalities=["audio", "audio"]), "modalities"),
    (dict(modalities=["depth"]), "modalities"),
    (dict(frames=0), "frames: expected a positive int"),
    (dict(image_size=True), "image_size: expected a positive int"),
    (dict(on_error="ignore"), "on_error: expected 'raise' or 'skip'"),
    (dict(normalize="yes"), "normalize: expected true or false"),
    (dict(audio_noise={"snr": 3}), "audio_noise"),
    (dict(audio_noise={"snr_db": "loud"}), "audio_noise.snr_db"),
    (dict(audio_noise={"snr_db": 3, "seed": -1}), "audio_noise.seed"),
])
def test_bad_loader_options(kwargs, message):
    opts = dict(modalities=["audio", "visual"], frames=1, image_size=8, on_error="raise",
                audio_noise=None, normalize=True, progress=False)
    with pytest.raises(ValueError, match=message):
        check_clip_options("ds", **{**opts, **kwargs})
    assert check_clip_options("ds", **{**opts, "audio_noise": {"snr_db": 5}}) == (5.0, 0)


def test_official_split_from_list_files(tmp_path):
    records = [{"clip": c, "label": lab} for c, lab in
               [("a", "X"), ("b", "Y"), ("c", "X"), ("d", "Y"), ("e", "X")]]
    (tmp_path / "train.csv").write_text("clip,label\na,X\nsub/b.mp4,Y\n\nd,Y\ne,X\n")
    (tmp_path / "test.csv").write_text("c,X\n")
    assert read_pairs(tmp_path / "test.csv") == [("c", "X", 1)]
    split = official_split(records, {"e"}, tmp_path / "train.csv", tmp_path / "test.csv")
    assert split["train"].tolist() == [0, 1, 3] and split["test"].tolist() == [2]
    assert official_split(records, set(), None, None) is None
    with pytest.raises(ValueError, match="both train_list and test_list"):
        official_split(records, set(), tmp_path / "train.csv", None)
    (tmp_path / "bad.csv").write_text("a,X\nc,Y\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 2: clip 'c' has label 'Y'"):
        official_split(records, set(), tmp_path / "bad.csv", tmp_path / "test.csv")
    (tmp_path / "other.csv").write_text("zz,X\n")
    with pytest.raises(ValueError, match=r"other\.csv, line 1: clip 'zz' is not in the cache"):
        official_split(records, set(), tmp_path / "train.csv", tmp_path / "other.csv")
    (tmp_path / "overlap.csv").write_text("c,X\na,X\n")
    with pytest.raises(ValueError, match="share 1 clip.*'a'"):
        official_split(records, set(), tmp_path / "train.csv", tmp_path / "overlap.csv")
    (tmp_path / "three.csv").write_text("a,X,extra\n")
    with pytest.raises(ValueError, match=r"three\.csv, line 1: expected two"):
        read_pairs(tmp_path / "three.csv")


def test_save_array_interrupted_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "visual" / "c.npy"
    prep.save_array(target, np.arange(3))
    assert np.load(target).tolist() == [0, 1, 2]

    def broken_save(f, array):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        prep.save_array(target, np.arange(5))
    assert sorted(p.name for p in (tmp_path / "visual").iterdir()) == ["c.npy"]
    monkeypatch.undo()
    assert np.load(target).tolist() == [0, 1, 2]  # the old file is untouched
    (tmp_path / "visual" / ".c.npy.x1.tmp").write_bytes(b"stale")
    (tmp_path / ".manifest.json.x2.tmp").write_bytes(b"stale")
    assert prep.remove_temporaries(tmp_path) == 2
    assert sorted(p.name for p in (tmp_path / "visual").iterdir()) == ["c.npy"]
