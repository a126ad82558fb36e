"""Issue 30, first part: an nnU-Net v2 raw dataset is read like the HECKTOR layout (the same
synthetic cohort in both layouts gives bit-identical metrics), and its bad inputs stop with exit 2
naming the file or case."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers.cli import ci_run
from typer.testing import CliRunner

from pemma.cli import app
from pemma.data.hecktor import read_cohort
from pemma.data.synth import write_cohort
from pemma.tracking import Tracker

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m 'not slow'` skips them


@pytest.fixture(scope="module")
def nnunet_cohort(tmp_path_factory):
    return write_cohort(
        tmp_path_factory.mktemp("nn") / "Dataset901_Synth", scale=0.02, seed=0, layout="nnunet"
    )


def test_the_same_cohort_in_nnunet_layout_gives_the_same_numbers(tiny_cohort, nnunet_cohort, tmp_path):
    assert (nnunet_cohort / "dataset.json").is_file()
    assert sorted(p.name for p in (nnunet_cohort / "imagesTr").iterdir())[0].endswith("_0000.nii.gz")
    metrics = []
    for name, cohort in (("hecktor", tiny_cohort), ("nnunet", nnunet_cohort)):
        result = ci_run(tmp_path / name, "--methods", "early-fusion", "--seeds", "0", data=cohort)
        assert result.exit_code == 0, result.output
        run = Tracker(tmp_path / name).runs("smoke").iloc[0]
        metrics.append(
            {k: v for k, v in run.items() if k.startswith("metrics.dice") or k.startswith("metrics.hd95")}
        )
    assert metrics[0] and metrics[0].keys() == metrics[1].keys()
    for key, value in metrics[0].items():
        other = metrics[1][key]
        assert value == other or (value != value and other != other), key  # NaN on both sides


def _check(root):
    return CliRunner().invoke(app, ["data", "check", str(root)])


def _copy(nnunet_cohort, tmp_path, name):
    root = tmp_path / name
    shutil.copytree(nnunet_cohort, root)
    return root


def test_bad_nnunet_datasets_are_refused_naming_the_culprit(nnunet_cohort, tmp_path):
    def refused(root, *why):
        out = _check(root)
        text = " ".join(out.output.split())
        assert out.exit_code == 2 and "Traceback" not in out.output, text
        for part in why:
            assert part in text, (part, text)

    ok = _check(nnunet_cohort)
    assert ok.exit_code == 0, ok.output
    assert "nnU-Net v2 raw dataset: channels CT = _0000, PET = _0001" in " ".join(ok.output.split())

    root = _copy(nnunet_cohort, tmp_path, "no-json")
    (root / "dataset.json").unlink()
    refused(root, "as in an nnU-Net raw dataset", "dataset.json")

    root = _copy(nnunet_cohort, tmp_path, "bad-json")
    (root / "dataset.json").write_text("{channel_names: ")
    refused(root, "dataset.json: not valid JSON")

    root = _copy(nnunet_cohort, tmp_path, "no-pet-file")
    victim = sorted((root / "imagesTr").glob("*_0001.nii.gz"))[2]
    victim.unlink()
    case = victim.name.removesuffix("_0001.nii.gz")
    refused(root, f"case {case}: no PET channel")

    root = _copy(nnunet_cohort, tmp_path, "channels")
    spec = json.loads((root / "dataset.json").read_text())
    spec["channel_names"] = {"0": "T1", "1": "PET"}
    (root / "dataset.json").write_text(json.dumps(spec))
    refused(root, "name no CT channel", "T1")

    root = _copy(nnunet_cohort, tmp_path, "ending")
    spec = json.loads((root / "dataset.json").read_text())
    spec["file_ending"] = ".nrrd"
    (root / "dataset.json").write_text(json.dumps(spec))
    refused(root, "no image named <case>_<channel>.nrrd", ".gz")

    root = _copy(nnunet_cohort, tmp_path, "labels")  # the label maps hold 2, dataset.json names only 1
    spec = json.loads((root / "dataset.json").read_text())
    spec["labels"] = {"background": 0, "lesion": 1}
    (root / "dataset.json").write_text(json.dumps(spec))
    refused(root, "has values [2] outside {background 0, lesion 1}")

    for labels, why in (
        ({"background": 0, "GTVp": 1, "GTVn": 3}, "values must be 0 (background), then 1..2 each once"),
        ({"background": 0, "tumour": [1, 2]}, "tumour are regions"),
        ({"bg": 0, "GTVp": 1}, "value 0 must be 'background'"),
        ({"background": 0, "mean": 1}, "not one of background, each, mean"),
    ):
        spec["labels"] = labels
        (root / "dataset.json").write_text(json.dumps(spec))
        refused(root, why)

    root = _copy(nnunet_cohort, tmp_path, "centre")
    for path in (root / "imagesTr").glob("CHUM-001_*"):
        path.rename(path.with_name(path.name.replace("CHUM-001", "case001")))
    refused(root, "case case001: no centre")
    clinical = root / "hecktor2022_clinical_info_training.csv"
    table = pd.read_csv(clinical)
    table.loc[table["PatientID"] == "CHUM-001", "PatientID"] = "case001"
    table.assign(CenterID=np.where(table["PatientID"] == "case001", 2.0, np.nan)).to_csv(
        clinical, index=False
    )
    assert read_cohort(root).centres()["2"][0].patient_id == "case001", (
        "the clinical file's CenterID assigns it"
    )
    (root / "centres.csv").write_text("case,centre\ncase001,CHUM\n")
    assert _check(root).exit_code == 0, "a centres.csv assigns it"
    assert [c.centre for c in read_cohort(root).cases if c.patient_id == "case001"] == ["CHUM"], "and wins"


@pytest.fixture(scope="module")
def lesion_cohort(tmp_path_factory):
    """The tiny synthetic cohort with one class, `lesion` (GTVp and GTVn merged), as autoPET labels."""
    return write_cohort(
        tmp_path_factory.mktemp("lesion") / "Dataset902_Lesion", scale=0.02, layout="nnunet", classes="lesion"
    )


def test_a_one_class_cohort_runs_the_main_suite_with_its_class_in_every_table(
    lesion_cohort, tiny_cohort, tmp_path
):
    """Issue 30: classes come from the dataset: the network predicts 2 channels, the metrics, the
    per-patient tables, the suite table and the report's tables name `lesion`, never GTVp / GTVn."""
    check = " ".join(CliRunner().invoke(app, ["data", "check", str(lesion_cohort), "--cases"]).output.split())
    assert "lesion ml (median)" in check and "label values" in check and "GTV" not in check, check

    results = tmp_path / "results"
    dry = ci_run(
        results, "--seeds", "0", "--backbones", "unetr", "--dry-run", data=lesion_cohort, suite="main"
    )
    assert dry.exit_code == 0, dry.output
    out = ci_run(results, "--seeds", "0", "--backbones", "unetr", data=lesion_cohort, suite="main")
    assert out.exit_code == 0, out.output
    runs = Tracker(results).runs("main")
    assert len(runs) == 7 and set(runs["status"]) == {"FINISHED"}
    assert set(runs["params.model.num_classes"]) == {"2"}
    assert set(runs["params.train.class_weights"]) == {"(1.0, 1.0)"}
    dice = [c for c in runs.columns if c.startswith("metrics.dice_hecktor/ctpet/")]
    assert sorted(dice) == ["metrics.dice_hecktor/ctpet/lesion", "metrics.dice_hecktor/ctpet/mean"]
    finished = runs[runs["metrics.dice_hecktor/ctpet/lesion"].notna()]
    assert (
        finished["metrics.dice_hecktor/ctpet/lesion"] == finished["metrics.dice_hecktor/ctpet/mean"]
    ).all()
    tables = list((results / "main" / "patients").glob("*.csv"))
    assert tables and all(set(pd.read_csv(t)["class"]) == {"lesion"} for t in tables)

    quick = CliRunner().invoke(app, ["report", "--suite", "main", "--results", str(results), "--include-ci"])
    assert quick.exit_code == 0, quick.output
    assert "lesion (CT+PET)" in quick.output and "GTV" not in quick.output

    definition = tmp_path / "lesion.yaml"
    definition.write_text(
        "title: One class\nsections:\n"
        "  - {kind: main, title: Main, suite: main, subsets: [ctpet], classes: [mean, each]}\n"
        "  - {kind: paired, title: Paired, suite: main, subsets: [ctpet], classes: [each, gtvp]}\n"
    )
    report = CliRunner().invoke(
        app, ["report", str(definition), "--results", str(results), "--format", "md", "--include-ci"]
    )
    assert report.exit_code == 0, report.output
    text = (results / "reports" / "lesion" / "lesion.md").read_text()
    assert "lesion CT+PET" in text and "| lesion |" in text, text
    assert "Class 'gtvp': not in these runs" in text  # asked for, said why it is not shown

    key = runs[runs["tags.method"] == "pemma-lora"]["tags.run_key"].iloc[0]
    predict = ["predict", "--run-key", key, "--results", str(results)]
    own = CliRunner().invoke(app, [*predict, "--cohort", str(lesion_cohort), "--out", str(tmp_path / "p")])
    assert own.exit_code == 0, own.output
    assert "Dice lesion" in " ".join(own.output.split())
    other = CliRunner().invoke(app, [*predict, "--cohort", str(tiny_cohort), "--out", str(tmp_path / "q")])
    text = " ".join(other.output.split())
    assert other.exit_code == 2 and "labels background 0, GTVp 1, GTVn 2" in text, text
    assert not (tmp_path / "q").exists()
