"""MMTM mid-fusion between two ResNet-18 branches (Joze et al., "MMTM: Multimodal Transfer
Module for CNN Fusion", CVPR 2020), in the form Greedy uses it (Wu et al., "Characterizing and
Overcoming the Greedy Nature of Learning in Multi-modal Deep Neural Networks", ICML 2022).

One MMTM block after each of ``layer2``, ``layer3`` and ``layer4``: both feature maps are
squeezed by global average pooling, concatenated, passed through a shared linear+ReLU, and one
linear+sigmoid gate per branch rescales that branch's channels. Each branch keeps its own
linear head on its pooled feature; the prediction is the mean of the two branch logits.

For Greedy's re-balancing step, ``forward(inputs, rebalance=m)`` replaces every gate applied to
branch ``m`` by the block's running average of that gate (detached), so branch ``m`` learns from
its own input only. The gates are plain sigmoids in (0, 1), as in methods.md and Greedy's
released ``MMTM_mitigate``; ``gate_scale=2`` gives the MMTM paper's ``2 * sigmoid``.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from .multimodal import ModelOutput, MultimodalModel
from .resnet import ResNet18Encoder

__all__ = ["MMTM", "MMTMFusion", "MMTMModel", "MMTM_STAGES"]

#: the ResNet stages followed by an MMTM block.
MMTM_STAGES = ("layer2", "layer3", "layer4")


def _squeeze(x: torch.Tensor, frames: int) -> torch.Tensor:
    """``(B*T, C, H, W)`` -> ``(B, C)``: mean over frames and space."""
    return x.reshape(-1, frames, x.shape[1], x.shape[2] * x.shape[3]).mean(dim=(1, 3))


class MMTM(nn.Module):
    """One MMTM block between branch 0 (``c0`` channels) and branch 1 (``c1`` channels).

    Buffers ``running_gate0`` (c0,) and ``running_gate1`` (c1,) hold the mean of the
    batch-mean gates over every update so far (``num_updates`` of them), as in Greedy's release.

    Args:
        c0, c1: channels of the two feature maps.
        ratio: bottleneck ratio; the shared layer has ``int(2 * (c0 + c1) / ratio)`` units.
        gate_scale: gates are ``gate_scale * sigmoid(.)`` (1: Greedy's code; 2: MMTM paper).
    """

    def __init__(self, c0: int, c1: int, ratio: int = 4, gate_scale: float = 1.0) -> None:
        super().__init__()
        hidden = int(2 * (c0 + c1) / ratio)
        if hidden < 1:
            raise ValueError(f"MMTM bottleneck int(2 * ({c0} + {c1}) / {ratio}) is < 1")
        self.squeeze = nn.Linear(c0 + c1, hidden)  # shared by both branches
        self.gates = nn.ModuleList([nn.Linear(hidden, c0), nn.Linear(hidden, c1)])
        self.gate_scale = float(gate_scale)
        self.register_buffer("running_gate0", torch.zeros(c0))
        self.register_buffer("running_gate1", torch.zeros(c1))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def running_gate(self, branch: int) -> torch.Tensor:
        """The running average of branch ``branch``'s gate, ``(c_branch,)``."""
        return getattr(self, f"running_gate{branch}")

    def bypass_parameters(self, branch: int) -> list[nn.Parameter]:
        """The parameters feeding branch ``branch``'s gate: the shared layer and its gate."""
        return [*self.squeeze.parameters(), *self.gates[branch].parameters()]

    def compute_gates(self, x0: torch.Tensor, x1: torch.Tensor, t0: int = 1, t1: int = 1
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample gates ``(B, c0)``, ``(B, c1)`` of frame maps ``(B*T_k, c_k, H_k, W_k)``."""
        z = torch.cat([_squeeze(x0, t0), _squeeze(x1, t1)], dim=1)  # (B, c0 + c1)
        e = torch.relu(self.squeeze(z))  # (B, hidden)
        return tuple(self.gate_scale * torch.sigmoid(g(e)) for g in self.gates)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, t0: int = 1, t1: int = 1,
                rebalance: Optional[int] = None, update: Optional[bool] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate both feature maps; ``rebalance`` (0 or 1) uses that branch's running gate.

        ``update`` (default: ``self.training``) folds this batch's gates into the running
        averages before they are used.
        """
        gates = list(self.compute_gates(x0, x1, t0, t1))
        if self.training if update is None else update:
            with torch.no_grad():
                n = self.num_updates  # a tensor: no host sync
                for k, g in enumerate(gates):
                    avg = self.running_gate(k)
                    avg.copy_((g.mean(dim=0) + avg * n) / (n + 1))  # mean over all batches
                self.num_updates += 1
        if rebalance is not None:
            gates[rebalance] = self.running_gate(rebalance).detach().expand_as(gates[rebalance])
        out = []
        for x, g, t in ((x0, gates[0], t0), (x1, gates[1], t1)):
            g = g.repeat_interleave(t, dim=0) if t > 1 else g  # (B, c) -> (B*T, c)
            out.append(x * g[:, :, None, None])
        return out[0], out[1]


class MMTMFusion(nn.ModuleList):
    """The mid-fusion of :class:`MMTMModel`: ``self[i]`` follows ``MMTM_STAGES[i]``.

    It fuses inside the encoders, so it is not called on pooled features like the late-fusion
    modules; ``dims`` and ``out_dim`` (the size of ``[z_0; z_1]``) keep the model contract.
    """

    def __init__(self, encoders: Mapping[str, ResNet18Encoder], ratio: int = 4,
                 gate_scale: float = 1.0) -> None:
        e0, e1 = encoders.values()
        super().__init__([MMTM(getattr(e0, s)[-1].bn2.num_features,
                               getattr(e1, s)[-1].bn2.num_features, ratio, gate_scale)
                          for s in MMTM_STAGES])
        self.dims = {m: e.out_dim for m, e in encoders.items()}
        self.out_dim: int = sum(self.dims.values())


def _frames(enc: ResNet18Encoder, x: torch.Tensor, modality: str) -> tuple[torch.Tensor, int]:
    """``(B, *input_shape)`` -> frames ``(B*T, C, H, W)`` and T (1 unless a clip)."""
    ok = x.dim() == len(enc.input_shape) + 1 and (x.dim() < 4 or x.shape[-3] ==
                                                   enc.input_shape[-3])
    if not ok:
        raise ValueError(f"modality {modality!r} expects input (B, "
                         f"{', '.join(map(str, enc.input_shape))}), got {tuple(x.shape)}")
    if x.dim() == 3:
        return x.unsqueeze(1), 1
    if x.dim() == 4:
        return x, 1
    return x.flatten(0, 1), x.shape[1]


class MMTMModel(MultimodalModel):
    """Two ResNet-18 branches with MMTM blocks after layers 2-4 and one head per branch.

    Keeps the :class:`MultimodalModel` contract: ``encoders`` (the two branches),
    ``unimodal_heads`` (one linear head each), ``encode`` and ``forward``. ``fusion`` is the
    :class:`MMTMFusion`; there is no fused ``head`` (``None``): ``logits`` is the mean of the two
    branch logits. The encoders' own ``forward`` is left alone (it runs a branch without MMTM).

    Args:
        encoders: exactly two :class:`ResNet18Encoder`, modality -> branch (order: 0, 1).
        num_classes: number of classes.
        ratio: MMTM bottleneck ratio (4, as in MMTM and Greedy).
        gate_scale: 1 for ``sigmoid`` gates (Greedy's code), 2 for the MMTM paper's form.
    """

    def __init__(self, encoders: nn.ModuleDict, num_classes: int, ratio: int = 4,
                 gate_scale: float = 1.0) -> None:
        if not isinstance(encoders, nn.ModuleDict) or len(encoders) != 2 or not all(
                isinstance(e, ResNet18Encoder) for e in encoders.values()):
            got = ({m: type(e).__name__ for m, e in encoders.items()}
                   if isinstance(encoders, nn.ModuleDict) else type(encoders).__name__)
            raise ValueError(f"MMTM fusion needs an nn.ModuleDict of exactly two "
                             f"ResNet18Encoder branches (its blocks sit between their layers "
                             f"2-4); got {got}")
        super().__init__(encoders, MMTMFusion(encoders, ratio, gate_scale), num_classes,
                         unimodal_heads=True)
        self.head = None  # no fused head: the prediction is the mean of the branch heads

    def bypass_parameters(self, modality: str) -> list[nn.Parameter]:
        """Every MMTM parameter feeding ``modality``'s gates (shared layers included)."""
        k = self.modalities.index(modality)
        return [p for block in self.fusion for p in block.bypass_parameters(k)]

    def encode(self, inputs: Mapping[str, torch.Tensor], rebalance: Optional[str] = None
               ) -> dict[str, torch.Tensor]:
        """Pooled features ``{m: (B, d_m)}`` through both branches and the MMTM blocks.

        ``rebalance``: a modality whose gates are replaced by their running averages. The
        running averages are updated only when the model and both branches are in train mode
        (feature extraction with the encoders in eval mode leaves them alone).
        """
        missing = [m for m in self.encoders if m not in inputs]
        if missing:
            raise ValueError(f"missing input for modality {missing}; inputs given: "
                             f"{sorted(inputs)}; model modalities: {self.modalities}")
        if rebalance is not None and rebalance not in self.encoders:
            raise ValueError(f"rebalance must be one of {self.modalities} or None, "
                             f"got {rebalance!r}")
        branch = None if rebalance is None else self.modalities.index(rebalance)
        update = self.training and all(e.training for e in self.encoders.values())
        (m0, e0), (m1, e1) = self.encoders.items()
        (h0, t0), (h1, t1) = _frames(e0, inputs[m0], m0), _frames(e1, inputs[m1], m1)
        h0 = e0.layer1(e0.maxpool(e0.relu(e0.bn1(e0.conv1(h0)))))  # (B*T0, w, H', W')
        h1 = e1.layer1(e1.maxpool(e1.relu(e1.bn1(e1.conv1(h1)))))
        for stage, block in zip(MMTM_STAGES, self.fusion):
            h0, h1 = getattr(e0, stage)(h0), getattr(e1, stage)(h1)
            h0, h1 = block(h0, h1, t0, t1, rebalance=branch, update=update)
        # (B*T, 8w, h, w) -> pooled (B*T, 8w) -> frame mean (B, 8w)
        return {m0: e0.avgpool(h0).flatten(1).view(-1, t0, e0.out_dim).mean(dim=1),
                m1: e1.avgpool(h1).flatten(1).view(-1, t1, e1.out_dim).mean(dim=1)}

    def forward(self, inputs: Mapping[str, torch.Tensor], rebalance: Optional[str] = None
                ) -> ModelOutput:
        """Branch logits from each head; ``logits`` = their mean (Greedy's prediction)."""
        features = self.encode(inputs, rebalance)
        uni = {m: head(features[m]) for m, head in self.unimodal_heads.items()}  # (B, C) each
        logits = torch.stack(list(uni.values())).mean(dim=0)  # (2, B, C) -> (B, C)
        return ModelOutput(logits=logits, features=features, unimodal_logits=uni)
