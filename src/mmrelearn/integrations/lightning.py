"""Diagnosing & Re-learning as a PyTorch Lightning callback.

``trainer = Trainer(callbacks=[DiagnoseRelearnCallback(num_classes=10)])`` runs Algorithm 1 of
the paper in any LightningModule whose encoders are reachable as ``{modality: module}``. The
callback wraps :class:`mmrelearn.relearn.DiagnoseRelearn`: the diagnosis (Eqs. 1-5) and the
soft re-initialisation (Eq. 6) are the library's, only the plumbing is Lightning's.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Union

from torch import nn
from torch.utils.data import DataLoader, IterableDataset, RandomSampler

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import move_data_to_device
except ImportError as err:  # pragma: no cover - exercised by a test that hides lightning
    raise ImportError(
        "mmrelearn.integrations.lightning needs PyTorch Lightning (the `lightning` package, "
        "version 2.1 or later): pip install 'mmrelearn[lightning]'") from err

from ..config import check_number
from ..relearn import DiagnoseRelearn, DiagnosisReport, ModalityDiagnosis, check_relearn_options

__all__ = ["DiagnoseRelearnCallback"]

log = logging.getLogger(__name__)

WHERE = "DiagnoseRelearnCallback: "
EncodersArg = Union[str, Callable[["pl.LightningModule"], Mapping[str, nn.Module]]]
FeaturesArg = Callable[["pl.LightningModule", Any], tuple[Mapping[str, Any], Any]]


class _Deferred:
    """An iterable that finds its loader only when iterated (the trainer loads data late)."""

    def __init__(self, resolve: Callable[[], Iterable]) -> None:
        self.resolve = resolve

    def __iter__(self) -> Iterator:
        return iter(self.resolve())


def _fixed_order(loader: Any, split: str) -> DataLoader:
    """A copy of the trainer's ``split`` loader that visits its whole dataset in index order.

    The training loader usually shuffles (and may drop its last batch); the diagnosis must see
    every sample in the same order at every diagnosis and after a resume.
    """
    hint = f"pass {split}_loader= to DiagnoseRelearnCallback"
    if not isinstance(loader, DataLoader):
        raise ValueError(f"{WHERE}the trainer's {split} data is a {type(loader).__name__}, not "
                         f"one torch DataLoader; {hint} (a fixed-order iterable of batches)")
    if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
        raise ValueError(f"{WHERE}cannot rebuild the trainer's {split} DataLoader in a fixed "
                         f"order (an IterableDataset or a custom batch_sampler); {hint}")
    return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False,
                      drop_last=False, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory)


def _check_not_shuffled(loader: Optional[Iterable], split: str) -> None:
    if isinstance(loader, DataLoader) and isinstance(loader.sampler, RandomSampler):
        raise ValueError(f"{WHERE}{split}_loader shuffles; the diagnosis needs a fixed order "
                         "(build it with shuffle=False)")


class DiagnoseRelearnCallback(pl.Callback):
    """D&R (paper Algorithm 1) for a LightningModule, through :class:`DiagnoseRelearn`.

    At fit start, before any step, it snapshots the encoders' weights (theta_init). At the end
    of every training epoch ``t`` (0-based ``trainer.current_epoch``) with ``t % every == 0``
    and ``t > 0`` (at most ``max_times`` times) it clusters each encoder's features on the
    training and validation splits (eval mode, no gradients), logs P_train, P_val, the gap and
    alpha = strength(lam * gap) through ``pl_module.log``, and moves each encoder toward
    theta_init by alpha (Eq. 6). Its state (theta_init, the count, the reports) travels in
    Lightning checkpoints. The test split is never read.

    Args:
        num_classes: number of classes (k of k-means).
        encoders: the LightningModule attribute holding ``{modality: encoder}`` (an
            ``nn.ModuleDict`` or a dict), or a callable ``pl_module -> {modality: encoder}``.
        features: ``(pl_module, batch) -> ({modality: (B, d) features}, (B,) labels)``, the
            batch already on the module's device; by default a batch is ``(inputs, labels)``
            with ``inputs[modality]`` fed to that modality's encoder.
        train_loader: a fixed-order iterable over the training split; by default the trainer's
            training DataLoader rebuilt without shuffling and without dropping the last batch.
        val_loader: likewise for the validation split; by default the trainer's validation
            DataLoader (of ``trainer.fit``, never a test loader) rebuilt in order.
        lam, every, max_times, strength, n_init, kmeans_seed, scale, max_samples, sample_seed,
            buffers, momentum: as :class:`DiagnoseRelearn` (``momentum="reset"`` drops the
            state of the trainer's single optimizer for re-initialised parameters).
        log_prefix: logged names are ``<log_prefix>/<modality>/<p_train|p_val|gap|alpha>`` and
            ``<log_prefix>/times_applied``; also this callback's key in checkpoints.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        encoders: EncodersArg = "encoders",
        features: Optional[FeaturesArg] = None,
        train_loader: Optional[Iterable] = None,
        val_loader: Optional[Iterable] = None,
        lam: float = 3.0,
        every: int = 20,
        max_times: Optional[int] = 3,
        strength: Union[str, Callable[[float], float]] = "tanh",
        n_init: int = 1,
        kmeans_seed: int = 0,
        scale: str = "minmax",
        max_samples: Optional[int] = None,
        sample_seed: int = 0,
        buffers: str = "keep",
        momentum: str = "keep",
        log_prefix: str = "dnr",
    ) -> None:
        check_number(f"{WHERE}num_classes", num_classes, low=2, integer=True)
        self.options = dict(lam=lam, every=every, max_times=max_times, strength=strength,
                            n_init=n_init, kmeans_seed=kmeans_seed, scale=scale,
                            max_samples=max_samples, sample_seed=sample_seed, buffers=buffers,
                            momentum=momentum)
        check_relearn_options(WHERE, **self.options)  # errors now, not H epochs into a run
        if not (isinstance(encoders, str) or callable(encoders)):
            raise ValueError(f"{WHERE}encoders must be an attribute name or a callable "
                             f"pl_module -> {{modality: encoder}}, got {encoders!r}")
        _check_not_shuffled(train_loader, "train")
        _check_not_shuffled(val_loader, "val")
        self.num_classes = num_classes
        self.encoders, self.features = encoders, features
        self.train_loader, self.val_loader = train_loader, val_loader
        self.log_prefix = log_prefix
        self.dnr: Optional[DiagnoseRelearn] = None  # built at fit start
        self.reports: list[DiagnosisReport] = []  # every diagnosis, in order
        self._pending: Optional[Mapping[str, Any]] = None  # a checkpoint's state before fit

    @property
    def state_key(self) -> str:
        return self._generate_state_key(log_prefix=self.log_prefix)

    @property
    def times_applied(self) -> int:
        """How many re-initialisations have been applied so far."""
        return 0 if self.dnr is None else self.dnr.times_applied

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Build the DiagnoseRelearn object; snapshot theta_init unless a checkpoint gave it."""
        encoders = self._resolve_encoders(pl_module)
        state = self._pending if self._pending is not None else (
            self.state_dict() if self.dnr is not None else None)  # a second fit continues
        if state is None and trainer.ckpt_path is not None \
                and not trainer.strategy.restore_checkpoint_after_setup:
            log.warning("%sresuming from %s, which holds no state of this callback: the "
                        "restored (trained) encoder weights become theta_init",
                        WHERE, trainer.ckpt_path)
        optimizer = None
        if self.options["momentum"] == "reset":
            if len(trainer.optimizers) != 1:
                raise ValueError(f"{WHERE}momentum='reset' needs exactly one optimizer, the "
                                 f"trainer has {len(trainer.optimizers)}")
            optimizer = trainer.optimizers[0]
        self.dnr = DiagnoseRelearn(
            encoders, self.num_classes,
            self.train_loader if self.train_loader is not None else _Deferred(
                lambda: _fixed_order(trainer.train_dataloader, "train")),
            self.val_loader if self.val_loader is not None else _Deferred(
                lambda: _fixed_order(self._fit_val_loader(trainer), "val")),
            features=self._feature_fn(pl_module), optimizer=optimizer, device=pl_module.device,
            init_states=None if state is None else state["dnr"]["init_states"], **self.options)
        if state is not None:
            self._load(state)
        self._pending = None

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Diagnose and re-initialise if epoch ``trainer.current_epoch`` is due; log the result."""
        epoch = trainer.current_epoch
        if not self.dnr.should_act(epoch):
            return
        report = self.dnr.diagnose(epoch)
        # every rank diagnoses the whole splits; rank 0's alphas keep the replicas identical
        report = trainer.strategy.broadcast(report, src=0)
        self.reports.append(self.dnr.relearn(report))
        for m, d in report.modalities.items():
            for key in ("p_train", "p_val", "gap", "alpha"):
                pl_module.log(f"{self.log_prefix}/{m}/{key}", getattr(d, key),
                              on_step=False, on_epoch=True)
        pl_module.log(f"{self.log_prefix}/times_applied", float(self.dnr.times_applied),
                      on_step=False, on_epoch=True)

    def state_dict(self) -> dict[str, Any]:
        if self.dnr is None:  # before fit start: whatever a checkpoint gave, or nothing
            return dict(self._pending) if self._pending is not None else {}
        return {"dnr": self.dnr.state_dict(), "reports": [r.to_dict() for r in self.reports]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.dnr is None:  # the usual order: checkpoints are restored before on_fit_start
            self._pending = state_dict
        else:  # strategies that restore after setup
            self._load(state_dict)

    def _load(self, state: Mapping[str, Any]) -> None:
        self.dnr.load_state_dict(state["dnr"])
        self.reports = [_report(r) for r in state["reports"]]

    def _resolve_encoders(self, pl_module: "pl.LightningModule") -> dict[str, nn.Module]:
        if isinstance(self.encoders, str):
            if not hasattr(pl_module, self.encoders):
                raise ValueError(
                    f"{WHERE}{type(pl_module).__name__} has no attribute {self.encoders!r}; "
                    "pass encoders='<attribute>' or a callable pl_module -> {modality: encoder}")
            encoders = getattr(pl_module, self.encoders)
        else:
            encoders = self.encoders(pl_module)
        if isinstance(encoders, nn.ModuleDict):  # not a Mapping subclass
            encoders = dict(encoders.items())
        if not isinstance(encoders, Mapping) or not encoders or not all(
                isinstance(e, nn.Module) for e in encoders.values()):
            raise ValueError(f"{WHERE}encoders must give a non-empty {{modality: nn.Module}}, "
                             f"got {type(encoders).__name__}")
        return dict(encoders)

    def _feature_fn(self, pl_module: "pl.LightningModule") -> Optional[Callable]:
        if self.features is None:
            return None  # DiagnoseRelearn's default: (inputs, labels) batches
        fn = self.features
        return lambda batch: fn(pl_module, move_data_to_device(batch, pl_module.device))

    @staticmethod
    def _fit_val_loader(trainer: "pl.Trainer") -> Any:
        # The fit loop's own validation loader: trainer.val_dataloaders would fall back to a
        # loader given to trainer.validate(), which may be a test set.
        combined = trainer.fit_loop.epoch_loop.val_loop._combined_loader
        if combined is None:
            raise ValueError(
                f"{WHERE}the trainer has no validation DataLoader loaded at epoch "
                f"{trainer.current_epoch} (none given to fit, no validation_step, "
                "limit_val_batches=0, or no validation run yet); pass val_loader=")
        return combined.iterables


def _report(d: Mapping[str, Any]) -> DiagnosisReport:
    mods = {m: ModalityDiagnosis(**v) for m, v in d["modalities"].items()}
    return DiagnosisReport(epoch=d["epoch"], applied=d["applied"], modalities=mods,
                           n_train=d["n_train"], n_val=d["n_val"])
