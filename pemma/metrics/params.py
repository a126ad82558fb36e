"""Parameter accounting: total, trainable, and trainable as a share of early fusion's (the papers' 8%)."""

from __future__ import annotations

from torch import nn

REFERENCE_METHOD = "early-fusion"
"""Trainable-parameter ratios are reported against this method's trainable count."""


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
