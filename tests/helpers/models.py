"""Small models and batches at the ci profile: one random CT base per backbone, inputs per subset, a
two-batch dataset, one training step."""

from __future__ import annotations

import pytest
import torch

from pemma.config import TrainConfig, resolve
from pemma.methods import METHODS
from pemma.models.backbones import BACKBONES
from pemma.training.loop import train

CFGS = {name: resolve({"profile": "ci", "backbone": name}) for name in BACKBONES.names()}
CFG = CFGS["unetr"]
ROI = CFG.model.roi
BASES: dict[str, torch.nn.Module] = {}


def base_model(backbone: str) -> torch.nn.Module:
    """One random CT base per backbone, shared by the tests (methods copy it; tests must not modify it)."""
    if backbone not in BASES:
        torch.manual_seed(0)
        BASES[backbone] = BACKBONES.get(backbone).build(CFGS[backbone].model, 1)
    return BASES[backbone]


def inputs(subset, roi=ROI):
    g = torch.Generator().manual_seed(1)
    ct = torch.rand(1, 1, *roi, generator=g) if subset in ("ctpet", "ct") else None
    pet = torch.randn(1, 1, *roi, generator=g) if subset in ("ctpet", "pet") else None
    return ct, pet


class Batches(torch.utils.data.Dataset):
    def __init__(self, roi=ROI):
        self.roi = roi

    def __len__(self):
        return 2

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        label = torch.zeros(1, *self.roi, dtype=torch.uint8)
        label[0, 8:16, 8:16, 8:16] = 1
        label[0, 20:24, 20:24, 20:24] = 2
        return {
            "ct": torch.rand(1, *self.roi, generator=g),
            "pet": label.float() * 3 + torch.rand(1, *self.roi, generator=g),
            "label": label,
        }


def on_backbone(*values, backbone: str):
    """A parametrisation; the Swin UNETR ones are `slow` (the developer's loop keeps UNETR's)."""
    return pytest.param(*values, marks=() if backbone == "unetr" else pytest.mark.slow)


MATRIX = [on_backbone(m, b, backbone=b) for b in BACKBONES.names() for m in METHODS.names()]


def one_step(model, subsets, roi=ROI):
    budget = TrainConfig(steps=1, batch_size=1, lr=1e-2, weight_decay=0.0, warmup_steps=0)
    probabilities = tuple(1 / len(subsets) for _ in subsets)
    train(
        model,
        Batches(roi),
        budget,
        subsets=subsets,
        probabilities=probabilities,
        seed=0,
        device=torch.device("cpu"),
    )
