"""Backbones: how to build the CT network and wrap it for PEMMA. Methods ask; they never branch on names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from monai.networks.nets import UNETR
from monai.networks.nets.vit import ViT
from torch import nn

from pemma.config import AdapterConfig, ConfigError, ModelConfig
from pemma.registry import Registry


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

    def run_blocks(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Transformer blocks over any token sequence (ViT.forward would re-embed)."""
        hidden = []
        x = tokens
        for block in self.vit.blocks:
            x = block(x)
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


@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[[ModelConfig, int], nn.Module]
    """(model config, input channels) -> a plain MONAI network."""
    wrap_pemma: Callable[[nn.Module, AdapterConfig], nn.Module]
    lora_targets: dict[str, str]
    """Adapter target set name -> regex over module names of the CT network."""
    encoder_prefix: str
    """Module-name prefix of the encoder: adapters outside it are refused."""
    check: Callable[[ModelConfig], None]


BACKBONES: Registry[Backbone] = Registry("backbone")


def _build_unetr(cfg: ModelConfig, in_channels: int) -> nn.Module:
    return FlexibleUNETR(
        in_channels=in_channels,
        out_channels=cfg.num_classes,
        img_size=cfg.roi,
        feature_size=cfg.feature_size,
        hidden_size=cfg.hidden_size,
        mlp_dim=cfg.mlp_dim,
        num_heads=cfg.num_heads,
        num_layers=cfg.num_layers,
        sdpa=cfg.sdpa,
    )


def _check_unetr(cfg: ModelConfig) -> None:
    if any(r % 16 for r in cfg.roi):
        raise ConfigError(
            f"model.roi: UNETR uses 16^3 patches, so every side must be a multiple of 16; got {cfg.roi}"
        )


def _wrap_unetr(base: nn.Module, cfg: AdapterConfig) -> nn.Module:
    from pemma.models.pemma import PemmaUNETR

    return PemmaUNETR(base, cfg)


BACKBONES.add(
    "unetr",
    Backbone(
        name="unetr",
        build=_build_unetr,
        wrap_pemma=_wrap_unetr,
        lora_targets={
            "qkv": r"vit\.blocks\.\d+\.attn\.qkv",
            "attn": r"vit\.blocks\.\d+\.attn\.(qkv|out_proj)",
            "attn-mlp": r"vit\.blocks\.\d+\.(attn\.(qkv|out_proj)|mlp\.linear[12])",
        },
        encoder_prefix="vit.",
        check=_check_unetr,
    ),
)
