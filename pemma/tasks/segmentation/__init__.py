"""Segmentation: Dice on every input subset a method accepts, with optional continual stages."""

from pemma.tasks.segmentation import task  # noqa: F401
