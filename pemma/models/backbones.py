"""Backbones: how to build the CT network and wrap it for PEMMA. Methods ask; they never branch on names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pemma.config import AdapterConfig, ConfigError, ModelConfig
from pemma.registry import Registry

if TYPE_CHECKING:  # the networks (torch, MONAI) load when a model is built, not when a name is checked
    from torch import nn


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
    input_convs: str
    """Regex over module names: the convolutions that read the raw input volume (widened to take
    PET as a second channel by early-fusion-lora)."""
    check: Callable[[ModelConfig], None]
    bottleneck: str
    """Module name whose output is the encoder's deepest representation (for prognosis heads)."""
    bottleneck_dim: Callable[[ModelConfig], int]
    """Channels of that representation for a model config."""
    pemma_revision: int = 0
    """Bumped when what `wrap_pemma` builds changes what a seed trains: the run and adaptation keys of
    the methods that build it carry it (where not 0), so finished runs of the old model keep their keys
    and are never taken for the new one's. 1: Swin's modality adapters lost an inert bias."""


BACKBONES: Registry[Backbone] = Registry("backbone")


def _wrap_unetr(net: nn.Module, adapter: AdapterConfig) -> nn.Module:
    from pemma.models.pemma import PemmaUNETR

    return PemmaUNETR(net, adapter)


def _wrap_swin(net: nn.Module, adapter: AdapterConfig) -> nn.Module:
    from pemma.models.pemma import PemmaSwin

    return PemmaSwin(net, adapter)


def _build_unetr(cfg: ModelConfig, in_channels: int) -> nn.Module:
    from pemma.models.networks import FlexibleUNETR

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


BACKBONES.add(
    "unetr",
    Backbone(
        name="unetr",
        build=_build_unetr,
        wrap_pemma=_wrap_unetr,
        lora_targets={
            "qkv": r"vit\.blocks\.\d+\.attn\.qkv",
            "qv": r"vit\.blocks\.\d+\.attn\.qkv\.[qv]",
            "attn": r"vit\.blocks\.\d+\.attn\.(qkv|out_proj)",
            "attn-mlp": r"vit\.blocks\.\d+\.(attn\.(qkv|out_proj)|mlp\.linear[12])",
        },
        encoder_prefix="vit.",
        input_convs=r"vit\.patch_embedding\.patch_embeddings|encoder1\.layer\.conv[13]\.conv",
        check=_check_unetr,
        bottleneck="vit.norm",
        bottleneck_dim=lambda m: m.hidden_size,
    ),
)


def _build_swin(cfg: ModelConfig, in_channels: int) -> nn.Module:
    from pemma.models.networks import FlexibleSwinUNETR

    net = FlexibleSwinUNETR(
        in_channels=in_channels,
        out_channels=cfg.num_classes,
        feature_size=cfg.feature_size,
        depths=cfg.swin_depths,
        num_heads=cfg.swin_heads,
        window_size=cfg.swin_window,
        norm_name="instance",
        spatial_dims=3,
    )
    for module in net.modules():
        if hasattr(module, "use_flash_attention"):
            module.use_flash_attention = cfg.sdpa
    return net


def _check_swin(cfg: ModelConfig) -> None:
    if any(r % 32 or r < 64 for r in cfg.roi):
        raise ConfigError(
            "model.roi: Swin UNETR halves the crop five times and instance-normalises the last stage, "
            f"so every side must be a multiple of 32 and at least 64; got {cfg.roi}"
        )
    if cfg.feature_size % 12:
        raise ConfigError(f"model.feature_size: Swin UNETR needs a multiple of 12; got {cfg.feature_size}")
    for stage, heads in enumerate(cfg.swin_heads):
        if (cfg.feature_size * 2**stage) % heads:
            raise ConfigError(
                f"model.swin_heads: stage {stage + 1} has width {cfg.feature_size * 2**stage}, "
                f"not divisible by {heads} heads"
            )


_SWIN_BLOCK = r"swinViT\.layers[1-4]\.0\.blocks\.\d+"
BACKBONES.add(
    "swin-unetr",
    Backbone(
        name="swin-unetr",
        build=_build_swin,
        wrap_pemma=_wrap_swin,
        lora_targets={
            "qkv": _SWIN_BLOCK + r"\.attn\.qkv",
            "qv": _SWIN_BLOCK + r"\.attn\.qkv\.[qv]",
            "attn": _SWIN_BLOCK + r"\.attn\.(qkv|proj)",
            "attn-mlp": _SWIN_BLOCK + r"\.(attn\.(qkv|proj)|mlp\.linear[12])",
        },
        encoder_prefix="swinViT.layers",
        input_convs=r"swinViT\.patch_embed\.proj|encoder1\.layer\.conv[13]\.conv",
        check=_check_swin,
        bottleneck="swinViT.layers4.0",
        bottleneck_dim=lambda m: 16 * m.feature_size,
        pemma_revision=1,
    ),
    aliases=("swin",),
)
