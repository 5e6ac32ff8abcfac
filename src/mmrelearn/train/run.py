"""Assemble a run from a :class:`~mmrelearn.config.Config` and execute it in a run directory."""
from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import yaml
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from .. import distributed as dist
from ..config import Config, ConfigError, config_from_dict, config_to_dict
from ..data import DataBundle, build_data
from ..methods import METHODS, Method
from ..report import total_passes
from ..models import build_model
from .checkpoint import (atomic_write_text, read_jsonl, remove_temporaries, rng_state,
                         set_rng_state, truncate_jsonl)
from .loop import Trainer, seed_everything
from .plots import plot_run

__all__ = ["build_method", "build_data_for", "build_trainer", "train", "load_run_config",
           "RunExistsError", "run_or_reuse", "prerequisite_configs", "WithIndex",
           "drop_absent_noise"]

log = logging.getLogger(__name__)


class RunExistsError(FileExistsError):
    """The run directory already holds a run; resume it or choose another name."""


def resolve_device(name: str) -> torch.device:
    if dist.world_size() > 1:  # torchrun: cuda:LOCAL_RANK or the CPU
        try:
            return dist.rank_device(name)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"train.device: {name!r} is not auto, cpu, cuda or cuda:N "
                          f"({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but CUDA is not available")
    return dev


def build_method(cfg: Config) -> Method:
    params = {k: v for k, v in cfg.method.items() if k != "name"}
    return METHODS[cfg.method["name"]](**params)


def build_data_for(cfg: Config, method: Method) -> DataBundle:
    """The data of a run: the same splits for every method given the same data config."""
    opts = {k: v for k, v in cfg.data.items() if k != "name"}
    data = build_data(cfg.data["name"], holdout_fraction=method.holdout_fraction, **opts)
    for split in ("val", "test"):
        if len(getattr(data, split)) == 0:
            raise ValueError(f"data: the {split} split of {cfg.data['name']!r} is empty; raise "
                             f"data.{split}_fraction (or choose other groups)")
    return data


def _optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    raise ConfigError(f"optim.name: {o.name!r} is not one of ['adam', 'adamw', 'sgd']")


def _scheduler(cfg: Config, optimizer: torch.optim.Optimizer):
    s = cfg.schedule
    if s.name == "none":
        return None
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=cfg.train.epochs, eta_min=s.min_lr)
    raise ConfigError(f"schedule.name: {s.name!r} is not one of ['cosine', 'none', 'step']")


def _one_thread(worker_id: int) -> None:
    # each loader worker decodes one sample at a time: intra-op threads only compete for cores
    torch.set_num_threads(1)


class WithIndex(Dataset):
    """A dataset whose items also carry their index: ``(inputs, label, index)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        inputs, y = self.dataset[i]
        return inputs, y, i


def _loaders(cfg: Config, data: DataBundle, gen: torch.Generator,
             with_index: bool = False) -> dict[str, DataLoader]:
    t = cfg.train
    kw: dict = dict(num_workers=t.num_workers)
    if t.num_workers > 0:
        kw.update(worker_init_fn=_one_thread)
    world, rank = dist.world_size(), dist.rank()
    def fixed_order(dataset) -> DataLoader:
        # A loader without a generator draws its iterator's base seed from the GLOBAL RNG
        # each time it is iterated, which would move later dropout masks; each gets its own.
        own = torch.Generator().manual_seed(cfg.seed)
        if world > 1:  # DDP: whole batches dealt to the ranks, gathered back in order
            dealt = dist.DealtBatches(len(dataset), t.eval_batch_size, rank, world)
            return DataLoader(dataset, batch_sampler=dealt, generator=own, **kw)
        return DataLoader(dataset, batch_size=t.eval_batch_size, generator=own, **kw)

    # a method may ask for each sample's index (methods/base.py: wants_sample_index)
    train_set = WithIndex(data.train) if with_index else data.train
    if world > 1:  # DDP: the single process's shuffled batches, each split across the ranks
        dist.check_global_batch(t.batch_size, len(train_set), world)
        batches = BatchSampler(RandomSampler(train_set, generator=gen), t.batch_size, False)
        train = DataLoader(train_set, batch_sampler=dist.SplitBatches(batches, rank, world),
                           generator=gen, **kw)
    else:
        train = DataLoader(train_set, batch_size=t.batch_size, shuffle=True, generator=gen,
                           **kw)
    loaders = {
        "train": train,
        "diag_train": fixed_order(data.train),
        "val": fixed_order(data.val),
        "test": fixed_order(data.test),
    }
    if data.holdout is not None:
        loaders["holdout"] = fixed_order(data.holdout)
    return loaders


def build_trainer(cfg: Config, run_dir: Path) -> Trainer:
    """Data, model (seeded), method, optimizer, scheduler and loaders -> a :class:`Trainer`."""
    seed_everything(cfg.seed, cfg.train.deterministic)
    device = resolve_device(cfg.train.device)
    method = build_method(cfg)
    if dist.world_size() > 1 and not method.supports_ddp:
        raise ConfigError(
            f"method.name: {cfg.method['name']!r} is not supported under DDP (torchrun with "
            f"{dist.world_size()} processes): it reads batch statistics or steps in ways not "
            f"reduced across processes yet; run it in one process. Supported there: "
            f"{sorted(n for n, c in METHODS.items() if c.supports_ddp)}")
    data = build_data_for(cfg, method)
    model_kw = {"fusion": cfg.model.fusion, "fusion_dim": cfg.model.fusion_dim,
                "unimodal_heads": cfg.model.unimodal_heads, "mbt": cfg.model.mbt,
                **method.model_overrides()}
    missing = sorted(set(data.modalities) - set(cfg.model.encoders))
    if missing:
        raise ConfigError(f"model.encoders: no encoder for modality {missing}; "
                          f"the data has {data.modalities}")
    encoders = {m: cfg.model.encoders[m] for m in data.modalities}
    torch.manual_seed(cfg.seed)  # the model's initial weights depend on the seed only
    model = build_model(encoders, data.input_shapes, data.num_classes, **model_kw)
    extra = method.extra_modules(model, data.num_classes)
    if extra:  # trained, saved and restored with the model (methods/base.py)
        model.method_modules = torch.nn.ModuleDict(extra)
    model = model.to(device)
    optimizer = _optimizer(cfg, model.parameters())
    gen = torch.Generator().manual_seed(cfg.seed)
    loaders = _loaders(cfg, data, gen, with_index=method.wants_sample_index)
    return Trainer(model, method, optimizer, _scheduler(cfg, optimizer), loaders,
                   data.num_classes, cfg.train, run_dir, device, gen)


def load_run_config(run_dir: Union[str, Path]) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {path} is missing")
    return config_from_dict(yaml.safe_load(path.read_text()))


def _has_finished_epoch(run_dir: Path) -> bool:
    """A checkpoint, or at least one complete line in metrics.jsonl."""
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return True
    metrics = run_dir / "metrics.jsonl"
    text = metrics.read_text() if metrics.is_file() else ""
    return bool(text[:text.rfind("\n") + 1].strip())  # a line cut by a kill does not count


def _start_run_dir(cfg: Config, run_dir: Path) -> None:
    """Create the run directory and its config.yaml (called once everything is built)."""
    if (run_dir / "config.yaml").exists():
        log.warning("%s holds a config.yaml but no finished epoch (a start that stopped "
                    "early): replacing it with the new run", run_dir)
        for name in ("metrics.jsonl", "reports.jsonl", "checkpoints/best.pt"):
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
                      run_dir / "config.yaml")


def train(cfg: Optional[Config] = None, *, run_dir: Optional[Union[str, Path]] = None,
          resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a training run; returns the summary also written to summary.json.

    A new run goes to ``run_dir`` (default ``output_dir/name/seed{seed}``), which must not hold a
    run with a finished epoch already (one holding a config but no finished epoch is
    replaced). The directory is created only once data, model and method have been built, so
    a bad config value leaves nothing behind. ``resume=True`` continues the run in ``run_dir``
    from its last checkpoint using the config stored there (from scratch when no epoch
    finished); a finished run is returned unchanged.

    Launched by torchrun with several processes, it initialises ``torch.distributed`` (if
    not yet done) and trains with DDP (``mmrelearn.distributed``): every rank runs this
    function, rank 0 alone writes the run directory, every rank reads it back.
    """
    if resume:
        run_dir = Path(run_dir)
        cfg = load_run_config(run_dir)
        if (run_dir / "summary.json").is_file():
            log.info("%s is already finished", run_dir)
            return json.loads((run_dir / "summary.json").read_text())
    else:
        run_dir = Path(run_dir or Path(cfg.output_dir) / cfg.name / f"seed{cfg.seed}")
        if (run_dir / "config.yaml").exists() and _has_finished_epoch(run_dir):
            raise RunExistsError(f"{run_dir} already holds a run; resume it with "
                                 f"--resume {run_dir}, or set another name/output_dir")
    started_group = dist.init_from_env(cfg.train.device)  # torchrun with WORLD_SIZE > 1
    trainer = build_trainer(cfg, run_dir)  # every bad value raises here: nothing written yet
    state = rng_state()  # checking a prerequisite builds it, which reseeds
    prerequisites = prerequisite_configs(cfg, trainer.method, run_dir)  # checked, not yet run
    set_rng_state(state)
    dist.barrier()  # every rank has checked run_dir before rank 0 writes to it
    if dist.is_main():
        if not resume:
            _start_run_dir(cfg, run_dir)
        for folder in (run_dir, run_dir / "checkpoints"):
            remove_temporaries(folder)  # left by a process killed inside an atomic write
        if resume and not (run_dir / "checkpoints" / "last.pt").is_file():
            # no epoch finished: start over, dropping lines of the epoch that stopped
            for name in ("metrics.jsonl", "reports.jsonl"):
                truncate_jsonl(run_dir / name, -1)
    dist.barrier()
    if resume and (run_dir / "checkpoints" / "last.pt").is_file():
        trainer.resume()
    state = rng_state()  # a prerequisite trained now or reused: the same run afterwards
    done = {name: train_prerequisite(raw, d) for name, (raw, d) in prerequisites.items()}
    set_rng_state(state)
    trainer.ctx.extras["prerequisites"] = {name: d for name, (_, d) in prerequisites.items()}
    t0 = time.perf_counter()
    numbers = trainer.fit()
    summary = _summary(cfg, run_dir, numbers, time.perf_counter() - t0)
    if done:  # which runs this one used, relative to its directory, and their passes
        summary["prerequisites"] = {name: str(d.relative_to(run_dir))
                                    for name, (_, d) in prerequisites.items()}
        summary["passes"]["prerequisites"] = sum(total_passes(s) for s in done.values())
        summary["passes"]["total"] += summary["passes"]["prerequisites"]
    if dist.is_main():
        plot_run(run_dir)
        atomic_write_text(json.dumps(summary, indent=2), run_dir / "summary.json")
    dist.barrier()  # the run is finished (summary.json written) for every rank
    if started_group:
        dist.destroy()
    return summary


def _merge(base: dict, partial: Mapping[str, Any]) -> dict:
    """``partial`` over ``base``: sections merged key by key, except ``method``, replaced."""
    out = copy.deepcopy(base)
    for key, value in partial.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key != "method":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def drop_absent_noise(raw: dict) -> dict:
    """``raw`` without a ``data.noise`` on a modality its ``data.modalities`` leave out (a run
    on fewer modalities, e.g. a uni-modal teacher: the noise degrades a modality it does not
    have); returned as given otherwise."""
    data = raw.get("data", {})
    noise, mods = data.get("noise"), data.get("modalities")
    if isinstance(noise, Mapping) and mods is not None and noise.get("modality") not in mods:
        raw = {**raw, "data": {**data, "noise": None}}
    return raw


def prerequisite_configs(cfg: Config, method: Method, run_dir: Path
                         ) -> dict[str, tuple[dict, Path]]:
    """The method's prerequisite runs: name -> (raw config, run directory). Each one not
    finished yet is built (data, model, method) to check it, so a bad one raises ConfigError
    naming the prerequisite before any directory is written."""
    out = {}
    for name, partial in method.prerequisites().items():
        raw = drop_absent_noise(_merge(config_to_dict(cfg), partial))
        raw["name"] = f"{cfg.name}-{name}"
        d = Path(run_dir) / "prerequisites" / name
        if not (d / "summary.json").is_file():
            try:
                build_trainer(config_from_dict(raw), d)  # writes nothing
            except (ConfigError, ValueError, TypeError, FileNotFoundError) as err:
                raise ConfigError(f"{cfg.method['name']}: prerequisite run {name!r}: "
                                  f"{err}") from None
        out[name] = (raw, d)
    return out


def train_prerequisite(raw: dict, run_dir: Path) -> dict[str, Any]:
    """A prerequisite run: trained, resumed or reused (see :func:`run_or_reuse`)."""
    return run_or_reuse(raw, run_dir)


def _without_device(raw: dict) -> dict:
    """A stored config for comparison: ``train.device`` says where a run ran, not what it is."""
    raw = dict(raw)
    raw["train"] = {k: v for k, v in raw.get("train", {}).items() if k != "device"}
    return raw


def run_or_reuse(raw: Mapping[str, Any], run_dir: Union[str, Path]) -> dict[str, Any]:
    """Train the run of config ``raw`` in ``run_dir``: start it, resume it if interrupted, or
    return its summary if finished; a directory holding another config is refused
    (:class:`RunExistsError`).

    Configs are compared through the config loader (so keys added later with their defaults
    still match), ignoring ``train.device``.
    """
    run_dir = Path(run_dir)
    cfg = config_from_dict(raw)
    stored = run_dir / "config.yaml"
    if not stored.is_file():
        return train(cfg, run_dir=run_dir)
    old = config_to_dict(config_from_dict(yaml.safe_load(stored.read_text())))
    if _without_device(old) != _without_device(config_to_dict(cfg)):
        raise RunExistsError(f"{run_dir} holds a run of another configuration; remove it or "
                             f"choose another output directory")
    if (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())
    return train(run_dir=run_dir, resume=True)  # interrupted earlier: continue it


def _phase(record: dict, phase: str) -> float:
    """Seconds of one phase of an epoch record (records of older runs hold the total only)."""
    t = record["time_s"]
    if isinstance(t, dict):
        return t[phase]
    return t if phase in ("total", "train") else 0.0


def _summary(cfg: Config, run_dir: Path, numbers: dict, seconds: float) -> dict[str, Any]:
    records = read_jsonl(run_dir / "metrics.jsonl")
    run_passes = sum(r.get("passes", 1.0) for r in records)  # older records: plain epochs
    summary = {"name": cfg.name, "method": cfg.method["name"], "seed": cfg.seed,
               "data": cfg.data["name"], "epochs": cfg.train.epochs, **numbers,
               "fit_seconds_last_process": seconds,  # since the last (re)start
               "train_seconds_total": sum(_phase(r, "total") for r in records),
               # passes over the training split (samples stepped on / its size), this run's
               # and with its prerequisite runs (teachers, earlier stages): what it cost
               "passes": {"run": run_passes, "prerequisites": 0.0, "total": run_passes},
               "seconds": {k: sum(_phase(r, k) for r in records)
                           for k in ("train", "eval", "method")}}
    if records and "test" in records[0]:
        best = max(records, key=lambda r: r["test"]["acc"])
        # Selected on TEST: the figure published work often reports. Never use it to compare.
        summary["best_test_acc_over_epochs_selected_on_test"] = {
            "epoch": best["epoch"], "acc": best["test"]["acc"]}
    return summary
