"""Late fusion: the CT base and a new PET network, logits averaged with a learned weight."""

from __future__ import annotations

import copy

from pemma.methods.base import Built, Method, register_method
from pemma.modalities import SUBSETS


@register_method("late-fusion", aliases=("lf",))
class LateFusionMethod(Method):
    summary = "CT network (from the base) + PET network (new) + mixing weight, everything"
    test_inputs = SUBSETS
    train_inputs = SUBSETS

    def build(self, base, cfg, backbone):
        from pemma.models.fusion import LateFusion

        return Built(LateFusion(copy.deepcopy(base), backbone.build(cfg.model, 1)))
