"""Each kind of bad input is a clear error naming the patient and file, and nothing is half-written."""

import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pemma.cli import app
from pemma.config import DataConfig
from pemma.data.check import check_cohort
from pemma.data.datasets import CohortData
from pemma.data.hecktor import CohortError, read_cohort
from pemma.tracking import Tracker


@pytest.fixture
def cohort(tiny_cohort, tmp_path):
    return shutil.copytree(tiny_cohort, tmp_path / "cohort")


def _rewrite(path, change):
    img = nib.load(path)
    data, affine = change(np.asarray(img.dataobj).copy(), img.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


def _expect(root, *fragments):
    with pytest.raises(CohortError) as err:
        check_cohort(read_cohort(root))
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_unreadable_nifti(cohort):
    (cohort / "imagesTr/CHUM-002__CT.nii.gz").write_bytes(b"not a nifti file")
    _expect(cohort, "patient CHUM-002", "CHUM-002__CT.nii.gz", "unreadable NIfTI")


def test_pet_that_does_not_overlap_the_ct(cohort):
    def shift(data, affine):
        affine[:3, 3] += 500.0
        return data, affine

    _rewrite(cohort / "imagesTr/MDA-001__PT.nii.gz", shift)
    _expect(cohort, "patient MDA-001", "MDA-001__PT.nii.gz", "cannot be aligned")


def test_label_values_outside_the_classes(cohort):
    def add_three(data, affine):
        data[0, 0, 0] = 3
        return data, affine

    _rewrite(cohort / "labelsTr/HGJ-001.nii.gz", add_three)
    _expect(cohort, "patient HGJ-001", "HGJ-001.nii.gz", "[3]")


def test_nan_voxels(cohort):
    def poison(data, affine):
        data = data.astype(np.float32)
        data[1, 1, 1] = np.nan
        return data, affine

    _rewrite(cohort / "imagesTr/CHUV-003__PT.nii.gz", poison)
    _expect(cohort, "patient CHUV-003", "CHUV-003__PT.nii.gz", "NaN or infinite")


def test_duplicate_image_ids(cohort):
    shutil.copy(cohort / "imagesTr/CHUS-001__CT.nii.gz", cohort / "imagesTr/CHUS-001__CT.nii")
    with pytest.raises(CohortError, match="duplicate CT image for patient CHUS-001"):
        read_cohort(cohort)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.drop(columns=["RFS"]), "missing column(s) RFS"),
        (lambda t: t.assign(RFS=t["RFS"].where(t.index != 2, -5.0)), "non-negative"),
        (lambda t: t.assign(Relapse=t["Relapse"].where(t.index != 1, 2)), "Relapse must be 0 or 1"),
        (lambda t: pd.concat([t, t.iloc[[0]]]), "duplicate PatientID"),
    ],
)
def test_bad_endpoint_csv(cohort, edit, message):
    path = cohort / "hecktor2022_endpoint_training.csv"
    edit(pd.read_csv(path)).to_csv(path, index=False)
    with pytest.raises(CohortError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        read_cohort(cohort)
    assert "hecktor2022_endpoint_training.csv" in str(err.value)


def test_a_cache_written_by_another_config_is_rebuilt(tiny_cohort, tmp_path):
    cohort = read_cohort(tiny_cohort)
    data = CohortData(DataConfig(spacing=(4.0, 4.0, 4.0)), cohort.fingerprint(), tmp_path)
    first = data.volumes(list(cohort.cases[:1]), ("ct", "label"))[0]
    folder = next(p for p in tmp_path.iterdir() if p.is_dir())
    record = folder / "preprocessing.json"
    record.write_text(record.read_text().replace("4.0", "9.0"))  # as if another config had written it
    stale = next(folder.glob("*.pt"))
    stale_time = stale.stat().st_mtime_ns
    again = data.volumes(list(cohort.cases[:1]), ("ct", "label"))[0]
    assert "9.0" not in record.read_text(), "the record was not rewritten"
    assert next(folder.glob("*.pt")).stat().st_mtime_ns != stale_time, "the stale cache was reused"
    assert np.array_equal(first["ct"].numpy(), again["ct"].numpy())


def test_patients_without_pet_serve_only_ct_phases(cohort):
    from pemma.data.check import summarise
    from pemma.data.splits import make_plan

    (cohort / "imagesTr/CHUS-001__PT.nii.gz").unlink()
    (cohort / "imagesTr/MDA-001__PT.nii.gz").unlink()
    loaded = read_cohort(cohort)
    _, notes = summarise(check_cohort(loaded))
    assert any("without PET" in n and "CHUS-001" in n and "MDA-001" in n for n in notes)
    plan = make_plan(loaded, ("CHUS",), "MDA", (0.4, 0.0, 0.6), 0)
    adapt_ids = {c.patient_id for split in plan.adapt.values() for c in split}
    pretrain_ids = {c.patient_id for split in plan.pretrain.values() for c in split}
    assert "MDA-001" not in adapt_ids and "CHUS-001" in pretrain_ids


def test_run_on_bad_data_fails_before_any_mlflow_run(cohort, tmp_path):
    (cohort / "imagesTr/MDA-002__PT.nii.gz").write_bytes(b"broken")
    out = CliRunner().invoke(
        app, ["run", "--profile", "ci", "--results", str(tmp_path / "r"), "--data", str(cohort)]
    )
    assert out.exit_code == 2
    assert "MDA-002" in out.output and "unreadable NIfTI" in " ".join(out.output.split())
    tracker = Tracker(tmp_path / "r")
    assert tracker.runs("smoke").empty and tracker.runs("smoke", status="RUNNING").empty


def test_data_check_prints_the_summary(tiny_cohort):
    out = CliRunner().invoke(app, ["data", "check", str(tiny_cohort)])
    assert out.exit_code == 0, out.output
    assert "MDA" in out.output and "no problems found" in out.output
    report = check_cohort(read_cohort(tiny_cohort))
    assert (report["gtvp_ml"] > 0).all() and report["pet_shape"].notna().all()


def test_pet_without_its_ct(cohort):
    (cohort / "imagesTr/CHUP-002__CT.nii.gz").unlink()
    with pytest.raises(CohortError, match="patient CHUP-002: PET image .* has no CT beside it"):
        read_cohort(cohort)


def test_label_that_does_not_overlap_the_ct(cohort):
    def shift(data, affine):
        affine[:3, 3] -= 400.0
        return data, affine

    _rewrite(cohort / "labelsTr/CHUM-001.nii.gz", shift)
    _expect(cohort, "patient CHUM-001", "CHUM-001.nii.gz", "cannot be aligned")
