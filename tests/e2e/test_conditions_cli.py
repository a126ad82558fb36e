"""A suite's test-time conditions through the CLI at the ci profile: scored after training, logged
under their keys, the clean magnitude equal to the clean Dice, rows in the per-patient table."""

import pandas as pd
import pytest
from helpers.cli import ci_run

from pemma.metrics.patients import SCHEMA_VERSION, read_patient_table
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


def test_a_misspelled_condition_stops_the_suite_before_any_unit(tiny_cohort, tmp_path):
    result = ci_run(
        tmp_path, "--methods", "early-fusion", "--seeds", "0", "--set", "eval.conditions=[pet-shfit]",
        data=tiny_cohort,
    )  # fmt: skip
    assert result.exit_code == 2 and "did you mean 'pet-shift'" in result.output, result.output
    assert Tracker(tmp_path).runs("smoke", status=None).empty


def _rows(table):
    return table.sort_values(["condition", "magnitude", "patient_id", "grid", "class"]).reset_index(drop=True)


def test_a_condition_added_to_a_finished_unit_is_scored_without_training(tiny_cohort, tmp_path, monkeypatch):
    """The unit's run key ignores its conditions; a rerun asking for one more evaluates only that one,
    from the saved trained state, into the same run and table, with the numbers a unit that scored
    every condition at once logs."""
    first = ["--methods", "early-fusion", "--seeds", "0"]
    both = 'eval.conditions=["pet-shift=0,8", pet-noise=25]'
    once = ci_run(tmp_path / "once", *first, "--set", both, data=tiny_cohort)
    assert once.exit_code == 0, once.output
    grown = tmp_path / "grown"
    result = ci_run(grown, *first, "--set", "eval.conditions=[pet-shift=8]", data=tiny_cohort)
    assert result.exit_code == 0, result.output
    before = Tracker(grown).runs("smoke").iloc[0]
    table_before = read_patient_table(grown / before["tags.patients_file"])

    import pemma.training.loop as loop  # the task imports `train` where it trains: patched in its module

    def no_training(*args, **kwargs):
        raise AssertionError("a finished unit trained again")

    monkeypatch.setattr(loop, "train", no_training)
    dry = ci_run(grown, *first, "--set", both, "--dry-run", data=tiny_cohort)
    assert "to evaluate" in dry.output, dry.output
    result = ci_run(grown, *first, "--set", both, data=tiny_cohort)
    assert result.exit_code == 0 and "evaluated" in result.output, result.output

    runs = Tracker(grown).runs("smoke")
    assert len(runs) == 1, "the same run, not a second one"
    after, reference = runs.iloc[0], Tracker(tmp_path / "once").runs("smoke").iloc[0]
    assert after["run_id"] == before["run_id"] and after["tags.run_key"] == reference["tags.run_key"]
    assert after["tags.conditions_evaluated"] == "pet-shift-8mm,pet-shift-0mm,pet-noise-25pct"
    for key in ("pet-shift-0mm", "pet-noise-25pct", "pet-shift-8mm", "ctpet"):
        for cls in ("gtvp", "gtvn", "mean"):
            name = f"metrics.dice_hecktor/{key}/{cls}"
            assert after[name] == reference[name] or pd.isna(after[name]) and pd.isna(reference[name]), name
    assert after["metrics.train_final_loss"] == before["metrics.train_final_loss"]
    table = read_patient_table(grown / after["tags.patients_file"])
    assert len(table) > len(table_before) and (table["schema_version"] == SCHEMA_VERSION).all()
    expected = read_patient_table(tmp_path / "once" / reference["tags.patients_file"])
    assert _rows(table).equals(_rows(expected)), "the grown table holds the rows of scoring all at once"

    again = ci_run(grown, *first, "--set", both, data=tiny_cohort)
    assert again.exit_code == 0 and "skipped" in again.output, again.output
