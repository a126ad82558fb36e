"""Pictures of segmentations: for a few test patients, an axial slice through the largest
cross-section of the truth: CT in a soft-tissue window, PET as a colour overlay, the truth's contour
in white, and each prediction's contour in its own colour; one row per patient, one column per
prediction. Drawn from files on each patient's CT grid (the prediction files of predictions.py and
the cohort's CT, PET and label), with fixed colours and no timestamps, so the same files draw the
same bytes. The report's `examples` section draws the methods of a suite side by side; a unit logs
its own picture as an MLflow image artifact."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

CT_WINDOW = (-160.0, 240.0)
"""Soft-tissue window: level 40 HU, width 400 HU."""
COLOURS = ("#1f9bff", "#ff2bd6", "#3dff3d", "#00f0ff", "#9d6bff", "#c0ff00", "#ff8fd0", "#7fa7ff")
"""One per column, in order: fixed, so the bytes do not vary; none yellow, orange or red, which the
PET overlay's colour map uses."""
PICKS = ("best", "median", "worst")
CAPTION = (
    "Each panel: the axial slice through the largest cross-section of the truth, CT at level 40 / width "
    "400 HU, PET in colour (the top tenth of its values on that slice), the truth's contour in white, "
    "the prediction's in its colour. Radiological view: the patient's right on the left."
)


@dataclass(frozen=True)
class Panel:
    prediction: str
    """A prediction file on the patient's CT grid."""
    title: str


@dataclass(frozen=True)
class Example:
    """One row: a patient's files and a panel per prediction."""

    label: str
    ct: str
    pet: str | None
    truth: str | None
    panels: list[Panel] = field(default_factory=list)


def patient_dice(rows: pd.DataFrame) -> pd.Series:
    """Per patient: Dice over both classes pooled, 2 x sum |P ∩ G| / sum (|P| + |G|) (NaN where the
    patient has neither truth nor prediction)."""
    sums = rows.groupby("patient_id")[["intersection_voxels", "prediction_voxels", "truth_voxels"]].sum()
    size = sums["prediction_voxels"] + sums["truth_voxels"]
    return (2 * sums["intersection_voxels"] / size.where(size > 0)).rename("dice")


def pick(dice: pd.Series) -> list[tuple[str, str]]:
    """(pick, patient) for the best, median and worst patient by Dice; ties broken by patient ID,
    each patient once."""
    ordered = dice.dropna().sort_index().sort_values(ascending=False, kind="stable")
    if ordered.empty:
        return []
    chosen = {
        "best": ordered.index[0],
        "median": ordered.index[len(ordered) // 2],
        "worst": ordered.index[-1],
    }
    out, seen = [], set()
    for name in PICKS:
        if chosen[name] not in seen:
            out.append((name, str(chosen[name])))
            seen.add(chosen[name])
    return out


def _canonical(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A CT-grid volume reoriented to RAS+ (first axis to the patient's right, third up)."""
    import nibabel as nib

    return nib.orientations.apply_orientation(volume, nib.orientations.io_orientation(affine))


def _axial(volume: np.ndarray, z: int) -> np.ndarray:
    """An RAS+ volume's axial slice as an image: anterior up, the patient's right on the left."""
    return volume[:, :, z].T[::-1, ::-1]


def draw(examples: list[Example]):
    """The picture: a matplotlib figure, one row per example, one column per panel."""
    import matplotlib.pyplot as plt
    import nibabel as nib

    from pemma.data.transforms import on_ct_grid

    columns = max(len(e.panels) for e in examples)
    fig, axes = plt.subplots(
        len(examples), columns, figsize=(2.6 * columns, 2.6 * len(examples)), squeeze=False
    )
    for row, example in enumerate(examples):
        affine = nib.load(example.ct).affine
        ct = _canonical(on_ct_grid(example.ct, example.ct, "bilinear")[0].numpy(), affine)
        pet = (
            _canonical(on_ct_grid(example.pet, example.ct, "bilinear")[0].numpy(), affine)
            if example.pet
            else None
        )
        truth = (
            _canonical(on_ct_grid(example.truth, example.ct)[0].numpy().round(), affine)
            if example.truth
            else None
        )
        predicted = [_canonical(np.asarray(nib.load(p.prediction).dataobj), affine) for p in example.panels]
        if truth is not None and truth.any():
            area = (truth > 0).sum(axis=(0, 1))
        else:  # no truth: the first prediction's largest cross-section
            area = (predicted[0] > 0).sum(axis=(0, 1))
        z = int(np.argmax(area))
        for col in range(columns):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(example.panels):
                ax.axis("off")
                continue
            ax.imshow(
                _axial(ct, z), cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], interpolation="nearest"
            )
            if pet is not None:
                image = _axial(pet, z)
                low, high = np.percentile(image, (90, 99.9))
                ax.imshow(
                    np.ma.masked_less_equal(image, low),
                    cmap="hot",
                    vmin=low,
                    vmax=max(high, low + 1e-6),
                    alpha=0.45,
                    interpolation="nearest",
                )
            if truth is not None and (_axial(truth, z) > 0).any():
                ax.contour(_axial(truth, z) > 0, levels=[0.5], colors="white", linewidths=1.0)
            mine = _axial(predicted[col], z) > 0
            if mine.any():
                ax.contour(mine, levels=[0.5], colors=COLOURS[col % len(COLOURS)], linewidths=1.2)
            ax.set_title(example.panels[col].title, fontsize=8)
            if col == 0:
                ax.set_ylabel(example.label, fontsize=8)
    fig.tight_layout()
    return fig
