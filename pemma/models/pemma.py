"""PEMMA: a PET pathway added to a frozen CT network, for UNETR and Swin UNETR.

UNETR: PET patches become extra tokens after the CT tokens, so self-attention mixes the two; the
decoder reads only the CT-token positions and needs no change. Each skip level adds a trainable PET
branch: z = z_C + beta_l * z_P. With PET alone, the PET tokens and skips take the CT path (the frozen
CT skip encoders read them) and the PET branches still add their share; `adapter.pet_route: branch`
leaves the CT encoders out of the levels that have a PET branch (an ablation).

Swin UNETR: windowed attention cannot take appended tokens, so CT and PET fuse at the embedding: an
adapter layer merges the two patch embeddings (channels concatenated, 1x1x1 conv back to C). With one
modality present, that modality's adapter (1x1 conv, norm, ReLU, 1x1 conv to 2C) fills the merge's
input. The PET skip exists at the input level, the only place PET is still separate.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from pemma.config import AdapterConfig
from pemma.modalities import SUBSETS
from pemma.models.base import SegmentationModel
from pemma.models.networks import FlexibleSwinUNETR, FlexibleUNETR

NEW_MODULES = (r"^pet_embedding\.", r"^pet_skips\.", r"^betas$", r"^fusion\.")
"""Parameter-name patterns of what PEMMA adds to a CT network, for every backbone: the trainable
PET pathway. The CT network itself lives under `base.`."""


def _reinitialise(module: nn.Module) -> None:
    for sub in module.modules():
        if sub is not module and hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
    for name, param in module.named_parameters(recurse=False):
        if "position" in name:
            nn.init.trunc_normal_(param, std=0.02)


class PemmaModel(SegmentationModel):
    """What every PEMMA model shares: the frozen CT network as `base`, a PET patch embedding (a copy
    of the CT one, or re-initialised), and PET skip branches added with weights beta."""

    accepts = SUBSETS

    def __init__(self, base: nn.Module, embedding: nn.Module, skips: list[nn.Module], cfg: AdapterConfig):
        super().__init__()
        self.base = base
        self.pet_embedding = copy.deepcopy(embedding)
        if cfg.pet_init == "random":
            _reinitialise(self.pet_embedding)
        levels = 0 if cfg.beta == "absent" else len(skips)
        self.pet_skips = nn.ModuleList(copy.deepcopy(enc) for enc in skips[:levels])
        if cfg.beta == "learned":
            self.betas = nn.Parameter(torch.full((levels,), float(cfg.beta_init)))
        else:
            self.register_buffer("betas", torch.ones(levels))
        self.pet_route = cfg.pet_route

    def add_pet_skips(
        self, skips: list[torch.Tensor], pet_inputs: list[torch.Tensor], pet_only: bool = False
    ) -> list[torch.Tensor]:
        """z = z_C + beta * z_P per level; with PET alone and `pet_route: branch`, z = beta * z_P
        where a level has a PET branch (the frozen CT encoder's reading of PET left out)."""
        out = list(skips)
        for level, branch in enumerate(self.pet_skips):
            pet = self.betas[level] * branch(pet_inputs[level])
            out[level] = pet if pet_only and self.pet_route == "branch" else out[level] + pet
        return out


class PemmaUNETR(PemmaModel):
    def __init__(self, base: FlexibleUNETR, cfg: AdapterConfig) -> None:
        levels = 4 if cfg.skip_levels == "all" else 1
        super().__init__(base, base.vit.patch_embedding, base.skip_encoders()[:levels], cfg)

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
            skips = self.add_pet_skips(skips, base.skip_inputs(pet, hidden, pet_pos), pet_only=ct is None)
        return base.decode(x[:, primary_pos], skips)


class ModalityAdapter(nn.Module):
    """One modality's embedding -> the (CT, PET) pair the merge expects: its own slot holds the input,
    and a small residual (1x1 conv, norm, ReLU, 1x1 conv to 2C; last conv zero at start) fills both.
    The first convolution has no bias: the instance norm after it would subtract it (it could not
    learn, yet was counted as trainable; backbone revision 1 of Swin UNETR)."""

    def __init__(self, channels: int, slot: int) -> None:
        super().__init__()
        self.slot = slot
        self.net = nn.Sequential(
            nn.Conv3d(channels, channels, 1, bias=False),
            nn.InstanceNorm3d(channels, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv3d(channels, 2 * channels, 1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros_like(x)
        placed = torch.cat([x, zeros] if self.slot == 0 else [zeros, x], dim=1)
        return placed + self.net(x)


class EmbeddingFusion(nn.Module):
    """PEMMA-Swin's adapter layer: (CT, PET) embeddings, channels concatenated, 1x1x1 conv back to C.

    The merge starts as the identity on the CT half and zero on the PET half, so at adaptation start
    the model with CT input is exactly the CT network; per-modality adapters serve single inputs
    (`single="adapter"`), or the missing modality's half is zeros (`single="zeros"`).
    """

    def __init__(self, channels: int, single: str = "adapter") -> None:
        super().__init__()
        self.merge = nn.Conv3d(2 * channels, channels, 1)
        with torch.no_grad():
            self.merge.weight.zero_()
            self.merge.weight[:, :channels, 0, 0, 0] = torch.eye(channels)
            self.merge.bias.zero_()
        self.adapters = single == "adapter"
        if self.adapters:
            self.ct = ModalityAdapter(channels, slot=0)
            self.pet = ModalityAdapter(channels, slot=1)

    def forward(self, ct: torch.Tensor | None, pet: torch.Tensor | None) -> torch.Tensor:
        if ct is not None and pet is not None:
            pair = torch.cat([ct, pet], dim=1)
        elif self.adapters:
            pair = self.ct(ct) if ct is not None else self.pet(pet)
        elif ct is not None:
            pair = torch.cat([ct, torch.zeros_like(ct)], dim=1)
        else:
            pair = torch.cat([torch.zeros_like(pet), pet], dim=1)
        return self.merge(pair)


class PemmaSwin(PemmaModel):
    def __init__(self, base: FlexibleSwinUNETR, cfg: AdapterConfig) -> None:
        super().__init__(base, base.swinViT.patch_embed, [base.encoder1], cfg)
        self.fusion = EmbeddingFusion(base.swinViT.embed_dim, cfg.swin_single)

    def segment(self, ct: torch.Tensor | None, pet: torch.Tensor | None) -> torch.Tensor:
        base = self.base
        ct_tokens = base.embed(ct) if ct is not None else None
        pet_tokens = base.swinViT.pos_drop(self.pet_embedding(pet)) if pet is not None else None
        hidden = base.stages(self.fusion(ct_tokens, pet_tokens))
        primary = ct if ct is not None else pet
        skips = [base.encoder1(primary)]
        if pet is not None:
            skips = self.add_pet_skips(skips, [pet], pet_only=ct is None)
        return base.decode(skips[0], hidden)
