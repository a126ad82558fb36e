"""Test-time conditions: a misregistration that moves the PET by d mm in world space, blur and noise
that leave CT and the truth alone, the clean magnitude reproducing the clean Dice exactly, and a new
condition as one registered function that reaches the metrics and the per-patient table."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.models import CFG, base_model

from pemma.conditions import CONDITIONS, Applied, parse, register_condition
from pemma.conditions.pet_shift import direction
from pemma.data.transforms import WORKING_AFFINE
from pemma.metrics.patients import patient_table, read_patient_table

# An oblique working grid: 2 x 1.5 x 3 mm voxels, rotated 30 degrees about z.
_ROT = np.array(
    [
        [math.cos(math.pi / 6), -math.sin(math.pi / 6), 0],
        [math.sin(math.pi / 6), math.cos(math.pi / 6), 0],
        [0, 0, 1],
    ]
)
AFFINE = np.eye(4)
AFFINE[:3, :3] = _ROT @ np.diag([2.0, 1.5, 3.0])
AFFINE[:3, 3] = (-40.0, 10.0, 5.0)


def _phantom(shape=(40, 40, 24)) -> dict:
    """A body of PET background 1 with a hot sphere (10) off centre, CT a ramp, a one-voxel label."""
    grid = np.indices(shape).astype(float)
    body = np.ones(shape)
    hot = ((grid[0] - 18) ** 2 + (grid[1] - 22) ** 2 + (grid[2] - 11) ** 2) < 16
    pet = body + 9.0 * hot
    label = np.zeros(shape, dtype=np.uint8)
    label[18, 22, 11] = 1
    return {
        "ct": torch.as_tensor(grid[0][None] / shape[0], dtype=torch.float32),
        "pet": torch.as_tensor(pet[None], dtype=torch.float32),
        "label": torch.as_tensor(label[None]),
        WORKING_AFFINE: torch.as_tensor(AFFINE),
        "patient_id": "P1",
    }


def _centre_of_mass_world(pet: torch.Tensor) -> np.ndarray:
    hot = np.clip(pet[0].numpy() - 5.0, 0, None)  # the sphere only (the background is 1)
    index = np.array([(hot * g).sum() / hot.sum() for g in np.indices(hot.shape)])
    return AFFINE[:3, :3] @ index + AFFINE[:3, 3]


@pytest.mark.parametrize("mm", [2.0, 4.0, 8.0, 12.0])
def test_pet_shift_moves_the_pet_by_d_mm_in_world_space_and_leaves_ct_and_label(mm):
    item = _phantom()
    shifted = Applied(CONDITIONS.get("pet-shift"), mm).apply(dict(item), "P1", seed=3)
    moved = _centre_of_mass_world(shifted["pet"]) - _centre_of_mass_world(item["pet"])
    voxel = 3.0  # the largest voxel side: the tolerance of a trilinear shift
    assert abs(np.linalg.norm(moved) - mm) < 0.25 * voxel, moved
    again = Applied(CONDITIONS.get("pet-shift"), mm).apply(dict(item), "P1", seed=3)
    assert torch.equal(again["pet"], shifted["pet"]), "the same draw for every method"
    other = Applied(CONDITIONS.get("pet-shift"), mm).apply(dict(item), "P2", seed=3)
    assert not torch.equal(other["pet"], shifted["pet"]), "a direction per patient"
    assert torch.equal(shifted["ct"], item["ct"]) and torch.equal(shifted["label"], item["label"])


def test_the_shift_direction_is_uniform_on_the_sphere():
    rng = np.random.default_rng(0)
    draws = np.array([direction(rng) for _ in range(4000)])
    assert np.allclose(np.linalg.norm(draws, axis=1), 1.0)
    assert np.all(np.abs(draws.mean(axis=0)) < 0.05)


def test_blur_and_noise_change_only_the_pet_as_their_magnitude_says():
    item = _phantom()
    blurred = Applied(CONDITIONS.get("pet-blur"), 10.0).apply(dict(item), "P1", seed=0)
    assert blurred["pet"].max() < item["pet"].max() and torch.equal(blurred["ct"], item["ct"])
    noisy = {pct: Applied(CONDITIONS.get("pet-noise"), pct).apply(dict(item), "P1", 0) for pct in (50, 10)}
    spread = {pct: float((n["pet"] - item["pet"]).std()) for pct, n in noisy.items()}
    # sd grows as sqrt(1/f - 1): 10% of the counts is 3x the added noise of 50%
    assert spread[10] / spread[50] == pytest.approx(3.0, rel=0.1)
    assert Applied(CONDITIONS.get("pet-noise"), 100.0).apply(item, "P1", 0) is item, "100% is clean"


def test_condition_specs_are_checked():
    assert [a.key for a in parse(("pet-shift=0,8",))] == ["pet-shift-0mm", "pet-shift-8mm"]
    assert len(parse(("pet-blur",))) == len(CONDITIONS.get("pet-blur").magnitudes)
    for spec, message in (
        ("pet-shfit", "did you mean 'pet-shift'"),
        ("pet-noise=0", "counts kept must lie in [1, 100] pct"),
        ("pet-shift=a", "magnitudes are numbers"),
        ("ct", "an input subset"),
    ):
        with pytest.raises((ValueError, KeyError), match=re.escape(message)):
            parse((spec,))


def test_evaluation_scores_every_condition_and_the_clean_magnitude_reproduces_the_clean_dice(monkeypatch):
    from pemma.methods import build_method
    from pemma.tasks.segmentation.evaluation import evaluate

    monkeypatch.setattr(CONDITIONS, "_entries", dict(CONDITIONS._entries))  # for this test only

    @register_condition("ct-dark", "CT scaled down", parameter="factor", unit="x", magnitudes=(0.5,))
    def ct_dark(item, factor, rng):
        item["ct"] = item["ct"] * factor
        return item

    roi = CFG.model.roi
    volumes = []
    for i in range(2):
        g = torch.Generator().manual_seed(i)
        label = torch.zeros(1, *roi, dtype=torch.uint8)
        label[0, 6:14, 6:14, 6:14] = 1
        volumes.append(
            {
                "ct": torch.rand(1, *roi, generator=g),
                "pet": label.float() * 3 + torch.rand(1, *roi, generator=g),
                "label": label,
                WORKING_AFFINE: torch.as_tensor(np.diag([2.0, 2.0, 2.0, 1.0])),
                "patient_id": f"P{i}",
            }
        )
    model = build_method("pemma-lora", CFG, base_model("unetr")).model
    results = evaluate(
        model, volumes, ("ctpet", "ct"), roi, CFG.eval, torch.device("cpu"), amp=False,
        conditions=parse(("pet-shift=0,8", "ct-dark")), seed=0,
    )  # fmt: skip
    assert list(results) == ["ctpet", "ct", "pet-shift-0mm", "pet-shift-8mm", "ct-dark-0.5x"]
    np.testing.assert_equal(results["pet-shift-0mm"].aggregated, results["ctpet"].aggregated)

    def voxels(key):
        return [r["prediction_voxels"] for r in results[key].patients]

    assert voxels("pet-shift-0mm") == voxels("ctpet"), "the clean magnitude: the same predictions"
    assert voxels("pet-shift-8mm") != voxels("ctpet"), "a shifted PET changes what the model predicts"
    rows = [{**r, "kind": "segmentation"} for res in results.values() for r in res.patients]
    table = patient_table(rows, "k")
    shifted = table[table["condition"] == "pet-shift"]
    assert set(shifted["magnitude"]) == {0.0, 8.0} and set(shifted["subset"]) == {"ctpet"}
    assert set(table.loc[table["condition"] == "ct-dark", "magnitude"]) == {0.5}
    assert set(table.loc[table["condition"] == "ctpet", "magnitude"].isna()) == {True}


def test_version_1_and_2_tables_are_still_read(tmp_path):
    v1 = pd.DataFrame(
        {
            "schema_version": [1, 1],
            "run_key": ["k", "k"],
            "kind": ["segmentation", "prognosis"],
            "patient_id": ["P1", "P2"],
            "subset": ["ctpet", "ctpet+ehr"],
            "class": ["gtvp", np.nan],
            "grid": ["original", np.nan],
            "dice": [0.5, np.nan],
            "intersection_voxels": [5.0, np.nan],
            "prediction_voxels": [10.0, np.nan],
            "truth_voxels": [10.0, np.nan],
        }
    )
    v1.to_csv(tmp_path / "v1.csv", index=False)
    table = read_patient_table(tmp_path / "v1.csv")
    assert table.loc[0, "condition"] == "ctpet" and pd.isna(table.loc[1, "condition"])
    assert table["magnitude"].isna().all()
    assert table["hd95_mm"].isna().all() and table["nsd"].isna().all()
    v2 = v1.assign(schema_version=2, condition=["pet-shift", None], magnitude=[8.0, np.nan])
    v2.to_csv(tmp_path / "v2.csv", index=False)
    table = read_patient_table(tmp_path / "v2.csv")
    assert table.loc[0, "condition"] == "pet-shift" and table.loc[0, "magnitude"] == 8.0
    assert list(table.columns[table.columns.get_loc("truth_voxels") :][:3]) == [
        "truth_voxels",
        "hd95_mm",
        "nsd",
    ]
