"""CT only: the CT-pretrained base, fine-tuned on the adaptation centre's CT (the no-PET reference)."""

from __future__ import annotations

import copy

from pemma.methods.base import Built, Method, register_method
from pemma.modalities import CT


@register_method("ct-only", aliases=("ct",))
class CTOnlyMethod(Method):
    reference_for = ("modalities",)
    summary = "the whole CT base, on the adaptation centre's CT"
    test_inputs = (CT,)
    train_inputs = (CT,)

    def build(self, base, cfg, backbone):
        from pemma.models.fusion import CTOnly

        return Built(CTOnly(copy.deepcopy(base)))
