"""Issue 30: classes come from the cohort. What the suite expansion makes of a cohort's classes (the
network's outputs, the loss's weights), what a run may not set against them, and the metrics named
after them. Only dataset.json is read here: no image, no training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pemma.classes import HECKTOR, Classes, ordered, title_of
from pemma.config import ConfigError, resolve
from pemma.metrics.segmentation import DiceAccumulator, boundary_metrics
from pemma.suites import expand, load_suite


def _dataset(tmp_path, labels: dict) -> str:
    root = tmp_path / "Dataset900_X"
    root.mkdir(parents=True)
    spec = {"channel_names": {"0": "CT", "1": "PET"}, "labels": labels, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(spec))
    return str(root)


def _units(root: str, *overrides: str):
    return expand(load_suite("smoke"), profile="ci", data_root=root, overrides=list(overrides))


def test_a_one_class_cohort_gets_two_outputs_and_unit_weights_and_hecktor_keeps_its_defaults(tmp_path):
    one = _units(_dataset(tmp_path, {"background": 0, "lesion": 1}))
    assert {(u.model.num_classes, u.train.class_weights) for u in one} == {(2, (1.0, 1.0))}
    hecktor = _units(None)
    ci = resolve({"profile": "ci"})
    assert {(u.model.num_classes, u.train.class_weights) for u in hecktor} == {(3, ci.train.class_weights)}
    assert all("model.num_classes" not in u.identity() for u in hecktor)  # HECKTOR keys unchanged


def test_a_run_may_weight_the_cohorts_classes_but_not_change_their_count(tmp_path):
    root = _dataset(tmp_path, {"background": 0, "lesion": 1})
    weighted = _units(root, "train.class_weights=[1.0, 4.0]")
    assert {u.train.class_weights for u in weighted} == {(1.0, 4.0)}
    with pytest.raises(ConfigError, match=r"model.num_classes: 3, but .* labels background 0, lesion 1"):
        _units(root, "model.num_classes=3")
    with pytest.raises(ConfigError, match="3 weights for model.num_classes=2"):
        _units(root, "train.class_weights=[1.0, 2.0, 5.0]")
    with pytest.raises(ConfigError, match="values must be 0 .background., then 1..2"):
        _units(_dataset(tmp_path / "gap", {"background": 0, "a": 1, "b": 3}))


def test_class_names_are_metric_names_and_titles_keep_the_datasets_spelling():
    classes = Classes.from_labels(["Tumour core", "GTVn"])
    assert classes.names == ("tumour_core", "gtvn") and classes.title("tumour_core") == "Tumour core"
    assert classes.describe() == "background 0, Tumour core 1, GTVn 2"
    assert title_of("gtvp") == "GTVp" and title_of("lesion") == "lesion" and title_of("mean") == "Dice"
    assert ordered(["lesion", "gtvn", "gtvp", "apex"]) == ["gtvp", "gtvn", "apex", "lesion"]
    for bad in (["mean"], ["2nd"], ["a", "A"]):
        with pytest.raises(ValueError):
            Classes.from_labels(bad)


def test_dice_and_boundary_metrics_of_a_one_class_cohort_are_named_after_it():
    acc = DiceAccumulator(("lesion",))
    truth = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    truth[..., :2, :, :] = 1  # 32 voxels
    prediction = torch.zeros_like(truth)
    prediction[..., :1, :, :] = 1  # 16 of them
    acc.add(prediction, truth)
    assert acc.aggregated() == pytest.approx({"lesion": 2 * 16 / 48, "mean": 2 * 16 / 48})
    hd95, nsd = boundary_metrics(prediction, truth, (1.0, 1.0, 1.0), 1.0, count=1)
    assert hd95.shape == nsd.shape == (1,) and np.isfinite(hd95).all()
    assert DiceAccumulator().aggregated().keys() == {*HECKTOR.names, "mean"}
