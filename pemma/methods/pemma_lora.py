"""PEMMA-LoRA: frozen CT network; PET embedding, PET skips (with betas) and LoRA on attention train."""

from __future__ import annotations

import copy

from pemma.methods.base import Built, Method, register_method
from pemma.modalities import SUBSETS


@register_method("pemma-lora", aliases=("lora",))
class PemmaLoraMethod(Method):
    summary = "PET embedding, PET skip branches + betas, LoRA on the frozen attention"
    test_inputs = SUBSETS
    train_inputs = SUBSETS
    dora = False
    builds_pemma = True

    def trainable_patterns(self, cfg):
        from pemma.models.pemma import NEW_MODULES

        head = (r"^base\.out\.",) if cfg.adapter.head_trainable else ()
        return (*NEW_MODULES, r"\.lora_", *head)

    def continual_patterns(self, cfg):
        """Continual stages update the low-rank adapters only, so neither modality is overwritten."""
        return (r"\.lora_",)

    def build(self, base, cfg, backbone):
        from pemma.models.adapters import inject_lora

        net = copy.deepcopy(base)
        adapted = inject_lora(
            net,
            backbone.lora_targets,
            cfg.adapter,
            dora=self.dora,
            encoder_prefix=backbone.encoder_prefix,
        )
        return Built(backbone.wrap_pemma(net, cfg.adapter), [f"base.{name}" for name in adapted])
