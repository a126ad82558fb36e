"""Test-time conditions (see base.py); importing this package registers them, in listing order."""

# isort: off
from pemma.conditions import subsets, pet_shift, pet_blur, pet_noise  # noqa: F401

# isort: on
from pemma.conditions.base import CONDITIONS, Applied, Condition, parse, register_condition

__all__ = ["CONDITIONS", "Applied", "Condition", "parse", "register_condition"]
