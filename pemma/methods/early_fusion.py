"""Early fusion: CT and PET as two input channels of one network, trained fully from scratch."""

from __future__ import annotations

from pemma.methods.base import Built, Method, register_method
from pemma.modalities import CTPET, SUBSETS


@register_method("early-fusion", aliases=("ef",))
class EarlyFusionMethod(Method):
    reference_for = ("parameters",)
    summary = "a 2-channel network, everything"
    test_inputs = SUBSETS
    train_inputs = (CTPET,)
    needs_base = False

    def build(self, base, cfg, backbone):
        from pemma.models.fusion import EarlyFusion

        return Built(EarlyFusion(backbone.build(cfg.model, 2)))
