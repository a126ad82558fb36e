"""PEMMA-DoRA: as PEMMA-LoRA, with weight-decomposed adapters (magnitude and direction)."""

from __future__ import annotations

from pemma.methods.base import register_method
from pemma.methods.pemma_lora import PemmaLoraMethod


@register_method("pemma-dora", aliases=("dora",))
class PemmaDoraMethod(PemmaLoraMethod):
    summary = "PET embedding, PET skip branches + betas, DoRA on the frozen attention"
    dora = True
