"""Run configuration: YAML -> dataclasses, checked keys and types, dotted overrides.

Sections with a ``name`` (``data``, ``method``, each encoder's ``type``) take the keyword
arguments of the registered builder or class; those are checked against its signature.
"""
from __future__ import annotations

import collections.abc
import copy
import dataclasses
import importlib.util
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, Union

import yaml

__all__ = ["Config", "ModelConfig", "OptimConfig", "ScheduleConfig", "TrainConfig",
           "ConfigError", "load_config", "config_from_dict", "apply_overrides", "config_to_dict",
           "check_kwargs", "check_number", "check_choice"]


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it."""


@dataclass
class ModelConfig:
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    fusion: str = "concat"  # concat | sum | mmtm | mbt
    fusion_dim: Optional[int] = None  # sum fusion only
    unimodal_heads: bool = False
    mbt: dict[str, Any] = field(default_factory=dict)  # mbt fusion only: MBTModel's options


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0


@dataclass
class ScheduleConfig:
    name: str = "none"  # none | step | cosine
    step_size: int = 30  # step: decay every step_size epochs by gamma
    gamma: float = 0.1
    min_lr: float = 0.0  # cosine: final learning rate


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    eval_batch_size: int = 512
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True
    select_metric: Literal["val_acc", "val_macro_f1", "val_weighted_f1"] = "val_acc"
    log_test_every_epoch: bool = True  # for curves only, never for selection
    monitor_purity: bool = False  # per-epoch train/val purity of every modality
    monitor_max_samples: Optional[int] = None
    monitor_n_init: int = 1  # k-means restarts of the purity monitor
    monitor_test_purity: bool = False  # + test purity per modality: curves only (Fig. 4c/d)
    # extra loggers beside metrics.jsonl (always written): csv, tensorboard
    loggers: list[Literal["jsonl", "csv", "tensorboard"]] = field(
        default_factory=lambda: ["jsonl"])
    deterministic: bool = True
    num_workers: int = 0
    # 32 (float32, no autocast) | bf16 (autocast) | 16-mixed (fp16 autocast + loss scaling)
    precision: Literal[32, "32", "bf16", "16-mixed"] = "32"
    progress_every: int = 50  # steps between reads of the running loss (bar, NaN check)
    compile: bool = False  # torch.compile the model's forward (methods that allow it)


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    data: dict[str, Any] = field(default_factory=lambda: {"name": "mfeat"})
    model: ModelConfig = field(default_factory=ModelConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "joint"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------- type checking

#: a number in scientific notation without a dot (``1e-3``), which YAML 1.1 reads as a string
SCIENTIFIC = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:  # Optional[X] -> "X or null"
        return " or ".join("null" if a is type(None) else _type_name(a)
                           for a in typing.get_args(hint))
    if origin is not None:  # e.g. Sequence[str]
        return str(hint).replace("typing.", "").replace("collections.abc.", "")
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_type(value: Any, hint: Any, key: str) -> Any:
    """Return ``value`` (ints widened to float where a float is expected) or raise ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    if origin is Union or origin is types.UnionType:
        for arg in args:
            try:
                return check_type(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return value
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, collections.abc.Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: check_type(v, vt, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and SCIENTIFIC.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    if hint is bool or hint is int:
        if type(value) is not hint:  # bool is an int subclass: reject True for an int
            raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def check_kwargs(section: str, kwargs: Mapping[str, Any], target: Callable,
                 skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check ``kwargs`` against ``target``'s signature (less ``skip``, arguments the caller
    fills itself); return them with defaults filled in."""
    sig = inspect.signature(target)
    hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    params = {n: p for n, p in sig.parameters.items()
              if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
              and n != "self" and n not in skip}
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {unknown}; valid keys: {sorted(params)}")
    out = {}
    for n, p in params.items():
        if n in kwargs:
            out[n] = check_type(kwargs[n], hints.get(n, Any), f"{section}.{n}")
        elif p.default is inspect.Parameter.empty:
            raise ConfigError(f"{section}: missing required key {n!r}")
        else:
            d = p.default
            out[n] = list(d) if isinstance(d, tuple) else d
    return out


def _range_text(low: Optional[float], high: Optional[float], low_open: bool,
                high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    return "" if high is None else f" {'<' if high_open else '<='} {high}"


def check_number(key: str, value: Any, *, low: Optional[float] = None,
                 high: Optional[float] = None, low_open: bool = False, high_open: bool = False,
                 integer: bool = False, null: bool = False) -> None:
    """Raise ConfigError ``"<key> must be an int >= 1, got 0"`` unless ``value`` is a number (an
    int if ``integer``; never a bool or NaN) within the bounds; ``null`` also accepts None."""
    if null and value is None:
        return
    ok = (isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
          and value == value)  # NaN != NaN
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        what = ("an int" if integer else "a number") + _range_text(low, high, low_open, high_open)
        raise ConfigError(f"{key} must be {what}{' or null' if null else ''}, got {value!r}")


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ConfigError ``"<key> must be one of [...], got 'x'"`` unless ``value`` is one."""
    if not any(value == c and type(value) is type(c) for c in choices):  # True == 1: no
        raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")


#: value ranges of the fixed sections (types are checked first): key -> check_number options
_RANGES: dict[str, dict[str, Any]] = {
    "seed": dict(low=0, high=2**32 - 1, integer=True),  # NumPy's seed range
    "train.epochs": dict(low=1, integer=True),
    "train.batch_size": dict(low=1, integer=True),
    "train.eval_batch_size": dict(low=1, integer=True),
    "train.monitor_max_samples": dict(low=1, integer=True, null=True),
    "train.monitor_n_init": dict(low=1, integer=True),
    "train.num_workers": dict(low=0, integer=True),
    "train.progress_every": dict(low=1, integer=True),
    "optim.lr": dict(low=0, low_open=True),
    "optim.momentum": dict(low=0, high=1),
    "optim.weight_decay": dict(low=0),
    "schedule.step_size": dict(low=1, integer=True),
    "schedule.gamma": dict(low=0, low_open=True),
    "schedule.min_lr": dict(low=0),
    "model.fusion_dim": dict(low=1, integer=True, null=True),
}


def _check_values(cfg: Config) -> None:
    """Ranges and choices of the fixed sections, before anything is built or written."""
    from .models import FUSIONS

    for key, bounds in _RANGES.items():
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        check_number(key, obj, **bounds)
    check_choice("optim.name", cfg.optim.name, ("sgd", "adam", "adamw"))
    check_choice("schedule.name", cfg.schedule.name, ("none", "step", "cosine"))
    check_choice("model.fusion", cfg.model.fusion, (*FUSIONS, "mmtm", "mbt"))


def _from_dict(cls: type, raw: Any, path: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = path or "top level"
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in raw.items():
        key = f"{path}.{name}" if path else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, key)
        else:
            kwargs[name] = check_type(value, hint, key)
    return cls(**kwargs)


# ---------------------------------------------------------------- loading

def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a raw config mapping."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. method.lam=7")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(text)
    return raw


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Build and fully check a :class:`Config` (registered builders' keys included)."""
    from .data import DATASETS, SPLIT_KEYS, build_data
    from .methods import METHODS
    from .models import ENCODERS, MBTModel

    cfg = _from_dict(Config, raw, "")
    _check_values(cfg)
    if cfg.train.precision == 32:  # YAML reads 32 as an int: stored as "32"
        cfg.train.precision = "32"
    cfg.data = _named_section("data", cfg.data, DATASETS, reserved=SPLIT_KEYS,
                              reserved_by=build_data)
    cfg.method = _named_section("method", cfg.method, METHODS)
    for modality, spec in cfg.model.encoders.items():
        cfg.model.encoders[modality] = _named_section(
            f"model.encoders.{modality}", spec, ENCODERS, name_key="type",
            skip=("input_shape",))
    if cfg.model.fusion == "mbt":
        cfg.model.mbt = check_kwargs("model.mbt", cfg.model.mbt, MBTModel,
                                     skip=("encoders", "num_classes"))
    elif cfg.model.mbt:
        raise ConfigError(f"model.mbt: only used with model.fusion: mbt, not "
                          f"{cfg.model.fusion!r}")
    _check_monitoring(cfg.train)
    return cfg


def _check_monitoring(t: TrainConfig) -> None:
    if t.monitor_test_purity and not t.monitor_purity:
        raise ConfigError("train.monitor_test_purity: needs train.monitor_purity: true")
    # checked here, before a run directory is written, not when the first epoch ends
    if "tensorboard" in t.loggers and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("train.loggers: 'tensorboard' needs the tensorboard package; "
                          "pip install 'mmrelearn[tensorboard]' (or drop it from the list)")


def _named_section(section: str, raw: Mapping[str, Any], registry: Mapping[str, Callable],
                   name_key: str = "name", reserved: Mapping[str, Any] = None,
                   reserved_by: Optional[Callable] = None,
                   skip: tuple[str, ...] = ()) -> dict[str, Any]:
    raw = dict(raw)
    name = raw.pop(name_key, None)
    if name not in registry:
        raise ConfigError(f"{section}.{name_key}: {name!r} is not one of {sorted(registry)}")
    fixed = {}
    hints = typing.get_type_hints(reserved_by) if reserved_by is not None else {}
    for key, default in (reserved or {}).items():  # typed by the function that takes them
        fixed[key] = (check_type(raw.pop(key), hints.get(key, Any), f"{section}.{key}")
                      if key in raw else default)
    target = registry[name]
    for s in skip:
        if s in raw:
            raise ConfigError(f"{section}: {s!r} is set from the data, not the config")
    kwargs = check_kwargs(section, raw, target, skip)
    return {name_key: name, **fixed, **kwargs}


def load_config(path: Union[str, Path], overrides: Optional[list[str]] = None) -> Config:
    """Read a YAML config file, apply dotted overrides, and check everything."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    try:
        return config_from_dict(apply_overrides(raw, overrides or []))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain data (what a run directory stores)."""
    return dataclasses.asdict(cfg)
