"""Read every file of a cohort once and refuse what training would choke on, naming patient and file.

The report doubles as the summary of `pemma-bench data check`: patients per centre, modalities,
spacings and sizes, label volumes per class, endpoint coverage, and the problems found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from pemma.classes import Classes
from pemma.data.hecktor import CLINICAL_COLUMNS, CLINICAL_CSV, Case, Cohort, CohortError

MIN_OVERLAP = 0.5
"""Share of the CT's physical box that PET and label must cover to be brought onto its grid."""


@dataclass(frozen=True)
class CaseInfo:
    patient_id: str
    centre: str
    ct_shape: tuple[int, ...]
    ct_spacing: tuple[float, ...]
    pet_shape: tuple[int, ...] | None
    pet_spacing: tuple[float, ...] | None
    has_endpoint: bool
    orientation: str = ""
    """The CT's axis codes (RAS, LPS, ...), from its affine."""
    pet_overlap: float | None = None
    """Share of the CT's world-space box the PET covers."""
    label_values: tuple[int, ...] | None = None
    """The values the label holds (None: no label)."""
    volumes_ml: dict[str, float] = field(default_factory=dict)
    """Per class name, its volume in ml (empty without a label)."""

    def row(self) -> dict:
        """The report's row: one `<class>_ml` column per class (`gtvp_ml`, `gtvn_ml` on HECKTOR)."""
        fields = {k: v for k, v in vars(self).items() if k != "volumes_ml"}
        return {**fields, **{f"{name}_ml": ml for name, ml in self.volumes_ml.items()}}


def _load(path: Path, patient: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj)
    except Exception as err:  # nibabel raises many kinds for a broken file
        raise CohortError(f"patient {patient}: {what} {path}: unreadable NIfTI ({err})") from err
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CohortError(f"patient {patient}: {what} {path}: expected a 3-D volume, got shape {data.shape}")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise CohortError(f"patient {patient}: {what} {path}: {bad} NaN or infinite voxel(s)")
    if abs(np.linalg.det(img.affine[:3, :3])) < 1e-9:
        raise CohortError(f"patient {patient}: {what} {path}: degenerate affine, cannot be aligned")
    return data, img.affine


def _box(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array(
        [
            [i, j, k, 1]
            for i in (-0.5, shape[0] - 0.5)
            for j in (-0.5, shape[1] - 0.5)
            for k in (-0.5, shape[2] - 0.5)
        ]
    )
    world = (affine @ corners.T).T[:, :3]
    return world.min(0), world.max(0)


def _covered(ct_box, other_box) -> float:
    lo = np.maximum(ct_box[0], other_box[0])
    hi = np.minimum(ct_box[1], other_box[1])
    inter = np.prod(np.clip(hi - lo, 0, None))
    return float(inter / np.prod(ct_box[1] - ct_box[0]))


def _not_constant(data: np.ndarray, path: Path, patient: str, what: str) -> None:
    """An image every voxel of which holds one value (all zero: an empty export) carries nothing."""
    if data.size == 0 or data.min() == data.max():
        value = f"{data.flat[0]:g}" if data.size else "none"
        raise CohortError(
            f"patient {patient}: {what} {path}: every voxel is {value} (an empty or constant image)"
        )


def inspect_case(case: Case, endpoint_ids: set[str], classes: Classes) -> CaseInfo:
    pid = case.patient_id
    ct, ct_affine = _load(case.ct, pid, "CT")
    _not_constant(ct, case.ct, pid, "CT")
    ct_box = _box(ct.shape, ct_affine)
    spacing = tuple(float(s) for s in np.sqrt((ct_affine[:3, :3] ** 2).sum(0)))
    pet_shape = pet_spacing = share = None
    if case.pet is not None:
        pet, pet_affine = _load(case.pet, pid, "PET")
        _not_constant(pet, case.pet, pid, "PET")
        share = _covered(ct_box, _box(pet.shape, pet_affine))
        if share < MIN_OVERLAP:
            raise CohortError(
                f"patient {pid}: PET {case.pet} covers {share:.0%} of the CT's extent "
                f"({case.ct}); they cannot be aligned"
            )
        pet_shape = tuple(int(s) for s in pet.shape)
        pet_spacing = tuple(float(s) for s in np.sqrt((pet_affine[:3, :3] ** 2).sum(0)))
    values, volumes = None, {}
    if case.label is not None:
        label, label_affine = _load(case.label, pid, "label")
        found = np.unique(label).tolist()
        odd = sorted(set(found) - {0, *classes.values})[:5]
        if odd:
            raise CohortError(
                f"patient {pid}: label {case.label} has values {odd} outside {{{classes.describe()}}}"
            )
        covered = _covered(ct_box, _box(label.shape, label_affine))
        if covered < MIN_OVERLAP:
            raise CohortError(
                f"patient {pid}: label {case.label} covers {covered:.0%} of the CT's extent "
                f"({case.ct}); they cannot be aligned"
            )
        voxel_ml = abs(np.linalg.det(label_affine[:3, :3])) / 1000
        counts = np.bincount(label.astype(np.int64).ravel(), minlength=classes.count + 1)
        volumes = {n: float(counts[v] * voxel_ml) for n, v in zip(classes.names, classes.values, strict=True)}
        values = tuple(int(v) for v in found)
    return CaseInfo(
        pid,
        case.centre,
        tuple(int(s) for s in ct.shape),
        spacing,
        pet_shape,
        pet_spacing,
        pid in endpoint_ids,
        "".join(nib.aff2axcodes(ct_affine)),
        share,
        values,
        volumes,
    )


def check_cohort(cohort: Cohort) -> pd.DataFrame:
    """One row per patient (see CaseInfo); raises CohortError at the first unusable file."""
    endpoint_ids = set(cohort.endpoints["PatientID"]) if cohort.endpoints is not None else set()
    report = pd.DataFrame([inspect_case(c, endpoint_ids, cohort.classes).row() for c in cohort.cases])
    report.attrs["classes"] = cohort.classes
    return report


def _classes(report: pd.DataFrame) -> Classes:
    return report.attrs["classes"]


def summarise(report: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per-centre summary and the notes worth reading (patients that can serve only some phases)."""
    rows = []
    classes = _classes(report)
    for centre, g in report.groupby("centre"):
        rows.append(
            {
                "centre": centre,
                "patients": len(g),
                "with PET": int(g["pet_shape"].notna().sum()),
                "with label": int(g["label_values"].notna().sum()),
                "with endpoint": int(g["has_endpoint"].sum()),
                "CT spacing (mm)": _spread(g["ct_spacing"]),
                "CT size": _spread(g["ct_shape"]),
                "CT orientation": ", ".join(sorted(set(g["orientation"]))),
                "PET spacing (mm)": _spread(g["pet_spacing"].dropna()),
                "PET covers CT (min)": f"{g['pet_overlap'].min():.0%}"
                if g["pet_overlap"].notna().any()
                else "—",
                **{
                    f"{title} ml (median)": _median(g, f"{name}_ml")
                    for name, title in zip(classes.names, classes.titles, strict=True)
                },
            }
        )
    notes = []
    no_pet = report[report["pet_shape"].isna()]["patient_id"].tolist()
    no_label = report[report["label_values"].isna()]["patient_id"].tolist()
    no_endpoint = report[~report["has_endpoint"]]["patient_id"].tolist()
    if no_pet:
        notes.append(
            f"{len(no_pet)} patient(s) without PET serve CT pretraining and CT-only evaluation only: "
            + ", ".join(no_pet[:8])
        )
    if no_label:
        notes.append(
            f"{len(no_label)} patient(s) without a label are left out of segmentation: "
            + ", ".join(no_label[:8])
        )
    if no_endpoint:
        notes.append(f"{len(no_endpoint)} patient(s) without an endpoint are left out of prognosis")
    return pd.DataFrame(rows), notes


def clinical_gaps(cohort: Cohort) -> list[str]:
    """What prognosis with EHR would miss: patients with images but no clinical row (their tokens are
    all the learned 'missing' token), clinical columns absent from the file (prognosis with EHR refuses
    to run). Warnings: segmentation does not read the clinical file."""
    if cohort.clinical is None:
        return [f"no clinical file ({CLINICAL_CSV}): prognosis with EHR cannot run"]
    lines = []
    absent = [c for c in CLINICAL_COLUMNS if c not in cohort.clinical.columns]
    if absent:
        lines.append(f"{CLINICAL_CSV} lacks column(s) {', '.join(absent)}: prognosis with EHR cannot run")
    known = set(cohort.clinical["PatientID"].astype(str))
    without = [c.patient_id for c in cohort.cases if c.patient_id not in known]
    if without:
        lines.append(
            f"{len(without)} patient(s) with images have no clinical row (prognosis with EHR gives them "
            "the learned missing token for every variable): "
            + ", ".join(without[:8])
            + (" ..." if len(without) > 8 else "")
        )
    return lines


def per_case(report: pd.DataFrame) -> pd.DataFrame:
    """`data check --cases`: one row per patient: centre, label values present, each class's volume,
    CT size, spacing and orientation, and the share of the CT the PET covers."""
    classes = _classes(report)
    rows = []
    for _, r in report.iterrows():
        values = r["label_values"] if isinstance(r["label_values"], tuple) else None
        rows.append(
            {
                "patient": r["patient_id"],
                "centre": r["centre"],
                "label values": "—" if values is None else " ".join(map(str, values)),
                **{
                    f"{title} ml": "—" if values is None else f"{r[f'{name}_ml']:.1f}"
                    for name, title in zip(classes.names, classes.titles, strict=True)
                },
                "CT size": " x ".join(map(str, r["ct_shape"])),
                "CT spacing (mm)": " x ".join(f"{v:.3g}" for v in r["ct_spacing"]),
                "orientation": r["orientation"],
                "PET covers CT": "—" if pd.isna(r["pet_overlap"]) else f"{r['pet_overlap']:.0%}",
            }
        )
    return pd.DataFrame(rows)


def _median(group: pd.DataFrame, column: str) -> str:
    return f"{group[column].median():.1f}" if column in group and group[column].notna().any() else "—"


def absent_classes(report: pd.DataFrame) -> list[str]:
    """Labelled patients without a class (common for GTVn): information, not a problem."""
    lines = []
    classes = _classes(report)
    for klass, name in zip(classes.names, classes.titles, strict=True):
        if f"{klass}_ml" not in report:
            continue
        lacking = report[report[f"{klass}_ml"] == 0]["patient_id"].tolist()
        if lacking:
            lines.append(
                f"{len(lacking)} labelled patient(s) have no {name} voxel (their {name} Dice is undefined; "
                "a test split where every label lacks it has no mean Dice): " + ", ".join(lacking[:8])
            )
    return lines


def _spread(values: pd.Series) -> str:
    if values.empty:
        return "—"
    arr = np.array(values.tolist(), dtype=float)
    lo, hi = arr.min(0), arr.max(0)
    if np.allclose(lo, hi):
        return " x ".join(f"{v:.3g}" for v in lo)
    return " x ".join(f"{a:.3g}-{b:.3g}" for a, b in zip(lo, hi, strict=True))
