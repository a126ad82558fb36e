"""The method protocol: how a compared method builds its model, what it trains, which inputs it takes.

The runner only talks to this protocol. A method that needs more grows an optional hook here with a
no-op default; the runner never asks for a method by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from pemma.config import RunConfig
from pemma.modalities import LABELS, MODALITIES, SUBSETS, UnsupportedModalityError
from pemma.models.backbones import BACKBONES, Backbone
from pemma.registry import Registry

if TYPE_CHECKING:  # a method's declaration loads without torch: listing and checking a suite stay fast
    from torch import nn

    from pemma.models.base import SegmentationModel


@dataclass
class Built:
    model: SegmentationModel
    adapted_modules: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    """Names of the parameters the method trains: what a saved result holds."""


class Method:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    """What trains, in words, for `pemma-bench methods`."""
    test_inputs: ClassVar[tuple[str, ...]]
    """Input subsets the method's model accepts (its `accepts`; a test holds the two equal)."""
    train_inputs: ClassVar[tuple[str, ...]]
    """Input subsets used in training; more than one means modality dropout."""
    needs_base: ClassVar[bool] = True
    """Whether the method starts from the CT-pretrained base."""
    reference_for: ClassVar[tuple[str, ...]] = ()
    builds_pemma: ClassVar[bool] = False
    """Whether the method's model is the backbone's PEMMA wrapper (whose revision its keys carry)."""
    """Comparisons this method is the reference of (see REFERENCE_ROLES); one method per role."""

    @classmethod
    def revision(cls, backbone: str) -> int:
        """The revision of the model code this method builds on `backbone` (0: the first)."""
        return BACKBONES.get(backbone).pemma_revision if cls.builds_pemma else 0

    @classmethod
    def inputs(cls) -> tuple[str, ...]:
        """Input subsets accepted at test time (what the model accepts)."""
        return cls.test_inputs

    def trainable_patterns(self, cfg: RunConfig) -> tuple[str, ...] | None:
        """Regexes (searched in parameter names) of what trains; None means every parameter."""
        return None

    def continual_patterns(self, cfg: RunConfig) -> tuple[str, ...] | None:
        """What a continual-learning stage updates; by default what the method trains."""
        return self.trainable_patterns(cfg)

    @classmethod
    def stage_subset(cls, data_inputs: str) -> str:
        """The subset a stage trains on when its data holds `data_inputs` (or the part the model takes)."""
        if data_inputs in cls.inputs():
            return data_inputs
        for subset in cls.inputs():
            if MODALITIES[subset] <= MODALITIES[data_inputs]:
                return subset
        raise UnsupportedModalityError(f"{cls.name} accepts no part of {LABELS[data_inputs]} stage data")

    def build(self, base: nn.Module | None, cfg: RunConfig, backbone: Backbone) -> Built:
        raise NotImplementedError

    def create(self, base: nn.Module | None, cfg: RunConfig) -> Built:
        from pemma.models.networks import set_memory_format

        built = self.build(base, cfg, BACKBONES.get(cfg.backbone))
        built.trained = set_trainable(built.model, self.trainable_patterns(cfg))
        set_memory_format(built.model, cfg.model.channels_last)
        return built

    def train_schedule(self, cfg: RunConfig) -> tuple[tuple[str, ...], tuple[float, ...]]:
        """Subsets drawn per batch and their probabilities (the modality-dropout schedule)."""
        probs = dict(zip(SUBSETS, cfg.train.modality_dropout, strict=True))
        chosen = tuple(s for s in self.train_inputs if probs[s] > 0) or self.train_inputs[:1]
        total = sum(probs[s] for s in chosen) or 1.0
        return chosen, tuple(probs[s] / total if len(chosen) > 1 else 1.0 for s in chosen)

    @classmethod
    def describe(cls) -> dict[str, str]:
        return {
            "method": cls.name,
            "trains": cls.summary,
            "train inputs": ", ".join(LABELS[s] for s in cls.train_inputs),
            "test inputs": ", ".join(LABELS[s] for s in cls.inputs()),
            "starts from": "CT base" if cls.needs_base else "scratch",
        }


REFERENCE_ROLES = {
    "parameters": "trainable-parameter shares are given as a percentage of this method's count",
    "modalities": "gains from adding a modality are given relative to this method (images of CT alone)",
    "memory": "training memory and step time (`bench memory`) are given relative to this method's plain "
    "settings",
}


def reference_method(role: str) -> str:
    """The registered method that declares itself the reference for `role`."""
    if role not in REFERENCE_ROLES:
        raise KeyError(f"unknown reference role {role!r}; known: {', '.join(REFERENCE_ROLES)}")
    found = [name for name, cls in METHODS.items() if role in cls.reference_for]
    if len(found) != 1:
        raise RuntimeError(f"{len(found)} methods declare themselves the {role} reference: {found}")
    return found[0]


def build_method(name: str, cfg: RunConfig, base: nn.Module | None) -> Built:
    """The method's model for `cfg`, from `base` when the method starts from the CT base."""
    method = METHODS.get(name)()
    return method.create(base if method.needs_base else None, cfg)


def set_trainable(model: nn.Module, patterns: tuple[str, ...] | None) -> list[str]:
    """Make exactly the parameters matching `patterns` trainable; returns their names."""
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(patterns is None or any(re.search(p, name) for p in patterns))
        if param.requires_grad:
            names.append(name)
    if not names:
        raise ValueError(f"no parameter of {type(model).__name__} matches the trainable patterns {patterns}")
    return names


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str, *, aliases: tuple[str, ...] = ()):
    def decorator(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS.add(name, cls, aliases=aliases)
        return cls

    return decorator
