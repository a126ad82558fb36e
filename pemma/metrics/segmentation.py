"""Dice per class: HECKTOR's aggregated Dice (from voxel counts over all cases) and per-case Dice.

Empty-case policy: a case whose ground truth and prediction are both empty for a class has no
per-case Dice for that class (it is excluded from the mean, not counted as 1). Aggregated Dice needs
no policy for such a case: it adds nothing to either sum.

Boundary metrics (Metrics Reloaded pairs an overlap metric with a boundary one; HECKTOR 2021 ranked
on HD95 too), per case and class on the original CT grid, in mm from the grid's voxel sizes, with
MONAI's implementations: HD95, the 95th percentile of the symmetric surface distances, and the
normalised surface Dice (NSD) at a tolerance `eval.nsd_tolerance_mm` (3 mm by default: the slice
thickness of most HECKTOR CTs and well inside the several millimetres by which experts' GTV contours
differ). Empty structures: both truth and prediction empty -> both undefined (NaN, left out of
medians, as per-case Dice); one empty and not the other (a missed or an invented structure) -> NSD 0
and HD95 the diagonal of the image in mm, the largest distance the grid allows, so that a median
counts it as the worst case instead of dropping it.

Classes are the cohort's (pemma/classes.py; HECKTOR's GTVp and GTVn by default), named as metrics.

Absent-class policy: a class absent from every ground truth of the evaluated set has no aggregated
Dice (NaN), whatever a model predicts, and the headline mean (of the classes: GTVp and GTVn on
HECKTOR) is then undefined too. The mean is never silently the other class alone, and whether it is
defined depends on the test split only, so it is the same for every method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pemma.classes import HECKTOR

if TYPE_CHECKING:  # the class names load without torch (reports, listing); scoring imports MONAI
    import torch


@dataclass
class DiceAccumulator:
    """Voxel counts per case and class: |P ∩ G|, |P|, |G|."""

    names: tuple[str, ...] = HECKTOR.names
    """The foreground classes' names, in label order (value k is names[k - 1])."""
    intersection: list[np.ndarray] = field(default_factory=list)
    predicted: list[np.ndarray] = field(default_factory=list)
    truth: list[np.ndarray] = field(default_factory=list)
    per_case: list[np.ndarray] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.names) + 1

    def add(self, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """`prediction` and `label`: integer maps of shape (1, 1, *spatial) or (1, *spatial)."""
        from monai.metrics import compute_dice
        from monai.networks.utils import one_hot

        pred = one_hot(prediction.reshape(1, 1, *prediction.shape[-3:]).long(), self.num_classes)
        true = one_hot(label.reshape(1, 1, *label.shape[-3:]).long(), self.num_classes)
        dims = (2, 3, 4)
        self.intersection.append((pred * true).sum(dims)[0, 1:].double().numpy())
        self.predicted.append(pred.sum(dims)[0, 1:].double().numpy())
        self.truth.append(true.sum(dims)[0, 1:].double().numpy())
        # MONAI's Dice with ignore_empty=False scores empty/empty as 1; we exclude such cases instead.
        dice = compute_dice(pred, true, include_background=False, ignore_empty=False)[0].double().numpy()
        both_empty = (self.predicted[-1] == 0) & (self.truth[-1] == 0)
        self.per_case.append(np.where(both_empty, np.nan, dice))

    def aggregated(self) -> dict[str, float]:
        if not self.intersection:  # no case scored (a cohort without labels)
            return _named(np.full(len(self.names), np.nan), self.names)
        inter = np.sum(self.intersection, axis=0)
        truth = np.sum(self.truth, axis=0)
        size = np.sum(self.predicted, axis=0) + truth
        with np.errstate(invalid="ignore", divide="ignore"):
            dsc = np.where(truth > 0, 2 * inter / size, np.nan)
        return _named(dsc, self.names)

    def case_mean(self) -> dict[str, float]:
        if not self.per_case:
            return _named(np.full(len(self.names), np.nan), self.names)
        cases = np.array(self.per_case)
        with np.errstate(invalid="ignore"):
            means = [
                float(np.nanmean(cases[:, k])) if np.any(~np.isnan(cases[:, k])) else float("nan")
                for k in range(cases.shape[1])
            ]
        return _named(np.array(means), self.names)


def _named(per_class: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """Per-class values and their mean, which is undefined (NaN) unless every class has a value."""
    out = {name: float(v) for name, v in zip(names, per_class, strict=True)}
    out["mean"] = float(np.mean(per_class))
    return out


def boundary_metrics(
    prediction: torch.Tensor,
    truth: torch.Tensor,
    spacing: tuple[float, float, float],
    tolerance_mm: float,
    count: int = HECKTOR.count,
) -> tuple[np.ndarray, np.ndarray]:
    """(HD95 in mm, NSD at `tolerance_mm`) per foreground class (`count` of them, label values 1..count)
    of one case: integer maps of shape (..., *spatial) on a grid of `spacing` mm; empty structures as
    the module says."""
    import warnings

    from monai.metrics import compute_hausdorff_distance, compute_surface_dice
    from monai.networks.utils import one_hot

    classes = count + 1
    shape = prediction.shape[-3:]
    prediction, truth = _around_structures(prediction.reshape(shape), truth.reshape(shape))
    pred = one_hot(prediction.reshape(1, 1, *prediction.shape).long(), classes)
    true = one_hot(truth.reshape(1, 1, *truth.shape).long(), classes)
    spacing = tuple(float(v) for v in spacing)
    with warnings.catch_warnings():  # MONAI's own deprecated argument; empty classes (handled below)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        hd95 = compute_hausdorff_distance(pred, true, percentile=95, spacing=spacing)[0].double().numpy()
        nsd = compute_surface_dice(pred, true, [tolerance_mm] * (classes - 1), spacing=spacing)
    nsd = nsd[0].double().numpy()
    has_pred = pred.flatten(2).any(-1)[0, 1:].numpy()
    has_true = true.flatten(2).any(-1)[0, 1:].numpy()
    diagonal = float(np.linalg.norm(np.array(shape) * np.array(spacing)))
    one_empty = has_pred != has_true
    neither = ~has_pred & ~has_true
    hd95 = np.where(one_empty, diagonal, np.where(neither, np.nan, hd95))
    nsd = np.where(one_empty, 0.0, np.where(neither, np.nan, nsd))
    return hd95, nsd


def _around_structures(prediction: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps cut to the box around every labelled voxel of either, one background voxel added on
    each side (surface distances do not change; on a HECKTOR-size CT grid the metrics cost a fraction)."""
    import torch

    either = (prediction > 0) | (truth > 0)
    if not either.any():
        return prediction[:1, :1, :1], truth[:1, :1, :1]
    box = []
    for axis in range(3):
        hit = either.any(dim=tuple(a for a in range(3) if a != axis)).nonzero()
        box.append(slice(int(hit.min()), int(hit.max()) + 1))
    pad = [(1, 1)] * 3
    cut = [np.pad(m[tuple(box)].cpu().numpy(), pad) for m in (prediction, truth)]
    return torch.as_tensor(cut[0]), torch.as_tensor(cut[1])
