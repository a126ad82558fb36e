"""MONAI's UNETR and Swin UNETR with their forward passes split into the pieces PEMMA wraps.

`forward` of each equals the MONAI network's (tested); PEMMA inserts its PET pathway between pieces.
"""

from __future__ import annotations

import torch
from monai.networks.nets import UNETR, SwinUNETR
from monai.networks.nets.swin_unetr import SwinTransformerBlock
from monai.networks.nets.vit import ViT
from torch import nn
from torch.utils.checkpoint import checkpoint


def spread_skip_layers(num_layers: int) -> tuple[int, int, int]:
    """UNETR's skips read hidden states 3, 6, 9 of 12; spread the same way over any depth."""
    return tuple(min(num_layers - 1, max(0, (k * num_layers) // 4)) for k in (1, 2, 3))  # type: ignore[return-value]


class FlexibleUNETR(UNETR):
    """MONAI's UNETR with a configurable depth (UNETR hard-codes 12 layers and skips 3/6/9)."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        img_size: tuple[int, int, int],
        feature_size: int,
        hidden_size: int,
        mlp_dim: int,
        num_heads: int,
        num_layers: int,
        sdpa: bool = True,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            img_size=img_size,
            feature_size=feature_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_heads=num_heads,
            norm_name="instance",
            res_block=True,
        )
        if num_layers != self.num_layers:
            self.num_layers = num_layers
            self.vit = ViT(
                in_channels=in_channels,
                img_size=img_size,
                patch_size=self.patch_size,
                hidden_size=hidden_size,
                mlp_dim=mlp_dim,
                num_layers=num_layers,
                num_heads=num_heads,
                proj_type="conv",
                classification=False,
                spatial_dims=3,
            )
        self.skip_layers = spread_skip_layers(num_layers)
        for block in self.vit.blocks:
            block.attn.use_flash_attention = sdpa
        self.use_checkpoint = False

    def run_blocks(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Transformer blocks over any token sequence (ViT.forward would re-embed)."""
        hidden = []
        x = tokens
        recompute = self.use_checkpoint and torch.is_grad_enabled()
        for block in self.vit.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            hidden.append(x)
        return self.vit.norm(x), hidden

    def skip_encoders(self) -> list[nn.Module]:
        return [self.encoder1, self.encoder2, self.encoder3, self.encoder4]

    def skip_inputs(
        self, x_in: torch.Tensor, hidden: list[torch.Tensor], positions: slice
    ) -> list[torch.Tensor]:
        """Inputs of the four skip encoders: the raw volume, then three hidden states as feature maps."""
        return [x_in, *(self.proj_feat(hidden[i][:, positions]) for i in self.skip_layers)]

    def decode(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        enc1, enc2, enc3, enc4 = skips
        dec3 = self.decoder5(self.proj_feat(x), enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        return self.out(self.decoder2(dec1, enc1))

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        x, hidden = self.run_blocks(self.vit.patch_embedding(x_in))
        every = slice(None)
        skips = [
            enc(f) for enc, f in zip(self.skip_encoders(), self.skip_inputs(x_in, hidden, every), strict=True)
        ]
        return self.decode(x, skips)


class FlexibleSwinUNETR(SwinUNETR):
    """MONAI's Swin UNETR with its forward split into embed / stages / decode.

    PEMMA-Swin fuses PET between the patch embedding and the first Swin stage, so it needs the
    pieces; `forward` composes them and matches SwinUNETR.forward exactly (tested).
    """

    def embed(self, x_in: torch.Tensor) -> torch.Tensor:
        return self.swinViT.pos_drop(self.swinViT.patch_embed(x_in))

    def stages(self, x0: torch.Tensor) -> list[torch.Tensor]:
        """The hidden states of the embedding and of the four Swin stages, normalised as MONAI does."""
        vit = self.swinViT
        out = [vit.proj_out(x0, self.normalize)]
        x = x0
        for i in range(1, 5):
            if vit.use_v2:
                x = getattr(vit, f"layers{i}c")[0](x.contiguous())
            x = getattr(vit, f"layers{i}")[0](x.contiguous())
            out.append(vit.proj_out(x, self.normalize))
        return out

    def decode(self, enc0: torch.Tensor, hidden: list[torch.Tensor]) -> torch.Tensor:
        enc1 = self.encoder2(hidden[0])
        enc2 = self.encoder3(hidden[1])
        enc3 = self.encoder4(hidden[2])
        dec3 = self.decoder5(self.encoder10(hidden[4]), hidden[3])
        dec0 = self.decoder2(self.decoder3(self.decoder4(dec3, enc3), enc2), enc1)
        return self.out(self.decoder1(dec0, enc0))

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            self._check_input_size(x_in.shape[2:])
        return self.decode(self.encoder1(x_in), self.stages(self.embed(x_in)))


def set_memory_format(model: nn.Module, channels_last: bool) -> int:
    """Every 5-D parameter (the 3D convolutions' weights) channels-last, or back to NCDHW; a
    convolution then runs, and hands on its output, in its weight's layout. Returns how many
    parameters changed layout."""
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    count = 0
    for param in model.parameters():
        if param.dim() == 5 and not param.is_contiguous(memory_format=layout):
            param.data = param.data.contiguous(memory_format=layout)
            count += 1
    return count


def set_activation_checkpointing(model: nn.Module, on: bool) -> int:
    """Recompute the transformer blocks' activations in the backward pass (UNETR's ViT blocks, Swin
    UNETR's Swin blocks, wherever they sit in `model`); returns how many blocks or networks were set."""
    count = 0
    for module in model.modules():
        if isinstance(module, FlexibleUNETR):
            module.use_checkpoint = on
            count += len(module.vit.blocks)
        elif isinstance(module, SwinTransformerBlock):
            module.use_checkpoint = on
            count += 1
    return count
