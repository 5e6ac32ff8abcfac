"""Encoders, fusion modules and the multimodal classifier, plus a builder from config specs."""
from __future__ import annotations

import inspect
import logging
from typing import Any, Mapping, Optional

from torch import nn

from .fusion import FUSIONS, ConcatFusion, SumFusion
from .lenet import LeNetEncoder
from .mbt import MBTModel
from .mlp import MLPEncoder
from .mmtm import MMTMModel
from .multimodal import ModelOutput, MultimodalModel
from .resnet import ResNet18Encoder
from .transformer import TransformerEncoder
from .vit import ViTEncoder

__all__ = ["ModelOutput", "MultimodalModel", "build_model", "ENCODERS", "FUSIONS",
           "MLPEncoder", "ResNet18Encoder", "LeNetEncoder", "TransformerEncoder", "ConcatFusion",
           "SumFusion", "MMTMModel", "ViTEncoder", "MBTModel"]

logger = logging.getLogger(__name__)

#: encoder ``type`` in a model spec -> class taking ``input_shape`` plus keyword options.
ENCODERS: dict[str, type[nn.Module]] = {"mlp": MLPEncoder, "resnet18": ResNet18Encoder,
                                        "lenet": LeNetEncoder, "transformer": TransformerEncoder,
                                        "vit": ViTEncoder}


def _build_encoder(modality: str, spec: Mapping[str, Any], input_shape: tuple[int, ...]
                   ) -> nn.Module:
    if not isinstance(spec, Mapping):
        raise ValueError(f"encoder spec for modality {modality!r} must be a mapping, got {spec!r}")
    kwargs = dict(spec)
    kind = kwargs.pop("type", None)
    if kind not in ENCODERS:
        raise ValueError(f"modality {modality!r}: unknown encoder type {kind!r}; "
                         f"valid types: {sorted(ENCODERS)}")
    cls = ENCODERS[kind]
    valid = sorted(n for n in inspect.signature(cls).parameters if n != "input_shape")
    if "input_shape" in kwargs:
        raise ValueError(f"modality {modality!r}: 'input_shape' comes from input_shapes, "
                         f"not from the encoder spec")
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"modality {modality!r}: encoder {kind!r} does not accept key(s) "
                         f"{unknown}; valid keys: {valid}")
    return cls(tuple(input_shape), **kwargs)


def build_model(
    encoders: Mapping[str, Mapping[str, Any]],
    input_shapes: Mapping[str, tuple[int, ...]],
    num_classes: int,
    fusion: str = "concat",
    fusion_dim: Optional[int] = None,
    unimodal_heads: bool = False,
    mbt: Optional[Mapping[str, Any]] = None,
) -> MultimodalModel:
    """Build a :class:`MultimodalModel` from per-modality encoder specs.

    Args:
        encoders: modality -> ``{"type": <key of ENCODERS>, **encoder kwargs}``; the order of
            this mapping is the order of the modalities in the model and the fusion.
        input_shapes: modality -> shape of one sample (no batch dimension), from the data.
        num_classes: number of classes.
        fusion: a key of :data:`FUSIONS`, or ``"mmtm"``: MMTM mid-fusion between exactly two
            resnet18 encoders with one head per branch (:class:`MMTMModel`; it always has
            unimodal heads), or ``"mbt"``: vit streams joined by bottleneck tokens
            (:class:`MBTModel`; its per-modality heads are its classifier).
        fusion_dim: common size for ``"sum"`` fusion (default: the largest feature size).
        unimodal_heads: give every modality its own linear head as well.
        mbt: keyword options of :class:`MBTModel` (``bottlenecks``, ``fusion_layer``); only
            with ``fusion="mbt"``.

    Raises:
        ValueError: naming the offending modality, type, key or fusion.
    """
    no_spec = sorted(set(input_shapes) - set(encoders))
    no_shape = sorted(set(encoders) - set(input_shapes))
    if no_spec or no_shape:
        raise ValueError(f"encoders and input_shapes must name the same modalities: "
                         f"no encoder spec for {no_spec}, no input shape for {no_shape}")
    if fusion not in FUSIONS and fusion not in ("mmtm", "mbt"):
        raise ValueError(f"unknown fusion {fusion!r}; valid fusions: "
                         f"{sorted([*FUSIONS, 'mmtm', 'mbt'])}")
    if mbt and fusion != "mbt":
        raise ValueError(f"mbt options are only used by 'mbt' fusion, not {fusion!r}")
    if fusion == "mbt":
        kinds = {m: spec.get("type") if isinstance(spec, Mapping) else None
                 for m, spec in encoders.items()}
        if set(kinds.values()) != {"vit"}:
            raise ValueError(f"fusion 'mbt' needs vit encoders (one ViT stream per modality); "
                             f"got {kinds}")
    if fusion == "mmtm":
        kinds = {m: spec.get("type") if isinstance(spec, Mapping) else None
                 for m, spec in encoders.items()}
        if len(kinds) != 2 or set(kinds.values()) != {"resnet18"}:
            raise ValueError(f"fusion 'mmtm' needs exactly two resnet18 encoders (its MMTM "
                             f"blocks sit between two ResNet-18 branches); got {kinds}")
    if fusion_dim is not None and fusion != "sum":
        raise ValueError(f"fusion_dim is only used by 'sum' fusion, not {fusion!r}")
    encs = nn.ModuleDict({m: _build_encoder(m, spec, input_shapes[m])
                          for m, spec in encoders.items()})
    dims = {m: e.out_dim for m, e in encs.items()}
    if fusion == "mmtm":
        model: MultimodalModel = MMTMModel(encs, num_classes)
    elif fusion == "mbt":
        model = MBTModel(encs, num_classes, **dict(mbt or {}))
    else:
        fuse = SumFusion(dims, fusion_dim) if fusion == "sum" else FUSIONS[fusion](dims)
        model = MultimodalModel(encs, fuse, num_classes, unimodal_heads=unimodal_heads)
    logger.info("built model: %s",
                ", ".join(f"{m}={sum(p.numel() for p in e.parameters()):,} params"
                          for m, e in encs.items()))
    return model
