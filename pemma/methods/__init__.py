"""Compared methods; importing this package registers them, in the order tables list them."""

# isort: off
from pemma.methods import ct_only, early_fusion, late_fusion, full_finetune, pemma_lora, pemma_dora  # noqa: F401
from pemma.methods import early_fusion_lora  # noqa: F401

# isort: on
from pemma.methods.base import (
    METHODS,
    Built,
    Method,
    build_method,
    reference_method,
    register_method,
    set_trainable,
)

__all__ = [
    "METHODS",
    "Built",
    "Method",
    "build_method",
    "reference_method",
    "register_method",
    "set_trainable",
]
