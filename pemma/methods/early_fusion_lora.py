"""Early fusion + LoRA: the CT base widened to a second (PET) input channel and adapted with LoRA.

The fair comparison the published method lacks: the same frozen CT base, the same adapters, rank and
schedule (modality dropout included) as PEMMA-LoRA, but PET enters as an input channel instead of
through a PET pathway. New PET kernels of the input convolutions start at zero (so at start the model
is the CT base) and train; the CT kernels stay frozen. A missing channel is zero-filled.
"""

from __future__ import annotations

import copy

from pemma.methods.base import Built, Method, register_method
from pemma.modalities import SUBSETS


@register_method("early-fusion-lora", aliases=("ef-lora",))
class EarlyFusionLoraMethod(Method):
    summary = "PET kernels of the input convolutions (new) + LoRA on the frozen CT base's attention"
    test_inputs = SUBSETS
    train_inputs = SUBSETS

    def trainable_patterns(self, cfg):
        head = (r"^net\.out\.",) if cfg.adapter.head_trainable else ()
        return (r"\.pet\.weight$", r"\.lora_", *head)

    def continual_patterns(self, cfg):
        return (r"\.lora_",)

    def build(self, base, cfg, backbone):
        from pemma.models.adapters import inject_lora, widen_inputs
        from pemma.models.fusion import EarlyFusion

        net = copy.deepcopy(base)
        adapted = inject_lora(
            net, backbone.lora_targets, cfg.adapter, dora=False, encoder_prefix=backbone.encoder_prefix
        )
        widened = widen_inputs(net, backbone.input_convs)
        return Built(EarlyFusion(net), [f"net.{name}" for name in (*adapted, *widened)])
