"""Training in several processes under ``torchrun``: DistributedDataParallel (DDP) and the
collectives the trainer and the methods need.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), :func:`mmrelearn.train.train`
initialises ``torch.distributed`` (:func:`init_from_env`: gloo on CPU, NCCL on CUDA). In a
single process every helper here is the identity or the plain call, so a single process runs
the very code it ran before.

What each rank sees:

- training batches: every rank draws the single process's global batch of
  ``train.batch_size`` samples from the same seeded shuffle and trains on its contiguous part
  (:class:`SplitBatches`); gradients are summed weighted by each part's share of the batch
  (:class:`DDPStep`), so one step is the single process's step on the whole batch;
- fixed-order passes (evaluation, diagnosis, estimates): whole batches are dealt to the ranks
  in turn (:class:`DealtBatches`) and :func:`gather_batches` puts every rank's outputs back in
  batch order: every rank then holds exactly what a single process computes, with no padded
  duplicate counted.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, Sampler

from .config import ConfigError

__all__ = ["world_size", "rank", "is_main", "launched_world_size", "init_from_env",
           "destroy", "rank_device", "barrier", "all_reduce_sum", "reduce_floats", "from_main",
           "gather_objects", "SplitBatches", "DealtBatches", "gather_batches", "batch_share",
           "check_global_batch", "average_gradients", "sync_buffers", "DDPStep"]


def world_size() -> int:
    """Processes in the job (1 unless ``torch.distributed`` is initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (torchrun's ``RANK`` before / after the process group exists)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one process that writes the run directory and prints."""
    return rank() == 0


def launched_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def init_from_env(device: str) -> bool:
    """Initialise the default process group from torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) if it says there are
    several processes and no group exists yet; True if this call created it.

    ``device`` is ``train.device``: NCCL when it asks for CUDA (and this process then uses
    ``cuda:LOCAL_RANK``), gloo otherwise.
    """
    if launched_world_size() < 2 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise RuntimeError("torchrun started several processes, but this torch build has no "
                           "torch.distributed")
    if _wants_cuda(device) and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def destroy() -> None:
    """End the process group :func:`init_from_env` created."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str) -> torch.device:
    """This rank's device under DDP: ``cuda:LOCAL_RANK`` for ``cuda`` / ``auto`` with CUDA,
    else the CPU. ValueError for ``cuda:N``, which would put every rank on one GPU."""
    if device.startswith("cuda:"):
        raise ValueError(f"train.device: {device!r} under torchrun ({world_size()} processes) "
                         f"would put every process on one GPU; set cuda or auto (each process "
                         f"then uses cuda:LOCAL_RANK)")
    if _wants_cuda(device):
        if not torch.cuda.is_available():
            raise ValueError(f"train.device: {device!r} asked for, but CUDA is not available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a file the others read)."""
    if world_size() > 1:
        dist.barrier()


def _comm_device() -> torch.device:
    # NCCL moves CUDA tensors only; gloo CPU tensors
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over every rank (in place, returned); ``x`` itself in one process."""
    if world_size() == 1:
        return x
    y = x.to(_comm_device())
    dist.all_reduce(y)
    if y is not x:
        x.copy_(y)
    return x


def reduce_floats(values: Mapping[str, float]) -> dict[str, float]:
    """Each value summed over every rank (float64); the same values in one process. Every
    rank must pass the same keys in the same order (a rank that saw no batch passes zeros)."""
    if world_size() == 1:
        return dict(values)
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    return dict(zip(keys, all_reduce_sum(t).tolist()))


def from_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` computed on rank 0 and sent to every rank (e.g. k-means purities, so that
    every rank applies the very same numbers); the plain call in one process."""
    if world_size() == 1:
        return fn()
    box = [fn() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------- batches

class SplitBatches(Sampler[list[int]]):
    """This rank's contiguous part of every batch of ``batches`` (the single process's batch
    sampler, drawn identically on every rank): sizes ``n // W`` plus one for the first
    ``n % W`` ranks. ``len`` is the number of global batches."""

    def __init__(self, batches: BatchSampler, rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def _bounds(self, n: int) -> tuple[int, int]:
        q, r = divmod(n, self.world)
        lo = self.rank * q + min(self.rank, r)
        return lo, lo + q + (self.rank < r)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:  # lazily: the shuffle draws when the single process does
            lo, hi = self._bounds(len(batch))
            yield batch[lo:hi]

    def global_size(self, i: int) -> int:
        """Samples in global batch ``i`` (the last one may be smaller)."""
        b, n = self.batches.batch_size, len(self.batches.sampler)
        return min(b, n - i * b)


class DealtBatches(Sampler[list[int]]):
    """Fixed-order batches of ``batch_size`` over ``n`` samples, batch ``i`` going to rank
    ``i % W`` (a rank may get none); :func:`gather_batches` undoes the dealing."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int) -> None:
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.num_batches = -(-n // batch_size)

    def __len__(self) -> int:
        return len(range(self.rank, self.num_batches, self.world))

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(self.rank, self.num_batches, self.world):
            yield list(range(i * self.batch_size, min(self.n, (i + 1) * self.batch_size)))


def gather_batches(loader: Iterable, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(parts)`` of the outputs of every batch of ``loader``, in batch order.

    ``parts`` holds one tensor per batch this rank iterated (any leading size, equal trailing
    sizes and dtype across ranks). Over a :class:`DealtBatches` loader under DDP, every rank's
    parts are gathered and interleaved back into the single process's order (on the device of
    the first part); otherwise (one process, or any other loader) the local concatenation.
    """
    sampler = getattr(loader, "batch_sampler", None)
    if world_size() == 1 or not isinstance(sampler, DealtBatches):
        return torch.cat(list(parts))
    # shapes (and dtype) of every rank's parts first: a rank may hold no batch at all
    meta = gather_objects(([tuple(p.shape) for p in parts],
                           str(parts[0].dtype).removeprefix("torch.") if parts else None))
    dtype = getattr(torch, next(d for _, d in meta if d is not None))
    comm = _comm_device()
    device = parts[0].device if parts else comm
    sizes = [sum(_numel(s) for s in shapes) for shapes, _ in meta]
    flat = torch.zeros(max(sizes), dtype=dtype, device=comm)
    if parts:
        local = torch.cat([p.reshape(-1) for p in parts]).to(comm)
        flat[:local.numel()] = local
    buffers = [torch.empty_like(flat) for _ in range(world_size())]
    dist.all_gather(buffers, flat)
    offsets, out = [0] * world_size(), []
    for i in range(sampler.num_batches):  # batch i came from rank i % W
        r = i % sampler.world
        shape = meta[r][0][i // sampler.world]
        out.append(buffers[r][offsets[r]:offsets[r] + _numel(shape)].reshape(shape))
        offsets[r] += _numel(shape)
    return torch.cat(out).to(device)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def batch_share(loader: Iterable, i: int, n_local: int) -> float:
    """This rank's share ``n_local / n_global`` of batch ``i`` of a :class:`SplitBatches`
    loader; 1.0 for any other loader (one process)."""
    sampler = getattr(loader, "batch_sampler", None)
    if not isinstance(sampler, SplitBatches):
        return 1.0
    return n_local / sampler.global_size(i)


def check_global_batch(batch_size: int, n_train: int, world: int) -> None:
    """ConfigError naming ``train.batch_size`` unless every rank gets samples of every batch."""
    if batch_size % world:
        raise ConfigError(f"train.batch_size is the global batch, split across the {world} "
                         f"processes: {batch_size} is not divisible by {world}; choose a "
                         f"multiple of {world}")
    last = n_train % batch_size
    if 0 < last < world:
        raise ConfigError(f"train.batch_size: the training split has {n_train} samples, so its "
                         f"last batch of {batch_size} holds {last}, fewer than the {world} "
                         f"processes; choose a batch size whose remainder is 0 or >= {world}")


# ---------------------------------------------------------------- gradients and buffers

def average_gradients(params: Iterable[nn.Parameter], share: float) -> None:
    """Replace every gradient by the sum over ranks of ``share * grad`` (one all-reduce): the
    whole batch's mean gradient after a backward of this rank's mean loss, for a step taken
    outside DDP (e.g. G-Blending's copies). Nothing in one process."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]  # the same set on every rank
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]) * share
    all_reduce_sum(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def sync_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank; nothing in one process.

    Each rank's training forwards update them from its own part of the batch (there is no
    SyncBatchNorm here), so they are made equal before evaluation and checkpoints."""
    if world_size() == 1:
        return
    comm = _comm_device()
    for b in module.buffers():
        t = b.to(comm)
        dist.broadcast(t, src=0)
        if t is not b:
            b.copy_(t)


class _Closure(nn.Module):
    """The module DDP wraps: it holds the model and its forward runs a closure, so that DDP
    sees the whole training step's graph (forward and loss terms) whatever path the method
    takes through the model (extra passes, sub-modules called directly)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, step: Callable[[], Any]) -> Any:
        return step()


class DDPStep:
    """The model in ``DistributedDataParallel`` for the training step (``ctx.ddp``).

    ``ddp(step)`` runs ``step()`` (forward and loss terms) through DDP; the backward of its
    result then sums every gradient over the ranks, each rank's weighted by ``share()`` (its
    part of the global batch), so uneven parts of a last batch still give the whole batch's
    mean gradient. ``find_unused_parameters=True``: methods leave parameters without
    gradients in some steps (probes, extra modules, re-balanced branches). Parameters stay
    those of ``model`` (checkpoints hold ``model.state_dict()``, without a ``module.`` prefix).
    """

    def __init__(self, model: nn.Module, device: torch.device,
                 share: Callable[[], float]) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.share = share
        self.module = DistributedDataParallel(
            _Closure(model), device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
        self.module.register_comm_hook(self, DDPStep._weighted_sum)

    def __call__(self, step: Callable[[], Any]) -> Any:
        return self.module(step)

    @staticmethod
    def _weighted_sum(state, bucket):  # DDP checks the annotations: none (future strings)
        buf = bucket.buffer()
        buf.mul_(state.share())
        return dist.all_reduce(buf, async_op=True).get_future().then(lambda f: f.value()[0])
