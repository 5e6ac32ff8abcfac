"""Re-learning: soft re-initialisation of encoders, and the drop-in D&R object.

Paper Sec. 3.3, Eq. 6 and Algorithm 1. ``DiagnoseRelearn`` plugs into any PyTorch training
loop: call ``step(epoch)`` at the end of every epoch.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, SequentialSampler, Subset

from . import distributed
from .config import check_choice, check_number
from .diagnose import STRENGTH_FUNCTIONS, cluster_purity, purity_gap, reinit_strength

__all__ = [
    "snapshot",
    "soft_reinit_",
    "reset_optimizer_state",
    "ModalityDiagnosis",
    "DiagnosisReport",
    "DiagnoseRelearn",
    "default_features",
    "extract_features",
    "measure_purities",
    "model_features",
    "check_relearn_options",
]

log = logging.getLogger(__name__)

BUFFER_MODES = ("keep", "interpolate")


def check_relearn_options(where: str, *, lam: float, every: int, max_times: Optional[int],
                          strength: Union[str, Callable[[float], float]], n_init: int,
                          kmeans_seed: int, scale: str, max_samples: Optional[int],
                          buffers: str, momentum: str, sample_seed: int = 0) -> None:
    """Check D&R's options (ranges, not only types); the error (a ValueError) names
    ``where + key``, e.g. ``"method.lam must be a number >= 0, got -1"``."""
    check_number(f"{where}lam", lam, low=0)  # Eq. 5: lambda >= 0 (0 never re-initialises)
    check_number(f"{where}every", every, low=1, integer=True)
    check_number(f"{where}max_times", max_times, low=0, integer=True, null=True)
    if not callable(strength):
        check_choice(f"{where}strength", strength, sorted(STRENGTH_FUNCTIONS))
    check_number(f"{where}n_init", n_init, low=1, integer=True)
    for key, seed in (("kmeans_seed", kmeans_seed), ("sample_seed", sample_seed)):
        check_number(f"{where}{key}", seed, low=0, high=2**32 - 1, integer=True)
    check_choice(f"{where}scale", scale, ("minmax", "none"))
    check_number(f"{where}max_samples", max_samples, low=1, integer=True, null=True)
    check_choice(f"{where}buffers", buffers, BUFFER_MODES)
    check_choice(f"{where}momentum", momentum, ("keep", "reset"))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer of ``module`` (theta_init)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@torch.no_grad()
def soft_reinit_(
    module: nn.Module,
    init_state: Mapping[str, torch.Tensor],
    alpha: float,
    *,
    buffers: str = "keep",
) -> None:
    """theta <- (1 - alpha) * theta + alpha * theta_init for every parameter, in place (Eq. 6).

    Args:
        module: the encoder to re-initialise.
        init_state: its snapshot taken right after construction (see :func:`snapshot`).
        alpha: strength in [0, 1]; 0 leaves the module unchanged, 1 restores theta_init.
        buffers: ``"keep"`` leaves floating-point buffers (BatchNorm running mean/var) alone, as
            the authors' release does; ``"interpolate"`` applies Eq. 6 to them too.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"soft_reinit_: alpha must lie in [0, 1], got {alpha}")
    if buffers not in BUFFER_MODES:
        raise ValueError(f"soft_reinit_: buffers must be one of {BUFFER_MODES}, got {buffers!r}")
    tensors: list[tuple[str, torch.Tensor]] = list(module.named_parameters())
    if buffers == "interpolate":
        tensors += [(n, b) for n, b in module.named_buffers() if b.is_floating_point()]
    for name, t in tensors:
        if name not in init_state:
            raise KeyError(f"soft_reinit_: the initial state has no entry {name!r}")
        init = init_state[name].to(device=t.device, dtype=t.dtype)
        t.mul_(1.0 - alpha).add_(init, alpha=alpha)


def reset_optimizer_state(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter]) -> int:
    """Forget the optimizer state (e.g. SGD momentum) of ``params``; returns how many were reset."""
    n = 0
    for p in params:
        if p in optimizer.state:
            del optimizer.state[p]
            n += 1
    return n


@dataclass
class ModalityDiagnosis:
    """One modality's diagnosis: purities (Eq. 3), gap (Eq. 4), strength (Eq. 5)."""

    p_train: float
    p_val: float
    gap: float
    alpha: float


@dataclass
class DiagnosisReport:
    """What one diagnosis found and whether the encoders were re-initialised."""

    epoch: int
    applied: bool
    modalities: dict[str, ModalityDiagnosis] = field(default_factory=dict)
    n_train: int = 0  # samples clustered per modality on the training split
    n_val: int = 0  # ... and on the validation split

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Batch = Any
FeatureFn = Callable[[Batch], tuple[Mapping[str, torch.Tensor], torch.Tensor]]


def default_features(encoders: Mapping[str, nn.Module], device: torch.device) -> FeatureFn:
    """Feature function for batches shaped ``(inputs: {modality: tensor}, labels)``."""

    def features(batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        inputs, labels = batch
        return {m: enc(inputs[m].to(device)) for m, enc in encoders.items()}, labels

    return features


def model_features(model: nn.Module, device: torch.device) -> FeatureFn:
    """Feature function through ``model.encode`` (so mid-fusion models give their features)."""

    def features(batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        inputs, labels = batch
        return model.encode({m: x.to(device) for m, x in inputs.items()}), labels

    return features


def _fixed_order_size(loader: Iterable) -> Optional[int]:
    """Samples of a DataLoader that visits its whole map-style dataset in index order, in
    batches of ``batch_size`` (the trainer's diagnosis loaders); ``None`` for anything else."""
    if (isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset)
            and isinstance(loader.sampler, SequentialSampler) and loader.batch_size is not None
            and not loader.drop_last):
        return len(loader.dataset)
    return None


def _subset_loader(loader: DataLoader, indices: list[int]) -> DataLoader:
    """``loader`` over ``indices`` of its dataset only, in that order, with its batch size,
    collation and workers. It shares ``loader``'s generator, which advances as one pass of
    ``loader`` would advance it (one base-seed draw)."""
    return DataLoader(Subset(loader.dataset, indices), batch_size=loader.batch_size,
                      shuffle=False, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      worker_init_fn=loader.worker_init_fn, generator=loader.generator,
                      timeout=loader.timeout, prefetch_factor=loader.prefetch_factor,
                      multiprocessing_context=loader.multiprocessing_context,
                      persistent_workers=loader.persistent_workers)


def _encode(encoders: Mapping[str, nn.Module], features: FeatureFn, loader: Iterable,
            device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every batch of ``loader`` through ``features``, encoders in eval mode (modes restored)."""
    feats: dict[str, list[torch.Tensor]] = {m: [] for m in encoders}
    labels = []
    modes = {m: e.training for m, e in encoders.items()}
    for e in encoders.values():
        e.eval()
    try:
        for batch in loader:
            f, y = features(batch)
            for m in encoders:
                feats[m].append(f[m].flatten(1).float())
            labels.append(torch.as_tensor(y).to(device))
    finally:
        for m, e in encoders.items():
            e.train(modes[m])
    # under DDP, over a loader whose batches are dealt to the ranks, every rank gets all of
    # them in the single process's order; otherwise the local concatenation
    return ({m: distributed.gather_batches(loader, v) for m, v in feats.items()},
            distributed.gather_batches(loader, labels))


@torch.no_grad()
def extract_features(
    encoders: Mapping[str, nn.Module],
    features: FeatureFn,
    loader: Iterable,
    device: torch.device,
    *,
    max_samples: Optional[int] = None,
    sample_seed: int = 0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every modality's features over ``loader``, encoders in eval mode, without gradients.

    Returns ``({modality: (N, d)}, (N,) labels)``; with ``max_samples`` a seeded random subset:
    the first ``max_samples`` positions of ``randperm(N)`` (generator seeded with
    ``sample_seed``), in that order. When ``loader`` is a DataLoader visiting its whole dataset
    in index order, only those samples are encoded (in index order, through a loader over
    them with the same batch size); any other iterable is encoded whole and then subsampled,
    with the same positions. Either way the samples and their order are the same; a sample's
    features may differ in the last float bits between the two, as it sits in another batch.
    The encoders' train/eval modes are restored afterwards. Under DDP, over a loader whose
    batches are dealt to the ranks (``mmrelearn.distributed``), each rank encodes its batches
    and every rank gets all of them, in the single process's order (a capped diagnosis there
    encodes every sample, then keeps the same positions).
    """
    n = _fixed_order_size(loader) if max_samples is not None else None
    if n is not None and n > max_samples:
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(sample_seed))
        order = keep[:max_samples].argsort()  # encode in index order ...
        out, y = _encode(encoders, features,
                         _subset_loader(loader, keep[:max_samples][order].tolist()), device)
        back = order.argsort().to(y.device)  # ... and put the samples back in keep's order
        return {m: v[back] for m, v in out.items()}, y[back]
    out, y = _encode(encoders, features, loader, device)
    if max_samples is not None and y.numel() > max_samples:
        gen = torch.Generator().manual_seed(sample_seed)
        keep = torch.randperm(y.numel(), generator=gen)[:max_samples].to(y.device)
        out, y = {m: v[keep] for m, v in out.items()}, y[keep]
    return out, y


def measure_purities(
    encoders: Mapping[str, nn.Module],
    features: FeatureFn,
    train_loader: Iterable,
    val_loader: Iterable,
    num_classes: int,
    device: torch.device,
    *,
    n_init: int = 1,
    seed: int = 0,
    scale: str = "minmax",
    max_samples: Optional[int] = None,
    sample_seed: int = 0,
) -> tuple[dict[str, tuple[float, float]], int, int]:
    """P_train and P_val (Eq. 3) of every modality; also the numbers of samples clustered.

    With several processes (``torch.distributed`` initialised) rank 0 clusters and every rank
    receives its numbers: call it on every rank.

    Returns ``({modality: (p_train, p_val)}, n_train, n_val)``.
    """
    kw = dict(max_samples=max_samples, sample_seed=sample_seed)
    f_tr, y_tr = extract_features(encoders, features, train_loader, device, **kw)
    f_va, y_va = extract_features(encoders, features, val_loader, device, **kw)
    km = dict(seed=seed, n_init=n_init, scale=scale)
    # under DDP rank 0 clusters and every rank receives its numbers: the same alphas for all
    out = distributed.from_main(lambda: {
        m: (cluster_purity(f_tr[m], y_tr, num_classes, **km),
            cluster_purity(f_va[m], y_va, num_classes, **km)) for m in encoders})
    return out, int(y_tr.numel()), int(y_va.numel())


class DiagnoseRelearn:
    """Diagnosing & Re-learning (Algorithm 1) as an object for any training loop.

    At the end of epoch ``t`` (0-based) with ``t % every == 0`` and ``t > 0`` (at most
    ``max_times`` times), each encoder's features are extracted in eval mode over the whole
    training and validation splits, clustered with k = ``num_classes``, and the encoder is
    softly re-initialised toward its initial weights with strength ``fn(lam * gap)``.

    Construct it right after building the model (it snapshots theta_init then), or pass
    ``init_states`` taken earlier.

    Args:
        encoders: modality name -> encoder module (only these are ever touched).
        num_classes: number of classes (k of k-means).
        train_loader: iterable over the training split (for the diagnosis).
        val_loader: iterable over the validation split (never the test split).
        lam: lambda of Eq. 5.
        every: H, the diagnosis period in epochs.
        max_times: cap on the number of re-initialisations (default 3, as in the authors'
            release; ``None``: no cap).
        features: ``batch -> ({modality: (B, d) features}, (B,) labels)``; by default a batch
            is ``(inputs, labels)`` and each encoder is applied to ``inputs[modality]``.
        strength: name of a strength function or a callable (paper footnote 4).
        n_init, kmeans_seed, scale: k-means settings (see :func:`cluster_purity`).
        max_samples: seeded cap on the samples clustered per split (``None``: all).
        buffers: BatchNorm running statistics, ``"keep"`` (release) or ``"interpolate"``.
        optimizer, momentum: with ``momentum="reset"`` the optimizer state of re-initialised
            parameters is dropped; ``"keep"`` (release) leaves it.
        device: where features are computed; default: the first encoder parameter's device.
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        num_classes: int,
        train_loader: Iterable,
        val_loader: Iterable,
        *,
        lam: float = 3.0,
        every: int = 20,
        max_times: Optional[int] = 3,
        features: Optional[FeatureFn] = None,
        strength: Union[str, Callable[[float], float]] = "tanh",
        n_init: int = 1,
        kmeans_seed: int = 0,
        scale: str = "minmax",
        max_samples: Optional[int] = None,
        sample_seed: int = 0,
        buffers: str = "keep",
        optimizer: Optional[torch.optim.Optimizer] = None,
        momentum: str = "keep",
        init_states: Optional[Mapping[str, Mapping[str, torch.Tensor]]] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        # checked here, not at the first diagnosis H epochs into a run
        check_relearn_options("DiagnoseRelearn: ", lam=lam, every=every, max_times=max_times,
                              strength=strength, n_init=n_init, kmeans_seed=kmeans_seed,
                              scale=scale, max_samples=max_samples, buffers=buffers,
                              momentum=momentum, sample_seed=sample_seed)
        if len(encoders) < 1:
            raise ValueError("DiagnoseRelearn needs at least one encoder")
        if momentum == "reset" and optimizer is None:
            raise ValueError("DiagnoseRelearn: momentum='reset' needs the optimizer")
        self.encoders = dict(encoders)
        self.num_classes = num_classes
        self.train_loader, self.val_loader = train_loader, val_loader
        self.lam, self.every, self.max_times = lam, every, max_times
        self.strength = strength
        self.n_init, self.kmeans_seed, self.scale = n_init, kmeans_seed, scale
        self.max_samples, self.sample_seed = max_samples, sample_seed
        self.buffers, self.optimizer, self.momentum = buffers, optimizer, momentum
        if device is None:
            first = next(iter(self.encoders.values()))
            device = next(first.parameters()).device
        self.device = torch.device(device)
        self.features = features or default_features(self.encoders, self.device)
        if init_states is None:
            init_states = {m: snapshot(e) for m, e in self.encoders.items()}
        self.init_states = {m: dict(s) for m, s in init_states.items()}
        self.times_applied = 0

    def should_act(self, epoch: int) -> bool:
        """True at the end of epoch ``epoch`` if a re-initialisation is due there."""
        capped = self.max_times is not None and self.times_applied >= self.max_times
        return epoch > 0 and epoch % self.every == 0 and not capped

    def diagnose(self, epoch: int = -1) -> DiagnosisReport:
        """Measure P_train, P_val, gap and alpha for every modality without changing anything."""
        purities, n_train, n_val = measure_purities(
            self.encoders, self.features, self.train_loader, self.val_loader, self.num_classes,
            self.device, n_init=self.n_init, seed=self.kmeans_seed, scale=self.scale,
            max_samples=self.max_samples, sample_seed=self.sample_seed)
        report = DiagnosisReport(epoch=epoch, applied=False, n_train=n_train, n_val=n_val)
        for m, (p_tr, p_va) in purities.items():
            gap = purity_gap(p_tr, p_va)
            alpha = reinit_strength(gap, self.lam, self.strength)
            report.modalities[m] = ModalityDiagnosis(p_tr, p_va, gap, alpha)
        return report

    def relearn(self, report: DiagnosisReport) -> DiagnosisReport:
        """Re-initialise each encoder with the report's alpha (Eq. 6) and mark it applied."""
        for m, diag in report.modalities.items():
            enc = self.encoders[m]
            soft_reinit_(enc, self.init_states[m], diag.alpha, buffers=self.buffers)
            if self.momentum == "reset":
                reset_optimizer_state(self.optimizer, enc.parameters())
        self.times_applied += 1
        report.applied = True
        log.info("D&R at epoch %d: %s", report.epoch,
                 ", ".join(f"{m} gap={d.gap:.3f} alpha={d.alpha:.3f}"
                           for m, d in report.modalities.items()))
        return report

    def step(self, epoch: int) -> Optional[DiagnosisReport]:
        """Call at the end of epoch ``epoch``: diagnose and re-learn if due, else return None."""
        if not self.should_act(epoch):
            return None
        return self.relearn(self.diagnose(epoch))

    def state_dict(self) -> dict[str, Any]:
        return {"times_applied": self.times_applied, "init_states": self.init_states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.times_applied = int(state["times_applied"])
        self.init_states = {m: dict(s) for m, s in state["init_states"].items()}
