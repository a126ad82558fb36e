"""Splits: no patient scored by a unit was seen by any component the unit trained or loaded."""

import pytest

from pemma.config import resolve
from pemma.data.hecktor import read_cohort
from pemma.data.splits import make_plan
from pemma.tasks.prognosis.cox import prognosis_split


@pytest.mark.parametrize("split_seed", [0, 1, 2])
def test_prognosis_test_patients_were_never_trained_on(partial_endpoint_cohort, split_seed):
    d = resolve({"profile": "ci", "task": "prognosis"}).data
    cohort = read_cohort(partial_endpoint_cohort)
    assert 0 < len(cohort.endpoints) < len(cohort.cases), "endpoints are partial"
    plan = make_plan(cohort, d.pretrain_centres, d.adapt_centre, d.split, split_seed)
    splits = prognosis_split(cohort, plan, d.split, split_seed)
    test = {c.patient_id for c in splits["test"]}
    trained = {c.patient_id for phase in (plan.pretrain, plan.adapt) for c in phase["train"]}
    assert test and not test & trained, (
        f"test patients the CT base or adaptation trained on: {test & trained}"
    )
    assert not test & {c.patient_id for c in splits["train"]}
    with_endpoint = set(cohort.endpoints["PatientID"])
    assert test | {c.patient_id for c in splits["train"]} <= with_endpoint


def test_the_split_follows_the_unit_seed_only_when_asked(tiny_cohort, tmp_path):
    from pemma.data.store import DataStore

    store = DataStore(tmp_path)

    def held_out(seed, follows):
        data = {"root": str(tiny_cohort), "split_follows_seed": follows}
        plan = store.load(resolve({"profile": "ci", "seed": seed, "data": data})).plan
        return sorted(c.patient_id for c in plan.pretrain["test"] + plan.adapt["test"])

    assert held_out(0, False) == held_out(1, False) == held_out(2, False), "data.split_seed fixes the split"
    assert held_out(0, True) == held_out(0, False)
    assert len({tuple(held_out(s, True)) for s in range(4)}) > 1, "each seed draws its own split"
