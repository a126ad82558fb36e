"""Predictions written as NIfTI on each patient's original CT grid, scored independently: read back
with nibabel and numpy alone (no project code), HECKTOR aggregated Dice per class from the files and
the original label files matches what the unit logged."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.chromium import CHROMIUM, rendered_images
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


@pytest.fixture(scope="module")
def predicted(tiny_cohort, tmp_path_factory) -> Path:
    """Early fusion and PEMMA-LoRA at the ci profile with predictions on, one condition besides."""
    results = tmp_path_factory.mktemp("predicted")
    result = ci_run(
        results, "--methods", "early-fusion,pemma-lora", "--seeds", "0",
        "--set", "eval.predictions=true", "--set", "eval.conditions=[pet-shift=8]",
        data=tiny_cohort,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return results


def test_predictions_on_the_ct_grid_reproduce_the_logged_dice(predicted, tiny_cohort):
    tmp_path = predicted
    runs = Tracker(tmp_path).runs("smoke")
    run = runs[runs["tags.method"] == "early-fusion"].iloc[0]
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
    pictures = Tracker(tmp_path).client.list_artifacts(run["run_id"], "examples")
    assert [Path(a.path).name for a in pictures] == [f"{run['tags.run_key']}.png"], "the UI shows the picture"
    table = read_patient_table(tmp_path / run["tags.patients_file"])
    original = table[(table["grid"] == "original") & (table["condition"] == "ctpet")]
    assert original["hd95_mm"].notna().any() and table.loc[table["grid"] == "working", "hd95_mm"].isna().all()
    gtvp = original.loc[original["class"] == "gtvp", "hd95_mm"].dropna()
    assert run["metrics.hd95/ctpet/gtvp"] == pytest.approx(float(np.median(gtvp)))


def test_the_examples_section_draws_the_reference_methods_best_median_and_worst_patients(predicted, tmp_path):
    from pemma.report.definition import load_report
    from pemma.report.render import generate, write
    from pemma.report.sources import Sources

    definition = tmp_path / "r.yaml"
    definition.write_text(
        "title: examples\nsections:\n"
        "  - {kind: examples, title: Examples, suite: smoke, reference: pemma-lora}\n"
    )
    tracker = Tracker(predicted)
    pages = []
    for out in (tmp_path / "a", tmp_path / "b"):
        report = generate(load_report(definition), Sources(tracker, predicted, include_ci=True))
        write(report, out, ("md", "html"))
        pages.append(out)
    figures = sorted((pages[0] / "figures").glob("*.png"))
    assert len(figures) == 1, sorted(pages[0].rglob("*"))
    again = pages[1] / "figures" / figures[0].name
    assert figures[0].read_bytes() == again.read_bytes(), "the same runs draw the same bytes"
    text = (pages[0] / "r.md").read_text()
    assert "best, median and worst" in text and "seed 0" in text
    from PIL import Image

    image = np.asarray(Image.open(figures[0]).convert("RGB"))
    assert image.shape[0] > 150 and image.shape[1] > 300 and image.std() > 10
    if CHROMIUM:  # the HTML page shows it at a readable size
        sizes = rendered_images(pages[0] / "r.html")
        assert sizes and all(loaded and width > 300 and height > 150 for loaded, width, height in sizes), (
            sizes
        )


def _predict(results, *args):
    from typer.testing import CliRunner

    from pemma.cli import app

    return CliRunner().invoke(app, ["predict", "--results", str(results), *args])


def _unit(results, method):
    runs = Tracker(results).runs("smoke")
    return runs[runs["tags.method"] == method].iloc[0]


def test_predict_applies_a_trained_unit_and_writes_what_the_unit_wrote(predicted, tiny_cohort, tmp_path):
    """Round trip: the unit applied to a copy of its cohort writes, for its own test patients, the
    very bytes it wrote when it was scored, and scores every labelled patient."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_cohort, copy)
    run = _unit(predicted, "pemma-lora")
    out = tmp_path / "out"
    result = _predict(predicted, "--run-key", run["tags.run_key"], "--cohort", str(copy), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "scored" in result.output and "Dice GTVp" in result.output
    assert "not a test score" in " ".join(result.output.split()), "the unit's own cohort: said so"
    own = predicted / "smoke" / "predictions" / run["tags.run_key"] / "ctpet"
    mine = sorted(own.glob("*.nii.gz"))
    assert mine
    for path in mine:
        assert (out / "ctpet" / path.name).read_bytes() == path.read_bytes(), path.name
    assert len(list((out / "ctpet").glob("*.nii.gz"))) == len(list((copy / "imagesTr").glob("*__CT.nii.gz")))
    # by suite, method and seed: the same unit; its output folder again: replaced whole
    again = _predict(
        predicted,
        "--suite",
        "smoke",
        "--method",
        "pemma-lora",
        "--seed",
        "0",
        "--cohort",
        str(copy),
        "--out",
        str(out),
    )
    assert again.exit_code == 0, again.output
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "no partial folder left"


def test_predict_refuses_bad_units_cohorts_and_output_folders(predicted, tiny_cohort, tmp_path):
    import shutil

    import nibabel as nib

    lora = _unit(predicted, "pemma-lora")
    key = lora["tags.run_key"]

    def refused(*args, why):
        result = _predict(predicted, *args)
        assert result.exit_code == 2 and why in result.output and "Traceback" not in result.output, (
            result.output
        )

    refused(
        "--run-key",
        "smoke__pemma-lora__unetr__s0__00000000",
        "--cohort",
        str(tiny_cohort),
        why="no such unit",
    )
    tracker = Tracker(predicted)
    killed = tracker.start("smoke", "smoke__late-fusion__unetr__s0__11111111", {}, {"method": "late-fusion"})
    tracker.fail(killed, KeyboardInterrupt(), "KILLED")
    refused(
        "--run-key", "smoke__late-fusion__unetr__s0__11111111", "--cohort", str(tiny_cohort), why="KILLED"
    )

    no_pet = tmp_path / "no-pet"
    shutil.copytree(tiny_cohort, no_pet)
    next((no_pet / "imagesTr").glob("*__PT.nii.gz")).unlink()
    refused("--run-key", key, "--cohort", str(no_pet), why="reads PET")

    apart = tmp_path / "apart"
    shutil.copytree(tiny_cohort, apart)
    pet = next((apart / "imagesTr").glob("*__PT.nii.gz"))
    image = nib.load(pet)
    moved = image.affine.copy()
    moved[:3, 3] += 10_000.0  # ten metres away
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), moved), pet)
    refused("--run-key", key, "--cohort", str(apart), why="do not overlap in world space")

    out = tmp_path / "taken"
    ef = _unit(predicted, "early-fusion")["tags.run_key"]
    assert (
        _predict(predicted, "--run-key", ef, "--cohort", str(tiny_cohort), "--out", str(out)).exit_code == 0
    )
    refused("--run-key", key, "--cohort", str(tiny_cohort), "--out", str(out), why="another unit")

    trained = predicted / lora["tags.trained_file"]
    saved = trained.read_bytes()
    try:
        trained.write_bytes(saved[:-8] + b"garbage!")
        refused("--run-key", key, "--cohort", str(tiny_cohort), "--out", str(tmp_path / "o2"), why="sha256")
        assert not (tmp_path / "o2").exists(), "nothing written"
    finally:
        trained.write_bytes(saved)
