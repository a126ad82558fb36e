"""Predictions written as NIfTI on each patient's original CT grid, scored independently: read back
with nibabel and numpy alone (no project code), HECKTOR aggregated Dice per class from the files and
the original label files matches what the unit logged."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.cli import ci_run

from pemma.metrics.patients import read_patient_table
from pemma.tracking import Tracker

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m 'not slow'` skips them


def _aggregated_dice(predictions: Path, cohort: Path) -> dict[str, float]:
    """HECKTOR 2022's aggregated Dice: per class, 2 x sum |P ∩ G| / sum (|P| + |G|) over patients."""
    inter, size = np.zeros(2), np.zeros(2)
    files = sorted(predictions.glob("*.nii.gz"))
    assert files, f"no predictions in {predictions}"
    for path in files:
        patient = path.name.removesuffix(".nii.gz")
        predicted = nib.load(path)
        truth = nib.load(cohort / "labelsTr" / f"{patient}.nii.gz")
        ct = nib.load(cohort / "imagesTr" / f"{patient}__CT.nii.gz")
        assert predicted.shape == ct.shape and np.allclose(predicted.affine, ct.affine), patient
        assert predicted.get_data_dtype() == np.uint8
        p, g = np.asarray(predicted.dataobj), np.asarray(truth.dataobj).round().astype(np.uint8)
        assert set(np.unique(p)) <= {0, 1, 2}
        for k, label in enumerate((1, 2)):
            inter[k] += np.sum((p == label) & (g == label))
            size[k] += np.sum(p == label) + np.sum(g == label)
    return {"gtvp": 2 * inter[0] / size[0], "gtvn": 2 * inter[1] / size[1]}


def test_predictions_on_the_ct_grid_reproduce_the_logged_dice(tiny_cohort, tmp_path):
    result = ci_run(
        tmp_path, "--methods", "early-fusion", "--seeds", "0",
        "--set", "eval.predictions=true", "--set", "eval.conditions=[pet-shift=8]",
        data=tiny_cohort,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = Tracker(tmp_path).runs("smoke").iloc[0]
    folder = tmp_path / "smoke" / "predictions" / run["tags.run_key"]
    assert sorted(p.name for p in folder.iterdir()) == ["ct", "ctpet", "pet", "pet-shift-8mm"]
    for key in ("ctpet", "ct", "pet-shift-8mm"):
        dice = _aggregated_dice(folder / key, tiny_cohort)
        for cls, value in dice.items():
            assert abs(value - run[f"metrics.dice_hecktor/{key}/{cls}"]) < 1e-6, (key, cls)
    files = sorted((folder / "ctpet").glob("*.nii.gz"))
    assert all(Path(f"{f}.sha256").is_file() for f in files), "each file's digest recorded"
    assert files[0].read_bytes()[4:8] == b"\0\0\0\0", "gzip without a timestamp: bytes from the labels only"
    logged = Tracker(tmp_path).client.list_artifacts(run["run_id"], "predictions/ctpet")
    assert {Path(a.path).name for a in logged} >= {f.name for f in files}
    table = read_patient_table(tmp_path / run["tags.patients_file"])
    original = table[(table["grid"] == "original") & (table["condition"] == "ctpet")]
    assert original["hd95_mm"].notna().any() and table.loc[table["grid"] == "working", "hd95_mm"].isna().all()
    gtvp = original.loc[original["class"] == "gtvp", "hd95_mm"].dropna()
    assert run["metrics.hd95/ctpet/gtvp"] == pytest.approx(float(np.median(gtvp)))
