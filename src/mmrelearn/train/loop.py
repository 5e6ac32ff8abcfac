"""The one training loop: methods act only through the hooks of ``methods/base.py``."""
from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed as dist
from ..config import TrainConfig
from ..diagnose import cluster_purity, purity_gap
from ..methods.base import FitContext, Method, NonFiniteLossError, check_run_options
from ..precision import Precision, check_compile
from ..relearn import extract_features, measure_purities, model_features
from .checkpoint import (
    append_jsonl,
    atomic_save,
    load_checkpoint,
    rng_state,
    set_rng_state,
    truncate_jsonl,
)
from .loggers import RunLoggers
from .metrics import classification_metrics

__all__ = ["Trainer", "NonFiniteLossError", "evaluate"]

log = logging.getLogger(__name__)


def _to(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {m: x.to(device, non_blocking=True) for m, x in inputs.items()}


def _fused_logits(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return model(inputs).logits


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, num_classes: int,
             predict: Optional[Callable[[nn.Module, Mapping[str, torch.Tensor]],
                                        torch.Tensor]] = None,
             precision: Optional[Precision] = None) -> dict[str, float]:
    """Loss, accuracy, macro F1 and weighted F1 of ``model`` over ``loader`` (eval mode).

    ``predict(model, inputs) -> logits`` defaults to the fused logits; a method's
    :meth:`~mmrelearn.methods.base.Method.predict` goes here. It runs under ``precision``'s
    autocast (none by default); the loss is computed from float32 logits. Under DDP, over a
    loader whose batches are dealt to the ranks, every rank returns the whole split's numbers.
    """
    predict = predict or _fused_logits
    precision = precision or Precision()
    was_training = model.training
    model.eval()
    # kept on the device and read once at the end; each batch's loss sum in float64
    preds, labels, losses = [], [], []
    for inputs, y in loader:
        y = y.to(device)
        with precision.autocast():
            logits = predict(model, _to(inputs, device)).float()  # a no-op at precision 32
        loss = nn.functional.cross_entropy(logits, y, reduction="sum")
        losses.append(loss.detach().double().reshape(1))
        preds.append(logits.argmax(1))
        labels.append(y)
    model.train(was_training)
    # gathered in batch order under DDP (.cpu(): a rank holding no batch gets them on NCCL's
    # device); one process: the local concatenation
    y_true = dist.gather_batches(loader, labels).cpu().numpy()
    y_pred = dist.gather_batches(loader, preds).cpu().numpy()
    loss_sum = 0.0
    for value in dist.gather_batches(loader, losses).tolist():  # batch order, as one process
        loss_sum += value
    out = classification_metrics(y_true, y_pred, num_classes)
    out["loss"] = float(loss_sum) / max(len(y_true), 1)
    return out


class _DeviceSums:
    """An epoch's loss terms summed on the device, and the first step whose loss was not
    finite: adding waits for nothing; :meth:`read` is the one host sync."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.sums = device, {}
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, terms: Mapping[str, torch.Tensor], step: int, share: float = 1.0) -> None:
        """Add one batch's terms, weighted by this process's ``share`` of it (DDP)."""
        for k, v in terms.items():  # float64, as the Python floats summed before
            if k not in self.sums:
                self.sums[k] = torch.zeros((), dtype=torch.float64, device=self.device)
            self.sums[k] += v.detach() if share == 1.0 else v.detach().double() * share
        bad = ~torch.isfinite(sum(v.detach() for v in terms.values()))
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)

    def read(self) -> tuple[dict[str, float], int]:
        """The sums so far as floats, and the first non-finite step (-1: none)."""
        values = torch.stack([*self.sums.values(), self.first_bad.double()]).tolist()
        return dict(zip(self.sums, values[:-1])), int(values[-1])


class Trainer:
    """Runs one method on one model and data, writing a run directory.

    Run directory: ``metrics.jsonl`` (one line per epoch), ``reports.jsonl`` (method reports,
    e.g. each D&R diagnosis), ``checkpoints/last.pt`` (everything needed to resume) and
    ``checkpoints/best.pt`` (weights of the epoch with the best validation metric).
    """

    def __init__(self, model: nn.Module, method: Method, optimizer: torch.optim.Optimizer,
                 scheduler: Optional[Any], loaders: dict[str, Iterable], num_classes: int,
                 cfg: TrainConfig, run_dir: Path, device: torch.device,
                 train_generator: torch.Generator) -> None:
        self.model, self.method, self.optimizer, self.scheduler = model, method, optimizer, scheduler
        self.loaders, self.num_classes, self.cfg = loaders, num_classes, cfg
        self.run_dir, self.device, self.gen = Path(run_dir), device, train_generator
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.precision = Precision(cfg.precision, device)  # ConfigError: nothing written yet
        check_run_options(method, cfg.precision, cfg.compile)
        if cfg.compile:  # in place: state_dict keys (checkpoints) stay those of the model
            check_compile(device)
            model.compile()
        self.ctx = FitContext(
            model=model, optimizer=optimizer, device=device, num_classes=num_classes,
            epochs=cfg.epochs, train_loader=loaders["train"],
            diag_train_loader=loaders["diag_train"], val_loader=loaders["val"],
            holdout_loader=loaders.get("holdout"), precision=self.precision)
        self.start_epoch = 0
        self.best: dict[str, Any] = {"epoch": -1, "score": -math.inf}
        self._epoch_loader: Iterable = loaders["train"]

    # ------------------------------------------------------------ checkpoints
    def _save_last(self, epoch: int) -> None:
        state = {
            "epoch": epoch, "step": self.ctx.step, "best": self.best,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "method": self.method.state_dict(), "rng": rng_state(),
            "train_generator": self.gen.get_state(),
        }
        if self.precision.scaler is not None:  # 16-mixed: the loss scale goes on
            state["grad_scaler"] = self.precision.state_dict()
        if dist.world_size() > 1:  # every rank's RNG (dropout streams differ), rank 0 writes
            state["rng_ranks"] = dist.gather_objects(state["rng"])
        if dist.is_main():
            atomic_save(state, self.ckpt_dir / "last.pt")

    def resume(self) -> None:
        """Load ``checkpoints/last.pt`` and continue after the epoch it completed."""
        path = self.ckpt_dir / "last.pt"
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: {path} does not exist (no epoch finished)")
        # CPU first: RNG states must stay CPU tensors; load_state_dict moves the rest.
        state = load_checkpoint(path, map_location="cpu")  # weights_only: never runs code
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])
        ranks = state.get("rng_ranks") or []  # saved under DDP with this many processes
        set_rng_state(ranks[dist.rank()] if len(ranks) == dist.world_size() else state["rng"])
        self.gen.set_state(state["train_generator"])
        self.precision.load_state_dict(state.get("grad_scaler"))
        self.ctx.step, self.best = state["step"], state["best"]
        self.start_epoch = state["epoch"] + 1
        # Lines written for an epoch that crashed before its checkpoint are dropped.
        for name in ("metrics.jsonl", "reports.jsonl") if dist.is_main() else ():
            truncate_jsonl(self.run_dir / name, state["epoch"])
        log.info("resumed %s after epoch %d", self.run_dir, state["epoch"])

    # ------------------------------------------------------------ one epoch
    def _train_epoch(self, epoch: int) -> tuple[dict[str, float], float]:
        """One pass over this epoch's loader (the method's :meth:`train_loader`, or train):
        the mean loss terms, and the samples stepped on over the training split's size (1 for
        a plain epoch; more where a method trains on added copies, less where it skips).

        The host reads the device every ``progress_every`` steps and at the end, not every
        step: a non-finite loss is flagged on the device and raises at the next read, before
        this epoch is evaluated or checkpointed (``last.pt`` keeps the last good epoch)."""
        floats_wanted = type(self.method).on_train_batch_end is not Method.on_train_batch_end
        self.model.train()
        acc = _DeviceSums(self.device)
        n_batches = n_samples = 0
        sums: dict[str, float] = {}
        loader = self._epoch_loader
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False,
                   disable=not self.cfg.progress or not dist.is_main(), dynamic_ncols=True)
        for i, batch in enumerate(bar):
            inputs, labels = _to(batch[0], self.device), batch[1].to(self.device)
            self.ctx.batch_share = share = dist.batch_share(loader, i, len(labels))
            self.ctx.batch_index = batch[2] if self.method.wants_sample_index else None
            try:
                terms = self.method.training_step(self.ctx, inputs, labels)
            except NonFiniteLossError as err:  # an own step's check_finite
                self._stop(str(err))
            if not terms:  # the method took no step on this batch
                continue
            acc.add(terms, self.ctx.step, share)  # under DDP: this rank's part of the mean
            self.ctx.step += 1
            n_samples += len(labels)
            if floats_wanted:  # one sync per batch, only for a method that reads them
                self.method.on_train_batch_end(
                    self.ctx, {k: float(v.detach()) for k, v in terms.items()})
            n_batches += 1
            if n_batches % self.cfg.progress_every == 0:
                sums = self._read(acc, epoch, n_batches, bar)
        self.ctx.batch_index, self.ctx.batch_share = None, 1.0
        if n_batches % self.cfg.progress_every:  # steps since the last read
            sums = self._read(acc, epoch, n_batches, bar)
        sums = dist.reduce_floats({**sums, "": n_samples})  # the global batches' (DDP)
        n_samples = sums.pop("")
        dist.sync_buffers(self.model)  # rank 0's BatchNorm statistics, before evaluation
        if self.scheduler is not None:
            self.scheduler.step()
        means = {k: v / max(n_batches, 1) for k, v in sums.items()}
        means["total"] = sum(means.values())
        return means, n_samples / max(len(self.loaders["diag_train"].dataset), 1)

    def _read(self, acc: _DeviceSums, epoch: int, n_batches: int, bar: Any
              ) -> dict[str, float]:
        """Read the running sums (one host sync); stop the run if a loss was not finite."""
        sums, first_bad = acc.read()
        if first_bad >= 0:
            bad = sorted(k for k, v in sums.items() if not math.isfinite(v))
            self._stop(f"non-finite training loss at epoch {epoch}, step {first_bad} (the "
                       f"first; terms not finite over the epoch: {bad})")
        if self.cfg.progress:
            bar.set_postfix(loss=f"{sum(sums.values()) / n_batches:.4f}")  # epoch mean so far
        return sums

    def _stop(self, why: str) -> None:
        raise NonFiniteLossError(
            f"{why}; the run stops here, {self.ckpt_dir / 'last.pt'} holds the last good "
            f"epoch (lower optim.lr or check the inputs)") from None

    def _evaluate(self, split: str) -> dict[str, float]:
        return evaluate(self.model, self.loaders[split], self.device, self.num_classes,
                        self.method.predict, self.precision)

    def _predict_uses_state(self) -> bool:
        """The method predicts with its own rule, so the best checkpoint keeps its state."""
        return type(self.method).predict is not Method.predict

    def _monitor_purity(self) -> dict[str, dict[str, float]]:
        """Every modality's train/val purity and gap now (logging only; changes nothing)."""
        purities, _, _ = measure_purities(
            self.model.encoders, model_features(self.model, self.device),
            self.loaders["diag_train"], self.loaders["val"], self.num_classes, self.device,
            n_init=self.cfg.monitor_n_init, max_samples=self.cfg.monitor_max_samples)
        out = {m: {"train": p_tr, "val": p_va, "gap": purity_gap(p_tr, p_va)}
               for m, (p_tr, p_va) in purities.items()}
        if self.cfg.monitor_test_purity:  # curves only (Fig. 4c/d): nothing reads it back
            feats, y = extract_features(
                self.model.encoders, model_features(self.model, self.device),
                self.loaders["test"], self.device, max_samples=self.cfg.monitor_max_samples)
            test = dist.from_main(lambda: {m: cluster_purity(
                f, y, self.num_classes, n_init=self.cfg.monitor_n_init) for m, f in feats.items()})
            for m, p in test.items():
                out[m]["test"] = p
        return out

    # ------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train from ``start_epoch`` to the end; return the per-run summary numbers."""
        cfg, ctx = self.cfg, self.ctx
        self.method.on_fit_start(ctx)
        if dist.world_size() > 1:  # torchrun: the training step through DDP
            ctx.ddp = dist.DDPStep(self.model, self.device, lambda: ctx.batch_share)
        main = dist.is_main()  # rank 0 alone writes the run directory
        select = cfg.select_metric.removeprefix("val_")
        loggers = RunLoggers(cfg.loggers if main else [], self.run_dir,
                             self.start_epoch)  # csv, tensorboard
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            ctx.epoch = epoch
            self.method.on_train_epoch_start(ctx)
            self._epoch_loader = self.method.train_loader(ctx) or self.loaders["train"]
            record: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
            record["train"], record["passes"] = self._train_epoch(epoch)
            t1 = time.perf_counter()
            record["val"] = self._evaluate("val")
            if cfg.log_test_every_epoch:  # logged for curves; never read for selection
                record["test"] = self._evaluate("test")
            if cfg.monitor_purity:
                record["purity"] = self._monitor_purity()
            if record["val"][select] > self.best["score"]:
                self.best = {"epoch": epoch, "score": record["val"][select]}
                best = {"epoch": epoch, "model": self.model.state_dict()}
                if self._predict_uses_state():
                    best["method"] = self.method.state_dict()
                if main:
                    atomic_save(best, self.ckpt_dir / "best.pt")
            t2 = time.perf_counter()
            report = self.method.on_train_epoch_end(ctx)
            t3 = time.perf_counter()
            # train: the method's epoch start (e.g. G-Blending's estimate) and the batches;
            # eval: validation/test/purity monitor/best checkpoint; method: the epoch-end hook
            # (D&R's diagnosis and re-initialisation). Wall seconds, for ratios within a run.
            record["time_s"] = {"total": t3 - t0, "train": t1 - t0, "eval": t2 - t1,
                                "method": t3 - t2}
            if report is not None:
                if main:
                    append_jsonl({"epoch": epoch, **report}, self.run_dir / "reports.jsonl")
                record["report"] = report
            if main:
                append_jsonl(record, self.run_dir / "metrics.jsonl")
            loggers.log(record)
            self._save_last(epoch)
            dist.barrier()  # rank 0's files are written before any rank reads them
            log.info("epoch %d: loss %.4f val acc %.4f", epoch, record["train"]["total"],
                     record["val"]["acc"])
        loggers.close()
        ctx.ddp = None
        self.method.on_fit_end(ctx)
        return self._final_numbers()

    def _final_numbers(self) -> dict[str, Any]:
        best = load_checkpoint(self.ckpt_dir / "best.pt", map_location=self.device)
        last_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        last_method = copy.deepcopy(self.method.state_dict()) if "method" in best else None
        self.model.load_state_dict(best["model"])
        if last_method is not None:
            self.method.load_state_dict(best["method"])
        out = {"best_epoch": best["epoch"], "select_metric": self.cfg.select_metric,
               # the training split in eval mode: the train/val gap of the selected epoch
               "train": self._evaluate("diag_train"), "val": self._evaluate("val"),
               "test": self._evaluate("test")}
        self.model.load_state_dict(last_state)
        if last_method is not None:
            self.method.load_state_dict(last_method)
        out["test_last_epoch"] = self._evaluate("test")
        return out


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
