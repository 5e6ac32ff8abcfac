"""A run directory received from someone else cannot run code when it is opened: every
checkpoint is read with ``torch.load(weights_only=True)``, and a file that needs more is
refused with an error naming it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmrelearn.cli import main
from mmrelearn.config import config_from_dict
from mmrelearn.probe import probe_run
from mmrelearn.train import train
from mmrelearn.train.checkpoint import convert_checkpoint, load_checkpoint


class Payload:
    """Unpickling this object opens (creates) ``marker``: code run by merely loading a file."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def finished(tiny_raw, tmp_path):
    tiny_raw["train"]["epochs"] = 2
    run_dir = tmp_path / "run"
    train(config_from_dict(tiny_raw), run_dir=run_dir)
    return run_dir


def test_a_hostile_checkpoint_is_refused_without_running_it(finished, tmp_path, capsys):
    marker = tmp_path / "pwned"
    for name in ("best", "last"):
        state = torch.load(finished / f"checkpoints/{name}.pt", weights_only=True)
        torch.save({**state, "model": Payload(marker)}, finished / f"checkpoints/{name}.pt")
    torch.load(finished / "checkpoints/best.pt", weights_only=False)  # the old loader: runs it
    assert marker.exists()
    marker.unlink()

    best, last = finished / "checkpoints/best.pt", finished / "checkpoints/last.pt"
    assert main(["eval", str(finished)]) == 2
    err = capsys.readouterr().err
    assert f"{best} holds objects that cannot be loaded safely" in err
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        probe_run(finished)
    (finished / "summary.json").unlink()  # so that --resume opens last.pt
    assert main(["train", "--resume", str(finished)]) == 2
    assert f"{last} holds objects that cannot be loaded safely" in capsys.readouterr().err
    assert not marker.exists()


def test_a_file_that_is_no_checkpoint_is_named(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=f"{path} is not a readable torch checkpoint"):
        load_checkpoint(path)


def test_every_stored_field_loads_with_weights_only(finished):
    state = load_checkpoint(finished / "checkpoints/last.pt")
    assert set(state) >= {"model", "optimizer", "method", "rng", "train_generator"}
    assert isinstance(state["rng"]["numpy"]["keys"], list)  # not an ndarray


def test_an_older_checkpoint_says_how_to_convert_it_and_then_resumes(tiny_raw, tmp_path,
                                                                     crash_run):
    full = train(config_from_dict(tiny_raw), run_dir=tmp_path / "full")
    cut = tmp_path / "cut"
    crash_run(tiny_raw, cut, 3)
    # the layout of earlier versions: NumPy's RNG state as get_state() returns it (an ndarray)
    path = cut / "checkpoints/last.pt"
    state = torch.load(path, weights_only=True)
    n = state["rng"]["numpy"]
    state["rng"]["numpy"] = (n["key"], np.asarray(n["keys"], dtype=np.uint32), n["pos"],
                             n["has_gauss"], n["gauss"])
    torch.save(state, path)
    with pytest.raises(ValueError, match="convert_checkpoint"):
        train(run_dir=cut, resume=True)
    convert_checkpoint(path)
    resumed = train(run_dir=cut, resume=True)
    assert resumed["test"] == full["test"] and resumed["best_epoch"] == full["best_epoch"]
