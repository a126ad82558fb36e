"""Read every file of a cohort once and refuse what training would choke on, naming patient and file.

The report doubles as the summary of `pemma-bench data check`: patients per centre, modalities,
spacings and sizes, label volumes per class, endpoint coverage, and the problems found.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

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
    gtvp_ml: float | None
    gtvn_ml: float | None
    has_endpoint: bool


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


def inspect_case(case: Case, endpoint_ids: set[str]) -> CaseInfo:
    pid = case.patient_id
    ct, ct_affine = _load(case.ct, pid, "CT")
    _not_constant(ct, case.ct, pid, "CT")
    ct_box = _box(ct.shape, ct_affine)
    spacing = tuple(float(s) for s in np.sqrt((ct_affine[:3, :3] ** 2).sum(0)))
    pet_shape = pet_spacing = None
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
    gtvp = gtvn = None
    if case.label is not None:
        label, label_affine = _load(case.label, pid, "label")
        values = set(np.unique(label).tolist())
        if not values <= {0, 1, 2}:
            odd = sorted(values - {0, 1, 2})[:5]
            raise CohortError(
                f"patient {pid}: label {case.label} has values {odd} outside {{0 background, 1 GTVp, 2 GTVn}}"
            )
        share = _covered(ct_box, _box(label.shape, label_affine))
        if share < MIN_OVERLAP:
            raise CohortError(
                f"patient {pid}: label {case.label} covers {share:.0%} of the CT's extent "
                f"({case.ct}); they cannot be aligned"
            )
        voxel_ml = abs(np.linalg.det(label_affine[:3, :3])) / 1000
        gtvp, gtvn = float((label == 1).sum() * voxel_ml), float((label == 2).sum() * voxel_ml)
    return CaseInfo(
        pid,
        case.centre,
        tuple(int(s) for s in ct.shape),
        spacing,
        pet_shape,
        pet_spacing,
        gtvp,
        gtvn,
        pid in endpoint_ids,
    )


def check_cohort(cohort: Cohort) -> pd.DataFrame:
    """One row per patient (see CaseInfo); raises CohortError at the first unusable file."""
    endpoint_ids = set(cohort.endpoints["PatientID"]) if cohort.endpoints is not None else set()
    return pd.DataFrame([asdict(inspect_case(c, endpoint_ids)) for c in cohort.cases])


def summarise(report: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per-centre summary and the notes worth reading (patients that can serve only some phases)."""
    rows = []
    for centre, g in report.groupby("centre"):
        rows.append(
            {
                "centre": centre,
                "patients": len(g),
                "with PET": int(g["pet_shape"].notna().sum()),
                "with label": int(g["gtvp_ml"].notna().sum()),
                "with endpoint": int(g["has_endpoint"].sum()),
                "CT spacing (mm)": _spread(g["ct_spacing"]),
                "CT size": _spread(g["ct_shape"]),
                "PET spacing (mm)": _spread(g["pet_spacing"].dropna()),
                "GTVp ml (median)": f"{g['gtvp_ml'].median():.1f}" if g["gtvp_ml"].notna().any() else "—",
                "GTVn ml (median)": f"{g['gtvn_ml'].median():.1f}" if g["gtvn_ml"].notna().any() else "—",
            }
        )
    notes = []
    no_pet = report[report["pet_shape"].isna()]["patient_id"].tolist()
    no_label = report[report["gtvp_ml"].isna()]["patient_id"].tolist()
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


def absent_classes(report: pd.DataFrame) -> list[str]:
    """Labelled patients without a class (common for GTVn): information, not a problem."""
    lines = []
    for klass, name in (("gtvp", "GTVp"), ("gtvn", "GTVn")):
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
