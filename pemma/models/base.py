"""The one calling convention every segmentation model in the harness follows."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from pemma.modalities import LABELS, UnsupportedModalityError, subset_of


class SegmentationModel(nn.Module):
    """``model(ct, pet)`` -> logits; either input may be None, as the model's ``accepts`` allows."""

    accepts: ClassVar[tuple[str, ...]]

    def forward(self, ct: torch.Tensor | None = None, pet: torch.Tensor | None = None) -> torch.Tensor:
        subset = subset_of(ct, pet)
        if subset not in self.accepts:
            raise UnsupportedModalityError(
                f"{type(self).__name__} accepts {', '.join(LABELS[s] for s in self.accepts)} input; "
                f"got {LABELS[subset]}"
            )
        return self.segment(ct, pet)

    def segment(self, ct: torch.Tensor | None, pet: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError
