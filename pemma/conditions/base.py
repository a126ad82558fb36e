"""Test-time conditions: what a unit's test inputs go through before inference, scored without
retraining. A condition declares its name, the input subset the model sees, its parameter (name, unit,
default magnitudes) and a deterministic transform of one patient's working-grid inputs (never the
truth). The three input subsets are conditions too (`ctpet`, `ct`, `pet`: inputs left out, nothing
changed), so metric names, per-patient rows and report columns all come from these declarations.

Adding a condition is one module whose function carries `@register_condition(...)`, plus its import
line in conditions/__init__.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pemma.data.keys import WORKING_AFFINE
from pemma.modalities import CTPET
from pemma.registry import Registry

if TYPE_CHECKING:  # declaring a condition loads no torch: `conditions` and suite checks stay fast
    import torch

Transform = Callable[[dict, float, np.random.Generator], dict]
"""(one patient's item: 'ct' / 'pet' tensors (1, D, H, W) on the working grid and its affine, the
magnitude, a generator seeded for this patient and condition) -> the item with its inputs changed."""


@dataclass(frozen=True)
class Condition:
    name: str
    description: str
    subset: str
    """The input subset the model sees under this condition."""
    parameter: str = ""
    """What the magnitude measures, e.g. 'translation'; empty for the plain subsets."""
    unit: str = ""
    magnitudes: tuple[float, ...] = ()
    """The default grid of magnitudes (a suite may give others)."""
    transform: Transform | None = None
    clean: float = 0.0
    """The magnitude that changes nothing (evaluated without the transform, so it reproduces the
    unchanged inputs' Dice exactly)."""
    bounds: tuple[float, float] = (0.0, float("inf"))
    """Magnitudes allowed (inclusive)."""

    def key(self, magnitude: float | None) -> str:
        """The name metrics and per-patient rows use: `ctpet`, or e.g. `pet-shift-8mm`."""
        return self.name if magnitude is None else f"{self.name}-{magnitude:g}{self.unit}"


CONDITIONS: Registry[Condition] = Registry("test-time condition")


def register_condition(
    name: str,
    description: str,
    *,
    parameter: str,
    unit: str,
    magnitudes: tuple[float, ...],
    subset: str = CTPET,
    clean: float = 0.0,
    bounds: tuple[float, float] = (0.0, float("inf")),
):
    """Register the decorated transform as the condition `name`."""

    def register(transform: Transform) -> Transform:
        condition = Condition(
            name, description, subset, parameter, unit, magnitudes, transform, clean, bounds
        )
        CONDITIONS.add(name, condition)
        return transform

    return register


@dataclass(frozen=True)
class Applied:
    """One condition at one magnitude, as an evaluation pass runs it."""

    condition: Condition
    magnitude: float | None = None

    @property
    def key(self) -> str:
        return self.condition.key(self.magnitude)

    @property
    def subset(self) -> str:
        return self.condition.subset

    def apply(self, item: dict, patient_id: str, seed: int) -> dict:
        """The patient's inputs under this condition: deterministic in (seed, patient, condition), the
        same draw for every method; the clean magnitude (or a plain subset) leaves them untouched."""
        if (
            self.condition.transform is None
            or self.magnitude is None
            or self.magnitude == self.condition.clean
        ):
            return item
        digest = hashlib.sha256(f"{seed}/{patient_id}/{self.condition.name}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        return self.condition.transform(dict(item), float(self.magnitude), rng)


def parse(specs: tuple[str, ...]) -> list[Applied]:
    """`eval.conditions` entries as passes: 'pet-shift' (its default magnitudes) or 'pet-shift=0,4,8'."""
    out: list[Applied] = []
    for spec in specs:
        name, _, values = spec.partition("=")
        condition = CONDITIONS.get(name.strip())
        if condition.transform is None:
            raise ValueError(f"eval.conditions: {name!r} is an input subset, scored for every method already")
        try:
            magnitudes = tuple(float(v) for v in values.split(",") if v.strip()) or condition.magnitudes
        except ValueError as err:
            raise ValueError(f"eval.conditions: {spec!r}: magnitudes are numbers, e.g. {name}=0,4,8") from err
        low, high = condition.bounds
        if any(not low <= m <= high for m in magnitudes):
            raise ValueError(
                f"eval.conditions: {spec!r}: {condition.parameter} must lie in [{low:g}, {high:g}] "
                f"{condition.unit}"
            )
        out += [Applied(condition, m) for m in magnitudes]
    unique: dict[str, Applied] = {}
    for applied in out:  # each key once, in the order first given
        unique.setdefault(applied.key, applied)
    return list(unique.values())


def spacing_of(item: dict) -> np.ndarray:
    """Voxel sizes (mm) of the item's working grid, from its affine."""
    affine = np.asarray(item[WORKING_AFFINE], dtype=float)
    return np.linalg.norm(affine[:3, :3], axis=0)


def as_like(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """`array` as a tensor of `like`'s type, dtype and device (MetaTensor metadata kept)."""
    import torch

    out = like.clone()
    out.copy_(torch.as_tensor(array, dtype=like.dtype))
    return out
