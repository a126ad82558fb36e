"""The suite table from a fixture of tracked runs: hand-computed cells, columns from task declarations."""

import pytest
from helpers.runs import FakeRuns

from pemma.methods import reference_method
from pemma.report.tables import summary, to_markdown
from pemma.tasks import TASKS, all_metrics


def _log(runs: FakeRuns, suite, method, seed, metrics, params=None, backbone="unetr"):
    runs.add(suite, method, seed, metrics, params=params, backbone=backbone)


@pytest.fixture
def fake(tmp_path):
    return FakeRuns(tmp_path)


def test_cells_are_mean_and_sample_std_over_seeds_and_unlogged_columns_are_left_out(fake):
    ef, lora = reference_method("parameters"), "pemma-lora"
    for seed, dice in enumerate((0.6, 0.8)):
        _log(fake, "t", ef, seed, {"dice_hecktor/ctpet/mean": dice, "params_trainable": 1000})
    for seed, dice in enumerate((0.5, 0.7, 0.9)):
        _log(
            fake,
            "t",
            lora,
            seed,
            {
                "dice_hecktor/ctpet/mean": dice,
                "params_trainable": 80,
                "params_trainable_pct_of_reference": 8.0,
            },
        )
    _log(fake, "t", "late-fusion", 0, {"dice_hecktor/ct/mean": 0.25})
    table = summary(fake.tracker.runs("t")).set_index("method")
    # 0.6, 0.8: mean 0.7, sample std 0.1414; 0.5, 0.7, 0.9: mean 0.7, sample std 0.2
    assert table.loc[ef, "Dice CT+PET ↑"] == "0.700 ± 0.141"
    assert table.loc[lora, "Dice CT+PET ↑"] == "0.700 ± 0.200"
    assert table.loc[lora, "seeds"] == 3
    assert (
        table.loc["late-fusion", "Dice CT+PET ↑"] == "—" and table.loc["late-fusion", "Dice CT ↑"] == "0.250"
    )
    assert table.loc[lora, f"% of {ef} ↓"] == "8.0 ± 0.0"
    assert table.loc[ef, "trainable"] == "1,000 ± 0"
    assert "Dice PET ↑" not in table.columns, "a column no run logged is left out"
    assert not any(c.startswith(("ACC", "C-index")) for c in table.columns)
    assert list(table.index) == [ef, "late-fusion", lora], "rows follow the method registry"
    text = to_markdown(summary(fake.tracker.runs("t")), "t")
    assert "Dice: HECKTOR aggregated Dice" in text and "C-index:" not in text
    assert f"% of {ef}: trainable parameters as a percentage" in text
    assert "on one fixed split (data.split_seed): the spread leaves out the split's variance" in text


def test_params_that_vary_become_a_variant_column(fake):
    for rank, dice in ((4, 0.5), (8, 0.6)):
        for seed in (0, 1):
            _log(
                fake,
                "r",
                "pemma-lora",
                seed,
                {"dice_hecktor/ctpet/mean": dice + seed / 10},
                {"adapter.rank": rank, "train.steps": 5},
            )
    table = summary(fake.tracker.runs("r"))
    assert list(table["variant"]) == ["adapter.rank=4", "adapter.rank=8"]
    assert list(table["Dice CT+PET ↑"]) == ["0.550 ± 0.071", "0.650 ± 0.071"]


def test_a_derived_column_is_relative_to_the_declared_reference_on_matching_runs(fake):
    ref = reference_method("modalities")
    for seed, (c_ref, c_ref_ehr, c_lora) in enumerate(((0.5, 0.9, 0.6), (0.6, 0.9, 0.66))):
        _log(fake, "p", ref, seed, {"surv/cindex_harrell": c_ref}, {"prognosis.ehr": False})
        _log(fake, "p", ref, seed, {"surv/cindex_harrell": c_ref_ehr}, {"prognosis.ehr": True})
        _log(fake, "p", "pemma-lora", seed, {"surv/cindex_harrell": c_lora}, {"prognosis.ehr": False})
    table = summary(fake.tracker.runs("p"))
    column = f"ΔC vs {ref} % ↑"
    lora = table[table["method"] == "pemma-lora"].iloc[0]
    # (0.6 / 0.5 - 1) = +20%, (0.66 / 0.6 - 1) = +10%: mean 15.0, std 7.1; the EHR reference run is ignored
    assert lora[column] == "15.0 ± 7.1"
    with_ehr = table[(table["method"] == ref) & (table["variant"] == "prognosis.ehr=True")].iloc[0]
    assert with_ehr[column] == "65.0 ± 21.2"  # 0.9/0.5 - 1 = 80%, 0.9/0.6 - 1 = 50%
    assert "C-index: Harrell's" in to_markdown(table)
    assert "some rows draw a split per seed" not in to_markdown(table)


def test_every_declared_metric_has_a_meaning_and_a_known_reference():
    from pemma.methods.base import REFERENCE_ROLES

    for metric in all_metrics():
        assert metric.meaning and metric.title, metric.key
        assert metric.reference is None or metric.reference in REFERENCE_ROLES
    for _, task in TASKS.items():
        assert task.data_keys and task.metrics and task.summary
    # every role has exactly one method that declares itself its reference
    assert {role: reference_method(role) for role in REFERENCE_ROLES} == {
        "parameters": "early-fusion",
        "modalities": "ct-only",
        "memory": "full-finetune",
    }
