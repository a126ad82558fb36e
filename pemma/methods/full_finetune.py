"""Full fine-tuning: the PEMMA architecture with every parameter trainable (no adapters)."""

from __future__ import annotations

import copy

from pemma.methods.base import Built, Method, register_method
from pemma.modalities import SUBSETS
from pemma.models.pemma import PemmaModel


@register_method("full-finetune", aliases=("fft",))
class FullFinetuneMethod(Method):
    summary = "PEMMA architecture, everything (CT backbone and decoder included)"
    model_cls = PemmaModel
    train_inputs = SUBSETS
    reference_for = ("memory",)

    def build(self, base, cfg, backbone):
        return Built(backbone.wrap_pemma(copy.deepcopy(base), cfg.adapter))
