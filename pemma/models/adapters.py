"""peft glue: inject LoRA / DoRA into a network's encoder and report exactly what was adapted."""

from __future__ import annotations

import re

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from pemma.config import AdapterConfig


class AdapterTargetError(ValueError):
    """An adapter pattern that matches nothing, or matches modules outside the encoder."""


def inject_lora(
    net: nn.Module, pattern: str, cfg: AdapterConfig, *, dora: bool, encoder_prefix: str
) -> list[str]:
    """Adapt the modules of `net` whose full name matches `pattern`; returns their names.

    peft freezes every other parameter of `net` as it injects; callers set the trainable set
    afterwards from their own declaration.
    """
    matched = [name for name, _ in net.named_modules() if re.fullmatch(pattern, name)]
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
