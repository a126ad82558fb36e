"""PEMMA for UNETR: a PET pathway added to a frozen CT network.

PET patches become extra tokens after the CT tokens, so self-attention mixes the two; the decoder
reads only the CT-token positions and needs no change. Each skip level adds a trainable PET branch:
z = z_C + beta_l * z_P. With PET alone, the PET tokens and skips take the CT path (the frozen CT
skip encoders read them) and the PET branches still add their share.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from pemma.config import AdapterConfig
from pemma.modalities import SUBSETS
from pemma.models.backbones import FlexibleUNETR
from pemma.models.base import SegmentationModel


def _reinitialise(module: nn.Module) -> None:
    for sub in module.modules():
        if sub is not module and hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
    for name, param in module.named_parameters(recurse=False):
        if "position" in name:
            nn.init.trunc_normal_(param, std=0.02)


class PemmaUNETR(SegmentationModel):
    accepts = SUBSETS

    def __init__(self, base: FlexibleUNETR, cfg: AdapterConfig) -> None:
        super().__init__()
        self.base = base
        self.pet_embedding = copy.deepcopy(base.vit.patch_embedding)
        if cfg.pet_init == "random":
            _reinitialise(self.pet_embedding)
        levels = 0 if cfg.beta == "absent" else (4 if cfg.skip_levels == "all" else 1)
        self.pet_skips = nn.ModuleList(copy.deepcopy(enc) for enc in base.skip_encoders()[:levels])
        if cfg.beta == "learned":
            self.betas = nn.Parameter(torch.full((levels,), float(cfg.beta_init)))
        else:
            self.register_buffer("betas", torch.ones(levels))

    def segment(self, ct: torch.Tensor | None, pet: torch.Tensor | None) -> torch.Tensor:
        base = self.base
        primary = ct if ct is not None else pet
        tokens = base.vit.patch_embedding(ct) if ct is not None else self.pet_embedding(pet)
        n = tokens.shape[1]
        both = ct is not None and pet is not None
        if both:
            tokens = torch.cat([tokens, self.pet_embedding(pet)], dim=1)
        x, hidden = base.run_blocks(tokens)
        primary_pos = slice(0, n)
        skips = [
            enc(f)
            for enc, f in zip(
                base.skip_encoders(), base.skip_inputs(primary, hidden, primary_pos), strict=True
            )
        ]
        if pet is not None:
            pet_pos = slice(n, None) if both else primary_pos
            pet_inputs = base.skip_inputs(pet, hidden, pet_pos)
            for level, branch in enumerate(self.pet_skips):
                skips[level] = skips[level] + self.betas[level] * branch(pet_inputs[level])
        return base.decode(x[:, primary_pos], skips)
