"""A suite's test-time conditions through the CLI at the ci profile: scored after training, logged
under their keys, the clean magnitude equal to the clean Dice, rows in the per-patient table."""

import pytest
from helpers.cli import ci_run

from pemma.metrics.patients import read_patient_table
from pemma.tracking import Tracker

pytestmark = pytest.mark.slow  # end-to-end runs and services: `pytest -m 'not slow'` skips them


def test_conditions_are_scored_after_training_and_the_clean_magnitude_is_the_clean_dice(
    tiny_cohort, tmp_path
):
    result = ci_run(
        tmp_path,
        "--methods", "early-fusion,ct-only", "--seeds", "0",
        "--set", 'eval.conditions=["pet-shift=0,8", pet-noise=25]',  # quoted: a comma inside a list
        data=tiny_cohort,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    runs = Tracker(tmp_path).runs("smoke").set_index("tags.method")
    ef = runs.loc["early-fusion"]
    assert ef["metrics.dice_hecktor/pet-shift-0mm/mean"] == ef["metrics.dice_hecktor/ctpet/mean"] or (
        ef["metrics.dice_hecktor/ctpet/mean"] != ef["metrics.dice_hecktor/ctpet/mean"]  # both undefined
    )
    for key in ("pet-shift-8mm", "pet-noise-25pct"):
        assert f"metrics.dice_hecktor/{key}/gtvp" in runs and ef[f"metrics.infer_volumes_per_s/{key}"] > 0
    table = read_patient_table(tmp_path / ef["tags.patients_file"])
    shifted = table[table["condition"] == "pet-shift"]
    assert set(shifted["magnitude"]) == {0.0, 8.0} and set(shifted["subset"]) == {"ctpet"}
    assert len(shifted) == 2 * len(table[table["condition"] == "ctpet"]), "two magnitudes, same rows each"
    ct_only = runs.loc["ct-only"]
    assert ct_only.get("metrics.dice_hecktor/pet-shift-8mm/mean") != ct_only.get(
        "metrics.dice_hecktor/pet-shift-8mm/mean"
    ), "a method without PET is not scored under a PET condition"


def test_a_misspelled_condition_fails_the_unit_before_training(tiny_cohort, tmp_path):
    result = ci_run(
        tmp_path, "--methods", "early-fusion", "--seeds", "0", "--set", "eval.conditions=[pet-shfit]",
        data=tiny_cohort,
    )  # fmt: skip
    assert "did you mean 'pet-shift'" in result.output
    run = Tracker(tmp_path).runs("smoke", status=None).iloc[0]
    assert run["status"] == "FAILED" and "metrics.train_final_loss" not in run.dropna().index
