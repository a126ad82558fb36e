"""A synthetic cohort in the HECKTOR 2022 layout.

Each patient is a head-and-neck-like phantom: body, airway, mandible and spine on CT; brain and
tonsil uptake on PET. The primary tumour (GTVp, label 1) and lymph nodes (GTVn, label 2) are barely
visible on CT and bright on PET, while benign PET hot spots and CT look-alike blobs make each
modality alone ambiguous. CT and PET are written on different grids, as in real data, so the loader
must resample. Every number comes from ``numpy.random.default_rng([seed, centre, patient])``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

from pemma.classes import HECKTOR, Classes
from pemma.data.centres import HECKTOR_CENTRES

GENERATOR_VERSION = "synth-v3"
EXTENT_MM = np.array([128.0, 128.0, 96.0])
CT_CONTRAST_HU = {"gtvp": 10.0, "gtvn": 30.0, "lookalike": 30.0}
"""Lesion contrast over soft tissue (40 HU): weak for the primary tumour; nodes stand out but look
exactly like benign look-alike blobs, half of which lie where nodes do."""
LOOKALIKES = (2, 5)
HOTSPOTS = (0, 1)
CT_TEXTURE_HU = 12.0
"""Amplitude of low-frequency soft-tissue inhomogeneity (5 mm scale): what hides weak blobs on CT,
where white noise alone would average out."""


@dataclass(frozen=True)
class Scanner:
    """A centre's imaging character: what makes centre shift real."""

    ct_noise_hu: float
    ct_blur_mm: float
    pet_fwhm_mm: float
    pet_uptake_scale: float
    ct_spacing: tuple[float, float, float]
    pet_spacing: tuple[float, float, float]


SCANNERS: dict[str, Scanner] = {
    "CHUM": Scanner(18.0, 0.8, 6.0, 1.0, (0.98, 0.98, 3.0), (4.0, 4.0, 4.0)),
    "CHUP": Scanner(22.0, 1.0, 7.0, 0.9, (0.98, 0.98, 2.0), (4.07, 4.07, 3.0)),
    "CHUS": Scanner(16.0, 0.6, 5.5, 1.1, (0.98, 0.98, 3.27), (4.0, 4.0, 3.27)),
    "CHUV": Scanner(20.0, 0.9, 6.5, 1.0, (0.98, 0.98, 1.5), (3.65, 3.65, 3.27)),
    "MDA": Scanner(20.0, 0.8, 6.0, 1.0, (1.0, 1.0, 3.0), (4.0, 4.0, 4.0)),
    "HGJ": Scanner(26.0, 1.2, 7.5, 0.8, (1.17, 1.17, 3.27), (5.47, 5.47, 3.27)),
    "HMR": Scanner(14.0, 0.5, 5.0, 1.25, (1.17, 1.17, 3.0), (4.69, 4.69, 3.27)),
}


def cohort_sizes(scale: float) -> dict[str, int]:
    return {c: max(3, round(n * scale)) for c, n in HECKTOR_CENTRES.items()}


def _grid(spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    shape = np.round(EXTENT_MM / spacing).astype(int)
    axes = [(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = spacing / 2
    return x, y, z, affine


def _ellipsoid(x, y, z, centre, radii) -> np.ndarray:
    """Normalised radius: < 1 inside the ellipsoid."""
    return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip((x, y, z), centre, radii, strict=True)))


def _soft(r: np.ndarray, edge: float = 6.0) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) * edge, -50, 50)))


@dataclass
class Lesion:
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    uptake: float


@dataclass
class Patient:
    patient_id: str
    centre: str
    gtvp: list[Lesion]
    nodes: list[Lesion]
    hotspots: list[Lesion]
    ct_lookalikes: list[Lesion]
    tonsil_uptake: float


def _lesion(rng, centre, radius_range, uptake) -> Lesion:
    r = rng.uniform(*radius_range)
    radii = tuple(float(r * rng.uniform(0.8, 1.2)) for _ in range(3))
    return Lesion(tuple(float(c) for c in centre), radii, float(uptake))


def draw_patient(seed: int, centre: str, index: int) -> Patient:
    centre_idx = list(HECKTOR_CENTRES).index(centre)
    rng = np.random.default_rng([seed, centre_idx, index])
    # Primary tumour: two overlapping lobes beside the airway.
    c0 = np.array([64 + rng.uniform(-14, 14), 44 + rng.uniform(-8, 8), 48 + rng.uniform(-16, 16)])
    uptake = rng.uniform(6, 12)
    gtvp = [_lesion(rng, c0, (7, 12), uptake)]
    gtvp.append(_lesion(rng, c0 + rng.uniform(-5, 5, 3), (5, 9), uptake))
    nodes = []
    for _ in range(rng.integers(0, 4)):
        side = rng.choice([-1, 1])
        c = (64 + side * rng.uniform(24, 36), rng.uniform(58, 82), rng.uniform(24, 64))
        nodes.append(_lesion(rng, c, (4, 8), rng.uniform(4, 9)))
    hotspots = []
    for _ in range(rng.integers(HOTSPOTS[0], HOTSPOTS[1] + 1)):
        c = (rng.uniform(30, 98), rng.uniform(40, 95), rng.uniform(10, 70))
        hotspots.append(_lesion(rng, c, (3, 6), rng.uniform(4, 8)))
    lookalikes = []
    for _ in range(rng.integers(LOOKALIKES[0], LOOKALIKES[1] + 1)):
        if rng.random() < 0.5:  # where nodes lie: on CT alone a node and a look-alike are the same
            side = rng.choice([-1, 1])
            c = (64 + side * rng.uniform(24, 36), rng.uniform(58, 82), rng.uniform(24, 64))
        else:
            c = (rng.uniform(30, 98), rng.uniform(35, 95), rng.uniform(10, 75))
        lookalikes.append(_lesion(rng, c, (4, 9), 0.0))
    return Patient(
        f"{centre}-{index + 1:03d}", centre, gtvp, nodes, hotspots, lookalikes, float(rng.uniform(2.5, 4.5))
    )


def _union(x, y, z, lesions: list[Lesion]) -> np.ndarray:
    if not lesions:
        return np.full(x.shape, np.inf)
    return np.min([_ellipsoid(x, y, z, les.centre, les.radii) for les in lesions], axis=0)


def _anatomy(x, y, z):
    body = _ellipsoid(x, y, z * 0, (64, 64, 0), (52, 44, 1))
    airway = _ellipsoid(x, y, z * 0, (64, 50, 0), (6, 5, 1))
    spine = _ellipsoid(x, y, z * 0, (64, 92, 0), (9, 9, 1))
    canal = _ellipsoid(x, y, z * 0, (64, 92, 0), (4, 4, 1))
    jaw = _ellipsoid(x, y, z * 0, (64, 60, 0), (40, 34, 1))
    mandible = (np.abs(jaw - 1) < 0.1) & (y < 60) & (z < 40)
    brain = _ellipsoid(x, y, z, (64, 64, 112), (40, 36, 34))
    return body, airway, spine, canal, mandible, brain


def render_ct(p: Patient, scanner: Scanner, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    spacing = np.array(scanner.ct_spacing)
    x, y, z, affine = _grid(spacing)
    body, airway, spine, canal, mandible, brain = _anatomy(x, y, z)
    ct = np.where(body < 1, 40.0, -1000.0)
    ct = np.where(brain < 1, 30.0, ct)
    ct = np.where((spine < 1) & (canal >= 1), 700.0, ct)
    ct = np.where(mandible, 900.0, ct)
    ct = np.where(airway < 1, -1000.0, ct)
    tumour = _union(x, y, z, p.gtvp)
    nodes = _union(x, y, z, p.nodes)
    look = _union(x, y, z, p.ct_lookalikes)
    ct = (
        ct
        + CT_CONTRAST_HU["gtvp"] * _soft(tumour)
        + CT_CONTRAST_HU["gtvn"] * _soft(nodes)
        + CT_CONTRAST_HU["lookalike"] * _soft(look)
    )
    texture = gaussian_filter(rng.normal(0, 1, ct.shape), 5.0 / spacing)
    ct = ct + np.where(body < 1, CT_TEXTURE_HU * texture / texture.std(), 0.0)
    blur = scanner.ct_blur_mm / spacing
    ct = gaussian_filter(ct, blur) + rng.normal(0, scanner.ct_noise_hu, ct.shape)
    label = np.zeros(ct.shape, dtype=np.uint8)
    label[(nodes < 1) & (body < 1)] = 2
    label[(tumour < 1) & (body < 1)] = 1
    label[airway < 1] = 0
    return np.round(ct).astype(np.int16), label, affine


def render_pet(p: Patient, scanner: Scanner, rng) -> tuple[np.ndarray, np.ndarray]:
    spacing = np.array(scanner.pet_spacing)
    x, y, z, affine = _grid(spacing)
    body, airway, _, _, _, brain = _anatomy(x, y, z)
    pet = np.where(body < 1, 1.0, 0.05)
    pet = np.where(airway < 1, 0.1, pet)
    pet = pet + 6.0 * _soft(brain, 4)
    tonsils = [Lesion((52, 58, 52), (6, 6, 7), 0), Lesion((76, 58, 52), (6, 6, 7), 0)]
    pet = pet + p.tonsil_uptake * _soft(_union(x, y, z, tonsils), 3)
    for les in [*p.gtvp[:1], *p.nodes, *p.hotspots]:
        pet = pet + les.uptake * _soft(_union(x, y, z, [les] if les not in p.gtvp else p.gtvp), 4)
    pet = gaussian_filter(pet, scanner.pet_fwhm_mm / 2.355 / spacing)
    pet = pet * scanner.pet_uptake_scale * rng.normal(1.0, 0.08, pet.shape)
    return np.clip(pet, 0, None).astype(np.float32), affine


def draw_clinical(p: Patient, seed: int, centre_id: int, index: int) -> tuple[dict, dict, dict]:
    """Clinical row, endpoint row and the latent truth behind them (documented hazard model)."""
    rng = np.random.default_rng([seed, 1000 + centre_id, index])
    volume_ml = sum(4 / 3 * np.pi * np.prod(les.radii) for les in p.gtvp) / 1000
    pet_max = max(les.uptake for les in p.gtvp)
    hpv = int(rng.random() < 0.55)
    age = float(np.clip(rng.normal(61, 9), 30, 90))
    tobacco = int(rng.random() < 0.5)
    log_hazard = (
        0.8 * np.log(volume_ml / 2.0)
        + 0.15 * (pet_max - 9)
        - 0.9 * hpv
        + 0.03 * (age - 60)
        + 0.4 * tobacco
        + 0.2 * len(p.nodes)
    )
    rfs_event = rng.exponential(1500.0 / np.exp(log_hazard))
    censor = rng.uniform(300, 2500)
    clinical = {
        "PatientID": p.patient_id,
        "Task 1": 1,
        "Task 2": 1,
        "CenterID": centre_id,
        "Gender": rng.choice(["M", "F"], p=[0.8, 0.2]),
        "Age": round(age),
        "Weight": round(float(rng.normal(78, 14)), 1) if rng.random() > 0.05 else np.nan,
        "Tobacco": tobacco if rng.random() > 0.5 else np.nan,
        "Alcohol": int(rng.random() < 0.4) if rng.random() > 0.5 else np.nan,
        "Performance status": int(rng.integers(0, 3)) if rng.random() > 0.2 else np.nan,
        "HPV status (0=-, 1=+)": hpv if rng.random() > 0.3 else np.nan,
        "Surgery": int(rng.random() < 0.2) if rng.random() > 0.1 else np.nan,
        "Chemotherapy": int(rng.random() < 0.8) if rng.random() > 0.1 else np.nan,
    }
    endpoint = {
        "PatientID": p.patient_id,
        "Relapse": int(rfs_event <= censor),
        "RFS": round(float(min(rfs_event, censor)), 1),
    }
    truth = {
        "volume_ml": volume_ml,
        "pet_max": pet_max,
        "hpv": hpv,
        "age": age,
        "tobacco": tobacco,
        "log_hazard": float(log_hazard),
    }
    return clinical, endpoint, truth


LAYOUTS = ("hecktor", "nnunet")
CLASS_SETS = {"hecktor": HECKTOR, "lesion": Classes(("lesion",), ("lesion",))}
"""The synthetic cohort's label sets: HECKTOR's two classes, or one (GTVp and GTVn merged)."""


def write_cohort(
    out: Path,
    *,
    scale: float = 0.15,
    seed: int = 0,
    progress=None,
    layout: str = "hecktor",
    classes: str = "hecktor",
) -> Path:
    """Write the whole cohort under `out` (atomically: into a temporary folder, then renamed), in the
    HECKTOR 2022 layout or as an nnU-Net v2 raw dataset (the same images, renamed, and a dataset.json).
    `classes`: `hecktor` (GTVp 1, GTVn 2) or `lesion` (one class, every tumour voxel 1, as autoPET
    labels its lesions; nnU-Net layout only, the HECKTOR layout has no place to name classes)."""
    if layout not in LAYOUTS:
        raise ValueError(f"--format {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if classes not in CLASS_SETS:
        raise ValueError(f"--classes {classes!r}: expected one of {', '.join(CLASS_SETS)}")
    if classes != "hecktor" and layout != "nnunet":
        raise ValueError(
            f"--classes {classes} needs --format nnunet (the HECKTOR layout's classes are GTVp and GTVn)"
        )
    out = Path(out)
    if (out / "synth_truth.json").exists():
        raise FileExistsError(f"{out} already holds a synthetic cohort; choose another --out or delete it")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").mkdir()
    sizes = cohort_sizes(scale)
    clinical, endpoints, truth = [], [], {}
    total = sum(sizes.values())
    done = 0
    for centre_id, (centre, n) in enumerate(sizes.items()):
        scanner = SCANNERS[centre]
        for i in range(n):
            p = draw_patient(seed, centre, i)
            rng = np.random.default_rng([seed, 2000 + centre_id, i])
            ct, label, ct_affine = render_ct(p, scanner, rng)
            pet, pet_affine = render_pet(p, scanner, rng)
            nib.save(nib.Nifti1Image(ct, ct_affine), tmp / "imagesTr" / f"{p.patient_id}__CT.nii.gz")
            nib.save(nib.Nifti1Image(pet, pet_affine), tmp / "imagesTr" / f"{p.patient_id}__PT.nii.gz")
            label = (label > 0).astype(np.uint8) if classes == "lesion" else label
            nib.save(nib.Nifti1Image(label, ct_affine), tmp / "labelsTr" / f"{p.patient_id}.nii.gz")
            row, endpoint, latent = draw_clinical(p, seed, centre_id, i)
            clinical.append(row)
            endpoints.append(endpoint)
            truth[p.patient_id] = {
                **latent,
                "lesions": {
                    "gtvp": [asdict(x) for x in p.gtvp],
                    "nodes": [asdict(x) for x in p.nodes],
                    "hotspots": [asdict(x) for x in p.hotspots],
                },
            }
            done += 1
            if progress:
                progress(done, total)
    pd.DataFrame(clinical).to_csv(tmp / "hecktor2022_clinical_info_training.csv", index=False)
    pd.DataFrame(endpoints).to_csv(tmp / "hecktor2022_endpoint_training.csv", index=False)
    meta = {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "scale": scale,
        "classes": classes,
        "sizes": sizes,
        "scanners": {c: asdict(s) for c, s in SCANNERS.items()},
        "ct_contrast_hu": CT_CONTRAST_HU,
        "ct_texture_hu": CT_TEXTURE_HU,
        "extent_mm": EXTENT_MM.tolist(),
        "hazard_model": "log h = 0.8 log(V_GTVp / 2 ml) + 0.15 (PETmax - 9) - 0.9 HPV + 0.03 (age - 60)"
        " + 0.4 tobacco + 0.2 n_nodes; RFS ~ Exp(mean 1500 d / h), censoring U(300, 2500) d",
        "patients": truth,
    }
    (tmp / "synth_truth.json").write_text(json.dumps(meta, indent=1))
    if layout == "nnunet":
        to_nnunet(tmp, CLASS_SETS[classes])
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def to_nnunet(root: Path, classes: Classes = HECKTOR) -> None:
    """A HECKTOR-layout folder turned into an nnU-Net v2 raw dataset in place: <ID>__CT -> <ID>_0000,
    <ID>__PT -> <ID>_0001, labels as they are, and a dataset.json (channels CT, PET; the classes)."""
    from pemma.data.nnunet import write_dataset_json

    images = Path(root) / "imagesTr"
    cases = 0
    for path in sorted(images.glob("*__CT.nii.gz")):
        path.rename(images / path.name.replace("__CT.nii.gz", "_0000.nii.gz"))
        cases += 1
    for path in sorted(images.glob("*__PT.nii.gz")):
        path.rename(images / path.name.replace("__PT.nii.gz", "_0001.nii.gz"))
    write_dataset_json(root, cases, classes=classes)
