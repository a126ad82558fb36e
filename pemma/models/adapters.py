"""peft glue and the module surgery around it.

- `inject_lora`: LoRA / DoRA on a backbone's declared target set, reporting exactly what was adapted.
- `split_qkv` / `fuse_qkv`: the fused q,k,v projection as three linears (the public code adapted
  q and v only) and back, with unchanged outputs.
- `widen_inputs`: a CT network's input convolutions take a second (PET) channel.
- `merge_adapters`: fold every adapter, split and widened layer back into a plain MONAI network.
"""

from __future__ import annotations

import re

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from pemma.config import AdapterConfig


class AdapterTargetError(ValueError):
    """An adapter pattern that matches nothing, or matches modules outside the encoder."""


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def _matching(net: nn.Module, pattern: str) -> list[str]:
    return [name for name, _ in net.named_modules() if re.fullmatch(pattern, name)]


class SplitQKV(nn.Module):
    """A fused q,k,v linear as three linears; output = cat(q(x), k(x), v(x)), as the fused one's.

    MONAI's attention blocks (ViT and Swin) read the fused output as (3, heads, head_dim), q first,
    so the three row blocks of the fused weight are q, k and v.
    """

    def __init__(self, fused: nn.Linear) -> None:
        super().__init__()
        out = fused.out_features // 3
        bias = fused.bias is not None
        weight = fused.weight.detach()
        for i, name in enumerate("qkv"):
            linear = nn.Linear(fused.in_features, out, bias=bias, device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(weight[i * out : (i + 1) * out])
                if bias:
                    linear.bias.copy_(fused.bias[i * out : (i + 1) * out])
            linear.weight.requires_grad_(fused.weight.requires_grad)
            if bias:
                linear.bias.requires_grad_(fused.bias.requires_grad)
            setattr(self, name, linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)

    def fused(self) -> nn.Linear:
        parts = [self.q, self.k, self.v]
        weight = torch.cat([p.weight.detach() for p in parts])
        bias = self.q.bias is not None
        linear = nn.Linear(
            weight.shape[1], weight.shape[0], bias=bias, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias:
                linear.bias.copy_(torch.cat([p.bias.detach() for p in parts]))
        return linear


def split_qkv(net: nn.Module, pattern: str) -> list[str]:
    """Replace every fused qkv linear matching `pattern` by a SplitQKV; returns their names."""
    names = [n for n in _matching(net, pattern) if isinstance(net.get_submodule(n), nn.Linear)]
    if not names:
        raise AdapterTargetError(f"no fused qkv linear of {type(net).__name__} matches {pattern!r}")
    for name in names:
        _replace(net, name, SplitQKV(net.get_submodule(name)))
    return names


def fuse_qkv(net: nn.Module) -> int:
    """Undo split_qkv (after any adapters on q / v are merged); returns how many were fused."""
    names = [n for n, m in net.named_modules() if isinstance(m, SplitQKV)]
    for name in names:
        _replace(net, name, net.get_submodule(name).fused())
    return len(names)


class WidenedConv(nn.Module):
    """A one-channel (CT) convolution taking a second channel (PET) through a new, zero-initialised
    kernel: out = conv_ct(x[:, :1]) + conv_pet(x[:, 1:]), i.e. a two-channel convolution whose CT
    weights are the pretrained ones; `fused()` returns exactly that two-channel nn.Conv3d."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        if conv.in_channels != 1:
            raise ValueError(f"expected a one-channel input convolution, got in_channels={conv.in_channels}")
        self.ct = conv
        self.pet = nn.Conv3d(
            1,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=False,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        nn.init.zeros_(self.pet.weight)
        self.in_channels = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ct(x[:, :1]) + self.pet(x[:, 1:])

    def fused(self) -> nn.Conv3d:
        ct = self.ct
        conv = nn.Conv3d(
            2,
            ct.out_channels,
            ct.kernel_size,
            stride=ct.stride,
            padding=ct.padding,
            dilation=ct.dilation,
            bias=ct.bias is not None,
            device=ct.weight.device,
            dtype=ct.weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(torch.cat([ct.weight, self.pet.weight], dim=1))
            if ct.bias is not None:
                conv.bias.copy_(ct.bias)
        return conv


def widen_inputs(net: nn.Module, pattern: str) -> list[str]:
    """Give every input convolution matching `pattern` a PET channel; returns their names."""
    names = _matching(net, pattern)
    if not names or not all(isinstance(net.get_submodule(n), nn.Conv3d) for n in names):
        raise AdapterTargetError(
            f"input-convolution pattern {pattern!r} must match Conv3d modules; got {names}"
        )
    for name in names:
        _replace(net, name, WidenedConv(net.get_submodule(name)))
    return names


def inject_lora(
    net: nn.Module,
    targets: dict[str, str],
    cfg: AdapterConfig,
    *,
    dora: bool,
    encoder_prefix: str,
) -> list[str]:
    """Adapt the modules of `net` in target set `cfg.targets` (a backbone's `lora_targets`); returns
    their names. Target set `qv` first splits the fused projection (`targets["qkv"]`).

    peft freezes every other parameter of `net` as it injects; callers set the trainable set
    afterwards from their own declaration.
    """
    if cfg.targets == "qv":
        split_qkv(net, targets["qkv"])
    pattern = targets[cfg.targets]
    matched = _matching(net, pattern)
    if not matched:
        raise AdapterTargetError(f"adapter pattern {pattern!r} matches no module of {type(net).__name__}")
    outside = [name for name in matched if not name.startswith(encoder_prefix)]
    if outside:
        raise AdapterTargetError(
            f"adapter pattern {pattern!r} matches modules outside the encoder: {', '.join(outside[:5])}"
        )
    config = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.dropout,
        target_modules=pattern,
        use_dora=dora,
        bias="none",
    )
    inject_adapter_in_model(config, net)
    adapted = [name for name, m in net.named_modules() if isinstance(m, BaseTunerLayer)]
    if sorted(adapted) != sorted(matched):
        raise AdapterTargetError(f"peft adapted {adapted}, expected {matched}")
    return adapted


def merge_adapters(model: nn.Module) -> dict[str, int]:
    """Fold LoRA / DoRA into the frozen weights, re-fuse split q,k,v and widened convolutions, in place.

    What is left is plain torch / MONAI modules (no peft layer, no harness wrapper inside the
    networks); returns how many of each kind were folded.
    """
    tuners = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in tuners:
        layer.merge(safe_merge=True)
        _replace(model, name, layer.get_base_layer())
    fused = fuse_qkv(model)
    widened = [n for n, m in model.named_modules() if isinstance(m, WidenedConv)]
    for name in widened:
        _replace(model, name, model.get_submodule(name).fused())
    return {"adapters": len(tuners), "qkv": fused, "input_convs": len(widened)}
