"""The fusion baselines and the CT-only model, in the harness's (ct, pet) calling convention."""

from __future__ import annotations

import torch
from torch import nn

from pemma.modalities import CT, CTPET, PET, SUBSETS
from pemma.models.base import SegmentationModel


class CTOnly(SegmentationModel):
    accepts = (CT,)

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def segment(self, ct: torch.Tensor | None, pet: torch.Tensor | None) -> torch.Tensor:
        return self.net(ct)


class EarlyFusion(SegmentationModel):
    """A two-channel network (CT, PET); a missing channel is zero-filled."""

    accepts = (CTPET, CT, PET)

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def segment(self, ct: torch.Tensor | None, pet: torch.Tensor | None) -> torch.Tensor:
        present = ct if ct is not None else pet
        ct = ct if ct is not None else torch.zeros_like(present)
        pet = pet if pet is not None else torch.zeros_like(present)
        return self.net(torch.cat([ct, pet], dim=1))


class LateFusion(SegmentationModel):
    """Separate CT and PET networks; logits mixed by a learned weight, or one network alone."""

    accepts = SUBSETS

    def __init__(self, ct_net: nn.Module, pet_net: nn.Module) -> None:
        super().__init__()
        self.ct_net = ct_net
        self.pet_net = pet_net
        self.mix_logit = nn.Parameter(torch.zeros(()))

    def segment(self, ct: torch.Tensor | None, pet: torch.Tensor | None) -> torch.Tensor:
        if pet is None:
            return self.ct_net(ct)
        if ct is None:
            return self.pet_net(pet)
        w = torch.sigmoid(self.mix_logit)
        return w * self.ct_net(ct) + (1 - w) * self.pet_net(pet)
