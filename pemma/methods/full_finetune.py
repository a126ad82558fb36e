"""Full fine-tuning: the PEMMA architecture with every parameter trainable (no adapters)."""

from __future__ import annotations

import copy

from pemma.methods.base import Built, Method, register_method
from pemma.modalities import SUBSETS


@register_method("full-finetune", aliases=("fft",))
class FullFinetuneMethod(Method):
    summary = "PEMMA architecture, everything (CT backbone and decoder included)"
    test_inputs = SUBSETS
    train_inputs = SUBSETS
    reference_for = ("memory",)
    builds_pemma = True

    def build(self, base, cfg, backbone):
        return Built(backbone.wrap_pemma(copy.deepcopy(base), cfg.adapter))
