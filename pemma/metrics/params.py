"""Parameter accounting: total and trainable (shares are against the method declared the parameters
reference: `pemma.methods.reference_method("parameters")`)."""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
