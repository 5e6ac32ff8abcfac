"""UCF-101: list parsing, frame sampling, flow values, errors, splits and one training epoch.

Every test builds a fake UCF-101 tree: 3 classes, groups g08 (train list) and g01 (test list),
6 RGB frames and 5 flow frames per video, each frame a solid grey level so that the sampled
frame indices can be read back from the pixel values.
"""
from __future__ import annotations

import logging
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mediafiles import (
    CLASSES,
    TEST,
    TRAIN,
    make_ucf_tree,
)
from PIL import Image

from mmrelearn.data import MediaError, build_data
from mmrelearn.data.frames import segment_centres
from mmrelearn.data.ucf101 import (  # registers "ucf101"
    flow_indices,
    list_frames,
    load_ucf101,
    read_frame,
)

S = 8  # image_size: 20x16 frames -> 10x8 -> centre 8x8


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_ucf_tree(tmp_path)


def _videos(raw) -> list[str]:
    """Video folder of every sample, from its first sampled RGB file."""
    return [Path(files[0]).parent.name for files in raw.dataset.load.rgb]


def _const(x: torch.Tensor, values: list[float]) -> None:
    """x[c] is the constant values[c] for every leading index c."""
    want = torch.tensor(values).view(-1, *([1] * (x.dim() - 1))).expand_as(x)
    assert torch.allclose(x, want, rtol=0.0, atol=1e-6), (x.flatten(1)[:, 0], values)


def test_lists_give_labels_groups_splits_and_shapes(root):
    raw = load_ucf101(str(root), image_size=S)
    assert raw.class_names == CLASSES and raw.num_classes == 3 and raw.inputs is None
    assert raw.labels.tolist() == [0, 0, 1, 1, 2, 2, 0, 1, 2]
    assert raw.groups == ["g08"] * 6 + ["g01"] * 3
    assert raw.splits["train"].tolist() == [0, 1, 2, 3, 4, 5]
    assert raw.splits["test"].tolist() == [6, 7, 8]
    assert _videos(raw) == [v for _, v, _ in TRAIN[:2]] + ["v_HandstandPushups_g08_c01"] + \
        [v for _, v, _ in TRAIN[3:]] + [v for _, v in TEST]
    assert raw.dataset.input_shapes == {"rgb": (3, 3, S, S), "flow": (3, 2, S, S)}
    x, y = raw.dataset[7]
    assert x["rgb"].shape == (3, 3, S, S) and x["flow"].shape == (3, 2, S, S)
    assert x["rgb"].dtype == torch.float32 and int(y) == 1


def test_segment_centres_and_flow_indices_exact():
    assert segment_centres(6, 3) == [1, 3, 5]  # floor((k + 0.5) * 6 / 3)
    assert segment_centres(6, 2) == [1, 4]  # floor(1.5), floor(4.5)
    assert segment_centres(5, 3) == [0, 2, 4]  # floor(0.83), floor(2.5), floor(4.17)
    assert segment_centres(10, 4) == [1, 3, 6, 8]  # floor(1.25), floor(3.75), ...
    assert flow_indices([1, 3, 5], 2, 5) == [1, 2, 3, 4, 4, 4]  # 5 and 6 clamp to 4


def test_list_frames_sorts_by_number_and_filters_by_pattern(tmp_path):
    for name in ("img_10.jpg", "img_9.jpg", "img_1.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert list_frames(tmp_path) == ["img_1.jpg", "img_9.jpg", "img_10.jpg"]
    assert list_frames(tmp_path, "img_1*.jpg") == ["img_1.jpg", "img_10.jpg"]


def test_read_frame_crops_the_centre(tmp_path):
    path = tmp_path / "cols.png"  # lossless: 4 wide, 2 high, columns 0, 50, 100, 150
    Image.fromarray(np.array([[0, 50, 100, 150]] * 2, dtype=np.uint8)).save(path)
    assert read_frame(str(path), "L", 2).tolist() == [[50, 100], [50, 100]]  # no resize needed
    assert read_frame(str(path), "RGB", 2).shape == (2, 2, 3)


def test_rgb_sampled_frames_without_normalisation(root):
    raw = load_ucf101(str(root), modalities=["rgb"], image_size=S, normalize=False)
    x = raw.dataset[0][0]["rgb"]  # positions [1, 3, 5] -> levels 40, 80, 120
    _const(x, [40 / 255, 80 / 255, 120 / 255])
    two = load_ucf101(str(root), modalities=["rgb"], frames=2, image_size=S, normalize=False)
    _const(two.dataset[0][0]["rgb"], [40 / 255, 100 / 255])  # positions [1, 4]


def test_rgb_imagenet_normalisation(root):
    raw = load_ucf101(str(root), modalities=["rgb"], frames=2, image_size=S)
    x = raw.dataset[0][0]["rgb"][0]  # frame at position 1: level 40, one value per channel
    _const(x, [(40 / 255 - 0.485) / 0.229, (40 / 255 - 0.456) / 0.224,
               (40 / 255 - 0.406) / 0.225])


def test_flow_values_follow_rgb_positions_and_clamp(root):
    raw = load_ucf101(str(root), frames=6, image_size=S)
    flow = raw.dataset[0][0]["flow"]  # positions 0..5 -> flow frames 0, 1, 2, 3, 4, 4 (clamped)
    assert flow.shape == (6, 2, S, S)
    _const(flow[:, 0], [0.0, 20 / 128, 40 / 128, 60 / 128, 127 / 128, 127 / 128])  # u: 128 -> 0
    _const(flow[:, 1], [0.0, -20 / 128, -40 / 128, -60 / 128, -1.0, -1.0])  # v: 0 -> -1


def test_flow_stack_and_three_channels(root):
    raw = load_ucf101(str(root), frames=2, flow_stack=2, flow_channels=3, image_size=S)
    assert raw.dataset.input_shapes["flow"] == (2, 6, S, S)
    flow = raw.dataset[0][0]["flow"]  # positions [1, 4] -> flow frames [1, 2] and [4, 4]
    r2 = math.sqrt(2)
    _const(flow[0], [20 / 128, -20 / 128, r2 * 20 / 128, 40 / 128, -40 / 128, r2 * 40 / 128])
    m = math.sqrt((127 / 128) ** 2 + 1)
    _const(flow[1], [127 / 128, -1.0, m, 127 / 128, -1.0, m])
    two = load_ucf101(str(root), frames=2, flow_stack=2, image_size=S)
    assert two.dataset[0][0]["flow"].shape == (2, 4, S, S)


def test_flow_only_samples_over_flow_frames_in_modality_order(root):
    raw = load_ucf101(str(root), modalities=["flow"], frames=3, image_size=S)
    x = raw.dataset[0][0]
    assert list(x) == ["flow"]
    _const(x["flow"][:, 0], [0.0, 40 / 128, 127 / 128])  # 5 flow frames -> positions [0, 2, 4]
    both = load_ucf101(str(root), modalities=["flow", "rgb"], image_size=S)
    assert list(both.dataset[0][0]) == ["flow", "rgb"] == both.dataset.modalities


def test_max_per_class_keeps_first_by_sorted_name(root):
    raw = load_ucf101(str(root), max_per_class=1, image_size=S)
    assert _videos(raw) == ["v_ApplyEyeMakeup_g08_c01", "v_HandstandPushups_g08_c01",
                            "v_YoYo_g08_c01"] + [v for _, v in TEST]
    assert raw.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert raw.splits["train"].tolist() == [0, 1, 2]


def test_missing_list_files_and_frame_dirs(root):
    listed = root / "ucfTrainTestlist" / "testlist01.txt"
    text = listed.read_text()
    listed.unlink()
    with pytest.raises(FileNotFoundError, match="testlist01.txt"):
        load_ucf101(str(root))
    with pytest.raises(FileNotFoundError, match="trainlist02.txt"):
        load_ucf101(str(root), split=2)
    with pytest.raises(FileNotFoundError, match="classInd.txt"):
        load_ucf101(str(root), list_dir="nowhere")
    listed.write_text(text)
    shutil.rmtree(root / "jpegs_256")
    with pytest.raises(FileNotFoundError, match="RGB directory .*jpegs_256"):
        load_ucf101(str(root))
    assert len(load_ucf101(str(root), modalities=["flow"], image_size=S).labels) == 9


def test_unknown_class_raises_or_is_skipped(root, caplog):
    with (root / "ucfTrainTestlist" / "testlist01.txt").open("a") as fh:
        fh.write("Juggling/v_Juggling_g01_c01.avi\r\n")
    with pytest.raises(MediaError, match="line 4: unknown class 'Juggling'"):
        load_ucf101(str(root))
    with caplog.at_level(logging.WARNING, logger="mmrelearn.data.ucf101"):
        raw = load_ucf101(str(root), on_error="skip", image_size=S)
    assert len(raw.labels) == 9 and "left out 1 video(s)" in caplog.text
    assert "v_Juggling_g01_c01" in caplog.text


def test_missing_video_folder_raises_or_is_skipped(root):
    shutil.rmtree(root / "tvl1_flow" / "v" / "v_YoYo_g08_c02")
    with pytest.raises(MediaError, match="missing flow v folder of video v_YoYo_g08_c02"):
        load_ucf101(str(root))
    raw = load_ucf101(str(root), on_error="skip", image_size=S)
    assert "v_YoYo_g08_c02" not in _videos(raw) and raw.splits["train"].tolist() == [0, 1, 2, 3, 4]
    assert raw.labels.tolist() == [0, 0, 1, 1, 2, 0, 1, 2]
    assert len(load_ucf101(str(root), modalities=["rgb"], image_size=S).labels) == 9


def test_too_few_frames(root):
    for k in (3, 4, 5, 6):
        (root / "jpegs_256" / "v_YoYo_g01_c01" / f"frame{k:06d}.jpg").unlink()
    with pytest.raises(MediaError, match=r"v_YoYo_g01_c01: 2 frame\(s\) .* 3 needed"):
        load_ucf101(str(root))
    raw = load_ucf101(str(root), on_error="skip", image_size=S)
    assert raw.splits["test"].tolist() == [6, 7]
    with pytest.raises(MediaError, match=r"5 frame\(s\) .* 6 needed .*flow_stack=6"):
        load_ucf101(str(root), frames=2, flow_stack=6)


def test_bad_lists_and_options(root):
    lists = root / "ucfTrainTestlist"
    (lists / "trainlist02.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c02.avi 2\n")
    (lists / "testlist02.txt").write_text("YoYo/v_YoYo_g01_c01.avi\n")
    with pytest.raises(MediaError, match="class number 2, but ApplyEyeMakeup is class 1"):
        load_ucf101(str(root), split=2)
    (lists / "trainlist02.txt").write_text("YoYo/v_YoYo_g01_c01.avi 3\n")
    with pytest.raises(ValueError, match="in both trainlist02.txt and testlist02.txt"):
        load_ucf101(str(root), split=2)
    (lists / "trainlist02.txt").write_text("YoYo/v_YoYo_g08_c01.avi\n")
    with pytest.raises(ValueError, match=r"trainlist02.txt, line 1: expected"):
        load_ucf101(str(root), split=2)
    for opts in ({"split": 4}, {"modalities": ["audio"]}, {"on_error": "ignore"},
                 {"flow_channels": 4}, {"frames": 0}, {"max_per_class": 0}):
        with pytest.raises(ValueError, match="ucf101"):
            load_ucf101(str(root), **opts)


def test_no_usable_video_is_an_error(root):
    shutil.rmtree(root / "jpegs_256")
    (root / "jpegs_256").mkdir()
    with pytest.raises(ValueError, match="no usable video in the train list"):
        load_ucf101(str(root), on_error="skip")


def test_corrupt_jpeg_raises_media_error_on_access(root):
    bad = root / "jpegs_256" / "v_YoYo_g01_c01" / "frame000002.jpg"  # sampled (position 1)
    bad.write_bytes(b"not a jpeg")
    raw = load_ucf101(str(root), image_size=S)  # the builder lists files, it does not read them
    with pytest.raises(MediaError, match="unreadable frame") as err:
        raw.dataset[8]
    assert err.value.path == str(bad)


def test_dataset_pickles(root):
    raw = load_ucf101(str(root), image_size=S)
    again = pickle.loads(pickle.dumps(raw.dataset))
    (x, y), (x2, y2) = raw.dataset[4], again[4]
    assert int(y) == int(y2) and all(torch.equal(x[m], x2[m]) for m in x)


def test_build_data_keeps_official_test_and_carves_val_from_train(root):
    bundle = build_data("ucf101", root=str(root), image_size=S, frames=2, val_fraction=0.5,
                        test_fraction=0.2, split_seed=0)
    assert bundle.test.index.tolist() == [6, 7, 8]
    train, val = bundle.train.index.tolist(), bundle.val.index.tolist()
    assert sorted(train + val) == [0, 1, 2, 3, 4, 5]
    assert sorted(bundle.val.labels.tolist()) == [0, 1, 2]  # one of the two per class
    assert bundle.input_shapes == {"rgb": (2, 3, S, S), "flow": (2, 2, S, S)}


def test_one_training_epoch(root, tmp_path, one_thread):
    from mmrelearn.config import config_from_dict
    from mmrelearn.train.run import train

    enc = {"type": "resnet18", "width": 4}
    raw = {"name": "ucf", "seed": 0,
           "data": {"name": "ucf101", "root": str(root), "image_size": 16, "frames": 2,
                    "val_fraction": 0.5, "test_fraction": 0.2, "split_seed": 0},
           "model": {"encoders": {"rgb": dict(enc), "flow": dict(enc)}},
           "method": {"name": "joint"},
           "optim": {"name": "sgd", "lr": 0.01},
           "train": {"epochs": 1, "batch_size": 4, "progress": False}}
    summary = train(config_from_dict(raw), run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "summary.json").is_file()
    assert summary["data"] == "ucf101" and summary["epochs"] == 1
