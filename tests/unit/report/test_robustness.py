"""The robustness section on fake runs: Dice per condition magnitude from the logged metrics, the
interval from the condition's per-patient rows (never the clean ones), the drop from clean CT+PET."""

import numpy as np
import pytest
from helpers.runs import FakeRuns

from pemma.report.definition import ReportError, load_report
from pemma.report.render import generate
from pemma.report.sources import Sources

PATIENTS = ("P1", "P2", "P3", "P4")
SECTION = "kind: robustness, title: R, suite: r"


def _rows(condition, magnitude, overlap):
    """Per-patient rows: truth and prediction 100 voxels per class, `overlap` of them shared."""
    return [
        {
            "kind": "segmentation",
            "patient_id": pid,
            "split": "test",
            "subset": "ctpet",
            "condition": condition,
            "magnitude": magnitude,
            "class": klass,
            "grid": "original",
            "dice": overlap / 100,
            "intersection_voxels": overlap + i,
            "prediction_voxels": 100 + i,
            "truth_voxels": 100 + i,
        }
        for i, pid in enumerate(PATIENTS)
        for klass in ("gtvp", "gtvn")
    ]


def _dice(overlap):
    i = np.arange(len(PATIENTS))
    return float(np.sum(overlap + i) / np.sum(100 + i))


@pytest.fixture
def robust_runs(tmp_path):
    runs = FakeRuns(tmp_path / "results")
    shrink = {"early-fusion": 10, "pemma-lora": 2}  # voxels lost per mm of shift
    for method, per_mm in shrink.items():
        for seed in (0, 1, 2):
            clean = 80 - seed
            rows = _rows("ctpet", None, clean)
            metrics = {"dice_hecktor/ctpet/mean": _dice(clean)}
            for mm in (0.0, 4.0):
                overlap = clean - per_mm * mm
                rows += _rows("pet-shift", mm, overlap)
                metrics[f"dice_hecktor/pet-shift-{mm:g}mm/mean"] = _dice(overlap)
            runs.add("r", method, seed, metrics, patients=rows)
    report = tmp_path / "rob.yaml"
    report.write_text(
        "title: r\nsections:\n  - {kind: robustness, title: R, suite: r, conditions: pet-shift}\n"
    )
    return runs, report


def test_robustness_rows_read_the_conditions_rows_and_the_drop_from_clean(robust_runs):
    runs, report = robust_runs
    block = generate(load_report(report), Sources(runs.tracker, runs.results)).blocks[0]
    table = block.table.set_index(["method", "magnitude"])
    assert list(table.index) == [
        ("early-fusion", "0 mm"),
        ("early-fusion", "4 mm"),
        ("pemma-lora", "0 mm"),
        ("pemma-lora", "4 mm"),
    ]
    dice = [_dice(80 - s - 40) for s in (0, 1, 2)]
    cell = table.loc[("early-fusion", "4 mm"), "Dice CT+PET ↑"]
    assert cell.startswith(f"{np.mean(dice):.3f} ± {np.std(dice, ddof=1):.3f} [")
    low = float(cell.split("[")[1].split(",")[0])
    assert low < np.mean(dice), "an interval from the shifted rows, around the shifted Dice"
    drops = [100 * (1 - _dice(80 - s - 40) / _dice(80 - s)) for s in (0, 1, 2)]
    assert table.loc[("early-fusion", "4 mm"), "drop from clean % ↓"].startswith(f"{np.mean(drops):.1f}")
    assert table.loc[("pemma-lora", "0 mm"), "drop from clean % ↓"].startswith("0.0")
    assert block.figures and block.figures[0].name == "robustness"


def test_an_unknown_condition_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "title: r\nsections:\n  - {kind: robustness, title: R, suite: r, conditions: [pet-shfit]}\n"
    )
    with pytest.raises(
        ReportError, match="unknown test-time condition 'pet-shfit'; did you mean 'pet-shift'"
    ):
        load_report(path)
