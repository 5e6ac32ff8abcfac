"""Loggers beside ``metrics.jsonl``: a CSV file and TensorBoard, chosen by ``train.loggers``.

Every logger receives the same epoch record that is appended to ``metrics.jsonl`` and logs its
scalars under slash-joined names (:func:`flatten`): ``train/ce``, ``val/acc``,
``purity/audio/train``, ``dnr/audio/alpha``, ``gblending/weights/fused``, ``time_s/total``.

``metrics.csv`` is wide: one row per epoch, column ``epoch`` first, then every name in the order
it first appeared. A name that appears only in a later epoch (a method's first report, e.g.
D&R's first diagnosis) extends the header: the file is then rewritten atomically with the wider
header, earlier rows leaving the new cells empty. On resume the file is rebuilt from the
(already truncated) ``metrics.jsonl``, so a resumed run's CSV equals an uninterrupted run's.
TensorBoard event files go to ``tensorboard/``; a resumed writer purges steps from the resumed
epoch on, so an epoch logged just before a crash is not shown twice.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from .checkpoint import atomic_write_text, read_jsonl

__all__ = ["LOGGERS", "flatten", "CSVLogger", "TensorBoardLogger", "RunLoggers",
           "read_csv"]

#: the values ``train.loggers`` accepts; ``jsonl`` (metrics.jsonl) is always written.
LOGGERS = ("jsonl", "csv", "tensorboard")


def _walk(node: Any, prefix: str, out: dict[str, float]) -> None:
    if isinstance(node, bool):
        out[prefix] = float(node)  # D&R's "applied", OGM-GE's "modulated": 1.0 / 0.0
    elif isinstance(node, (int, float)):
        out[prefix] = float(node)
    elif isinstance(node, Mapping):
        for k, v in node.items():
            if k == "epoch":  # a report's own epoch: the row's epoch already
                continue
            # "report" (method reports) and D&R's "modalities" are levels without a name of
            # their own: report.dnr.modalities.audio.alpha -> dnr/audio/alpha
            if k in ("report", "modalities"):
                _walk(v, prefix, out)
            else:
                _walk(v, f"{prefix}/{k}" if prefix else str(k), out)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _walk(v, f"{prefix}/{i}", out)
    # strings and nulls are not scalars: skipped


def flatten(record: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one metrics.jsonl record by name (its ``epoch`` is the step, not a value).

    Nested mappings join with ``/``; booleans become 1.0 / 0.0; strings and nulls are dropped.
    """
    out: dict[str, float] = {}
    _walk({k: v for k, v in record.items() if k != "epoch"}, "", out)
    return out


class CSVLogger:
    """``metrics.csv``: one row per epoch, a header that is the union of the names so far."""

    def __init__(self, path: Path, previous: Sequence[Mapping[str, Any]] = ()) -> None:
        self.path = Path(path)
        self.columns: list[str] = ["epoch"]
        self.rows: list[dict[str, Any]] = []
        for record in previous:  # a resumed run: its rows so far, from metrics.jsonl
            self._add(record)
        if self.rows:
            self._rewrite()
        elif self.path.exists():
            self.path.unlink()  # a stale file of an epoch that never got its checkpoint

    def _add(self, record: Mapping[str, Any]) -> bool:
        row = {"epoch": record["epoch"], **flatten(record)}
        new = [k for k in row if k not in self.columns]
        self.columns += new
        self.rows.append(row)
        return bool(new)

    def _format(self, rows: Iterable[Mapping[str, Any]], header: bool) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.columns, restval="", lineterminator="\n")
        if header:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
        return buf.getvalue()

    def _rewrite(self) -> None:
        atomic_write_text(self._format(self.rows, header=True), self.path)

    def log(self, record: Mapping[str, Any]) -> None:
        """Add one epoch's row (rewrites the file if it brings new names)."""
        if self._add(record) or len(self.rows) == 1:
            self._rewrite()
        else:
            with open(self.path, "a") as f:
                f.write(self._format(self.rows[-1:], header=False))

    def close(self) -> None:
        """Nothing is held open between epochs."""


class TensorBoardLogger:
    """Scalars at step = epoch in ``log_dir`` (needs the ``tensorboard`` package)."""

    def __init__(self, log_dir: Path, start_epoch: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # config.py checks first; this covers direct use
            raise ImportError("train.loggers: 'tensorboard' needs the tensorboard package "
                              "(pip install 'mmrelearn[tensorboard]')") from e
        # purge_step: TensorBoard hides earlier files' events from this step on (resume)
        self.writer = SummaryWriter(str(log_dir), purge_step=start_epoch or None)

    def log(self, record: Mapping[str, Any]) -> None:
        """Write every scalar of one epoch record; flushed, so a crash loses nothing logged."""
        for name, value in flatten(record).items():
            self.writer.add_scalar(name, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class RunLoggers:
    """The extra loggers of one run; ``log`` takes each record appended to metrics.jsonl.

    Args:
        names: ``train.loggers`` (``jsonl`` is written by the trainer itself).
        run_dir: the run directory.
        start_epoch: the first epoch this process trains (> 0 after a resume).
    """

    def __init__(self, names: Sequence[str], run_dir: Path, start_epoch: int = 0) -> None:
        unknown = sorted(set(names) - set(LOGGERS))
        if unknown:
            raise ValueError(f"train.loggers: unknown logger(s) {unknown}; valid: {list(LOGGERS)}")
        run_dir = Path(run_dir)
        self.loggers: list[Any] = []
        if "csv" in names:
            previous = [r for r in read_jsonl(run_dir / "metrics.jsonl")
                        if r["epoch"] < start_epoch]
            self.loggers.append(CSVLogger(run_dir / "metrics.csv", previous))
        if "tensorboard" in names:
            self.loggers.append(TensorBoardLogger(run_dir / "tensorboard", start_epoch))

    def log(self, record: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.log(record)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def read_csv(path: Path) -> list[dict[str, Optional[float]]]:
    """Rows of a ``metrics.csv`` as floats (``None`` for an empty cell)."""
    with open(path, newline="") as f:
        return [{k: float(v) if v != "" else None for k, v in row.items()}
                for row in csv.DictReader(f)]
