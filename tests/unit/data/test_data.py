import nibabel as nib
import numpy as np
import pytest

from pemma.config import DataConfig
from pemma.data.datasets import CohortData
from pemma.data.hecktor import CohortError, read_cohort
from pemma.data.splits import make_plan
from pemma.data.synth import cohort_sizes, write_cohort


def test_synthetic_cohort_has_the_hecktor_layout(tiny_cohort):
    cohort = read_cohort(tiny_cohort)
    sizes = cohort_sizes(0.02)
    assert {c: len(v) for c, v in cohort.centres().items()} == sizes
    assert set(sizes) == {"CHUM", "CHUP", "CHUS", "CHUV", "MDA", "HGJ", "HMR"}
    case = cohort.cases[0]
    assert (
        case.ct.name == f"{case.patient_id}__CT.nii.gz" and case.pet.name == f"{case.patient_id}__PT.nii.gz"
    )
    assert case.label.parent.name == "labelsTr"
    assert list(cohort.endpoints.columns) == ["PatientID", "Relapse", "RFS"]
    assert "HPV status (0=-, 1=+)" in cohort.clinical.columns
    assert (tiny_cohort / "synth_truth.json").exists()


def test_synthetic_cohort_is_deterministic_per_seed(tiny_cohort, tmp_path):
    again = write_cohort(tmp_path / "again", scale=0.02, seed=0)
    other = write_cohort(tmp_path / "other", scale=0.02, seed=1)
    name = "imagesTr/MDA-001__PT.nii.gz"
    a, b, c = (nib.load(root / name).get_fdata() for root in (tiny_cohort, again, other))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert read_cohort(tiny_cohort).fingerprint() == read_cohort(again).fingerprint()


def test_lesions_are_bright_on_pet_faint_on_ct_and_grids_differ(tiny_cohort):
    ct_img = nib.load(tiny_cohort / "imagesTr/MDA-001__CT.nii.gz")
    pet_img = nib.load(tiny_cohort / "imagesTr/MDA-001__PT.nii.gz")
    label = np.asarray(nib.load(tiny_cohort / "labelsTr/MDA-001.nii.gz").dataobj)
    assert ct_img.shape != pet_img.shape and not np.allclose(
        ct_img.header.get_zooms(), pet_img.header.get_zooms()
    )
    assert set(np.unique(label)) <= {0, 1, 2} and (label == 1).sum() > 0
    ct = ct_img.get_fdata()
    tissue = ct[(label == 0) & (ct > -100) & (ct < 200)]
    tumour = ct[label == 1]
    # Weak CT contrast: the tumour's mean is within one noise s.d. of soft tissue.
    assert abs(tumour.mean() - tissue.mean()) < tissue.std()


def test_preprocessing_puts_pet_and_label_on_the_ct_grid(tiny_cohort, tmp_path):
    cohort = read_cohort(tiny_cohort)
    cfg = DataConfig(spacing=(4.0, 4.0, 4.0))
    plan = make_plan(cohort, cfg.pretrain_centres, cfg.adapt_centre, cfg.split, 0)
    data = CohortData(cfg, cohort.fingerprint(), tmp_path / "cache")
    item = data.volumes(plan.adapt["test"], ("ct", "pet", "label"))[0]
    assert item["ct"].shape == item["pet"].shape == item["label"].shape
    # 128 x 128 x 96 mm at 4 mm: MONAI's Spacing keeps the voxel-centre span, so a side may gain one.
    assert all(abs(n - e) <= 1 for n, e in zip(item["ct"].shape[1:], (32, 32, 24), strict=True))
    assert float(item["ct"].min()) >= 0.0 and float(item["ct"].max()) <= 1.0
    assert set(item["label"].unique().tolist()) <= {0, 1, 2}
    # PET is z-scored over its non-zero voxels, and the tumour is hot.
    assert float(item["pet"][item["label"] == 1].mean()) > float(item["pet"][item["label"] == 0].mean()) + 1
    assert any((tmp_path / "cache").rglob("*.pt")), "preprocessing was not cached on disk"


def test_plan_splits_are_deterministic_and_disjoint(tiny_cohort):
    cohort = read_cohort(tiny_cohort)
    a = make_plan(cohort, ("CHUS", "CHUV"), "MDA", (0.5, 0.0, 0.5), seed=3)
    b = make_plan(cohort, ("CHUS", "CHUV"), "MDA", (0.5, 0.0, 0.5), seed=3)
    ids = {s: [c.patient_id for c in a.adapt[s]] for s in a.adapt}
    assert ids == {s: [c.patient_id for c in b.adapt[s]] for s in b.adapt}
    assert not set(ids["train"]) & set(ids["test"]) and ids["test"]
    assert all(c.centre in ("CHUS", "CHUV") for c in a.pretrain["train"])


def test_plan_refuses_a_centre_without_patients(tiny_cohort):
    cohort = read_cohort(tiny_cohort)
    with pytest.raises(CohortError, match="centre XYZ is named in the plan but has no patients"):
        make_plan(cohort, ("XYZ",), "MDA", (0.7, 0.1, 0.2), 0)


def test_cohort_errors_name_the_folder(tmp_path):
    with pytest.raises(CohortError, match="no imagesTr"):
        read_cohort(tmp_path)
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(CohortError, match="empty"):
        read_cohort(tmp_path)
    (tmp_path / "imagesTr" / "nodash__CT.nii.gz").write_bytes(b"")
    with pytest.raises(CohortError, match="names no centre"):
        read_cohort(tmp_path)


def test_centres_differ_in_scanner_and_grid(tiny_cohort):
    zooms = {
        centre: nib.load(tiny_cohort / f"imagesTr/{centre}-001__{mod}.nii.gz").header.get_zooms()
        for centre in ("CHUV", "HGJ")
        for mod in ("CT",)
    }
    assert not np.allclose(zooms["CHUV"], zooms["HGJ"])


def test_a_volume_smaller_than_the_crop_is_cropped_then_padded_even_from_an_unpadded_cache():
    """Crops share the cached deterministic prefix with whole-volume evaluation, so the random part
    must cope with a volume smaller than the crop (seen: 47 slices under a 48^3 crop)."""
    import torch

    from pemma.data.transforms import augment

    label = torch.zeros(1, 60, 50, 20)
    label[0, 20:30, 20:30, 5:15] = 1
    item = {"ct": torch.rand(1, 60, 50, 20), "label": label}
    pipeline = augment(("ct", "label"), (48, 48, 48))
    pipeline.set_random_state(seed=0)
    (out,) = pipeline(item)
    assert tuple(out["ct"].shape) == (1, 48, 48, 48) and tuple(out["label"].shape) == (1, 48, 48, 48)
    assert out["label"].sum() > 0


def test_a_semicolon_separated_clinical_file_is_read_like_the_comma_one(tiny_cohort, tmp_path):
    import shutil

    import pandas as pd

    from pemma.data.hecktor import CLINICAL_CSV

    root = tmp_path / "semicolon"
    shutil.copytree(tiny_cohort, root)
    comma = pd.read_csv(root / CLINICAL_CSV)
    comma.to_csv(root / CLINICAL_CSV, sep=";", index=False)  # as a spreadsheet in many locales saves it
    pd.testing.assert_frame_equal(read_cohort(root).clinical, read_cohort(tiny_cohort).clinical)


def test_data_check_warns_of_missing_clinical_rows_and_columns(tiny_cohort, tmp_path):
    import shutil

    import pandas as pd
    from typer.testing import CliRunner

    from pemma.cli import app
    from pemma.data.check import clinical_gaps
    from pemma.data.hecktor import CLINICAL_CSV

    assert clinical_gaps(read_cohort(tiny_cohort)) == [], "the synthetic cohort has every row and column"
    root = tmp_path / "gaps"
    shutil.copytree(tiny_cohort, root)
    table = pd.read_csv(root / CLINICAL_CSV)
    dropped = sorted(table["PatientID"])[:2]
    table[~table["PatientID"].isin(dropped)].drop(columns=["Age"]).to_csv(root / CLINICAL_CSV, index=False)
    gaps = clinical_gaps(read_cohort(root))
    assert "lacks column(s) Age" in gaps[0]
    assert gaps[1].startswith("2 patient(s) with images have no clinical row") and all(
        p in gaps[1] for p in dropped
    )
    out = CliRunner().invoke(app, ["data", "check", str(root)])
    assert out.exit_code == 0 and "warning:" in out.output and "no problems found" not in out.output


def test_training_time_pet_shift_moves_only_the_pet_within_its_bound_and_is_reproducible():
    import torch
    from scipy.ndimage import center_of_mass

    from pemma.data.transforms import WORKING_AFFINE, RandPETShiftd, augment

    assert not any(
        isinstance(t, RandPETShiftd) for t in augment(("ct", "pet", "label"), (8, 8, 8)).transforms
    )
    spacing = np.array([2.0, 2.0, 3.0])
    pet = torch.zeros(1, 32, 32, 32)
    pet[0, 12:20, 12:20, 12:20] = 5.0
    item = {
        "ct": torch.rand(1, 32, 32, 32),
        "pet": pet,
        "label": (pet > 0).to(torch.uint8),
        WORKING_AFFINE: torch.as_tensor(np.diag([*spacing, 1.0])),
    }
    moved_mm = []
    for seed in range(20):
        shift = RandPETShiftd(max_mm=8.0, prob=1.0).set_random_state(seed)
        out = shift(item)
        again = RandPETShiftd(max_mm=8.0, prob=1.0).set_random_state(seed)(item)
        assert torch.equal(out["pet"], again["pet"]), "the same seed draws the same shift"
        assert out["ct"] is item["ct"] and out["label"] is item["label"]
        offset = np.array(center_of_mass(out["pet"][0].numpy())) - np.array(center_of_mass(pet[0].numpy()))
        moved_mm.append(float(np.linalg.norm(offset * spacing)))
        assert np.allclose(offset * spacing, shift._world, atol=0.05), "the drawn world vector, in mm"
    assert max(moved_mm) <= 8.0 + 1e-6 and max(moved_mm) > 4.0 and min(moved_mm) < 4.0
    never = RandPETShiftd(max_mm=8.0, prob=1e-9).set_random_state(0)
    assert torch.equal(never(item)["pet"], pet)
