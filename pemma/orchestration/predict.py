"""Apply a trained unit to another cohort: its predictions written as the unit writes its own
(tasks/segmentation/predictions.py), and scored where the cohort has labels.

The unit is a FINISHED run of the results folder's store, named by its run key or by suite, method,
seed (and backbone). Its configuration is rebuilt from the parameters it logged and checked against
its run key; its CT base comes from the results folder's cache (or the user's pretraining
checkpoint it named), its trained state from its saved file (digest checked). Nothing is written
until every check has passed, and the output folder appears whole or not at all: files go to a
hidden sibling folder that is renamed into place at the end. An output folder holding another
unit's predictions is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from monai.data import Dataset

from pemma.config import ConfigError, RunConfig, from_logged
from pemma.data.datasets import items_of
from pemma.data.hecktor import Case, Cohort, CohortError, read_cohort
from pemma.data.transforms import preprocess
from pemma.files import CorruptFile, load_state, save_json
from pemma.methods import METHODS
from pemma.modalities import CTPET, LABELS, PET
from pemma.models.backbones import BACKBONES
from pemma.models.portable import PortableStateError
from pemma.orchestration.runner import seed_everything
from pemma.tasks.segmentation.adapted import restore
from pemma.tasks.segmentation.evaluation import SubsetResult, evaluate
from pemma.tasks.segmentation.predictions import PredictionWriter
from pemma.tracking import Tracker, run_key

MARKER = "prediction.json"
"""In an output folder: which unit wrote it, on which cohort."""


class PredictError(ValueError):
    """A unit, cohort or output folder that `predict` cannot use; the message names it."""


@dataclass
class Prediction:
    folder: Path
    subset: str
    patients: int
    scored: int
    result: SubsetResult | None = None
    notes: list[str] = field(default_factory=list)


def find_unit(
    tracker: Tracker,
    key: str | None = None,
    *,
    suite: str | None = None,
    method: str | None = None,
    seed: int | None = None,
    backbone: str | None = None,
) -> pd.Series:
    """The FINISHED run of the unit named by `key`, or by suite + method + seed (+ backbone)."""
    if key:
        suite = key.split("__")[0]
        runs = tracker.runs(suite, status=None)
        mine = runs[runs["tags.run_key"] == key] if not runs.empty else runs
        if mine.empty:
            raise PredictError(f"run key {key}: no such unit in the store {tracker.uri}")
        finished = mine[mine["status"] == "FINISHED"]
        if finished.empty:
            raise PredictError(f"run key {key}: the unit is {mine.iloc[0]['status']}, not FINISHED")
        return finished.sort_values("end_time").iloc[-1]
    if not (suite and method and seed is not None):
        raise PredictError("name the unit: --run-key KEY, or --suite, --method and --seed")
    runs = tracker.runs(suite)
    if runs.empty:
        raise PredictError(f"suite {suite}: no FINISHED unit in the store {tracker.uri}")
    mine = runs[(runs["tags.method"] == method) & (runs["params.seed"].astype(int) == seed)]
    if backbone:
        mine = mine[mine["tags.backbone"] == backbone]
    keys = sorted(set(mine["tags.run_key"]))
    if not keys:
        raise PredictError(f"suite {suite}: no FINISHED unit of {method}, seed {seed}")
    if len(keys) > 1:
        raise PredictError(
            f"suite {suite}: {len(keys)} units of {method}, seed {seed}; name one by --run-key: "
            + ", ".join(keys)
        )
    return mine[mine["tags.run_key"] == keys[0]].iloc[0]


def unit_config(run: pd.Series) -> RunConfig:
    """The unit's configuration, rebuilt from its logged parameters and checked against its run key."""
    params = {
        k.removeprefix("params."): v for k, v in run.items() if k.startswith("params.") and isinstance(v, str)
    }
    key = run["tags.run_key"]
    try:
        cfg = from_logged(params)
    except ConfigError as err:
        raise PredictError(f"run key {key}: its logged configuration does not rebuild ({err})") from err
    revision = METHODS.get(cfg.method).revision(cfg.backbone)
    if run_key(cfg, str(run.get("tags.data_fingerprint")), revision) != key:
        raise PredictError(
            f"run key {key}: its logged parameters rebuild another configuration (written by another "
            "version of pemma-bench?); it cannot be applied safely"
        )
    return cfg


def check_overlap(case: Case) -> None:
    """CT and PET must share some world space (a PET of another patient or an unregistered one does not)."""
    boxes = []
    for path in (case.ct, case.pet):
        image = nib.load(path)
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in image.shape[:3]], indexing="ij")).reshape(3, -1)
        world = image.affine[:3, :3] @ corners + image.affine[:3, 3:]
        boxes.append((world.min(axis=1), world.max(axis=1)))
    (low_a, high_a), (low_b, high_b) = boxes
    if np.any(np.minimum(high_a, high_b) <= np.maximum(low_a, low_b)):
        raise PredictError(
            f"patient {case.patient_id}: its CT ({case.ct.name}) and PET ({case.pet.name}) do not overlap in "
            "world space; the PET is not registered to the CT"
        )


def _cases(root: Path, images: str | None, subset: str) -> tuple[Cohort, str]:
    folder = images or next((f for f in ("imagesTs", "imagesTr") if (root / f).is_dir()), "imagesTr")
    try:
        cohort = read_cohort(root, folder)
    except CohortError as err:
        raise PredictError(str(err)) from err
    cases = list(cohort.cases)
    if PET in subset or subset == CTPET:
        without = [c.patient_id for c in cases if c.pet is None]
        if without:
            raise PredictError(
                f"{root / folder}: the unit reads PET ({LABELS[subset]} input), but "
                f"{len(without)} patient(s) have none: "
                + ", ".join(without[:5])
                + ("..." if len(without) > 5 else "")
            )
        for case in cases:
            check_overlap(case)
    return cohort, folder


def _check_output(out: Path, key: str) -> None:
    if not out.exists():
        return
    marker = out / MARKER
    if marker.is_file():
        written_by = json.loads(marker.read_text()).get("run_key")
        if written_by != key:
            raise PredictError(
                f"{out}: holds the predictions of another unit ({written_by}); choose another --out"
            )
        return
    if any(out.iterdir()):
        raise PredictError(
            f"{out}: a folder that is not empty and holds no predictions of this unit; choose another --out"
        )


def _model(cfg: RunConfig, run: pd.Series, results: Path):
    method = METHODS.get(cfg.method)()
    base = None
    if method.needs_base:
        base = BACKBONES.get(cfg.backbone).build(cfg.model, 1)
        source = (
            Path(cfg.pretrain.checkpoint)
            if cfg.pretrain.checkpoint
            else results / "bases" / str(run["tags.base_key"]) / "base.pt"
        )
        if not source.is_file():
            raise PredictError(
                f"unit {run['tags.run_key']}: its CT base {source} is not there (the results folder's cache)"
            )
        try:
            base.load_state_dict(load_state(source))
        except CorruptFile as err:
            raise PredictError(str(err)) from err
    seed_everything(cfg.seed)  # as the runner seeds a unit before its method builds the model
    built = method.create(base, cfg)
    try:
        restore(built, cfg, results / str(run["tags.trained_file"]))
    except (PortableStateError, FileNotFoundError) as err:
        raise PredictError(f"unit {run['tags.run_key']}: its trained state cannot be used: {err}") from err
    return method, built


def predict(
    results: Path,
    run: pd.Series,
    cohort: Path,
    out: Path,
    device: torch.device,
    subset: str | None = None,
    images: str | None = None,
) -> Prediction:
    """The unit of `run` applied to `cohort`: predictions under `out`/<subset>/<PatientID>.nii.gz, and
    HECKTOR aggregated Dice where the cohort has labels."""
    cfg = unit_config(run)
    method = METHODS.get(cfg.method)()
    subset = subset or (CTPET if CTPET in method.inputs() else method.inputs()[0])
    if subset not in method.inputs():
        raise PredictError(
            f"--subset {subset}: {cfg.method} does not accept it (it accepts {', '.join(method.inputs())})"
        )
    read, folder = _cases(Path(cohort), images, subset)
    problem = read.classes.mismatch(cfg.model.num_classes, read.root)
    if problem:
        raise PredictError(
            f"unit {run['tags.run_key']} predicts {cfg.model.num_classes - 1} class(es): {problem}"
        )
    cases = list(read.cases)
    notes = []
    if read.fingerprint() == run.get("tags.data_fingerprint"):
        notes.append(
            "this is the cohort the unit was trained on: its training and validation patients are among "
            "these, so this Dice is not a test score (the unit's own test-split Dice is in its run)"
        )
    _check_output(out, run["tags.run_key"])
    method, built = _model(cfg, run, results)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        writer = PredictionWriter(staging)
        labelled = [c for c in cases if c.label is not None]
        unlabelled = [c for c in cases if c.label is None]
        result = None
        for group in (labelled, unlabelled):
            if not group:
                continue
            keys = (
                "ct",
                *(["pet"] if all(c.pet for c in group) else []),
                *(["label"] if group is labelled else []),
            )
            volumes = Dataset(items_of(group, keys), preprocess(keys, cfg.data.spacing, cfg.data.ct_window))
            scored = evaluate(
                built.model, volumes, (subset,), cfg.model.roi, cfg.eval, device, cfg.train.amp,
                original_grid=True, write=writer, classes=read.classes,
            )[subset]  # fmt: skip
            if group is labelled:
                result = scored
        save_json(
            {
                "run_key": run["tags.run_key"],
                "cohort": str(Path(cohort).resolve()),
                "images": folder,
                "subset": subset,
            },
            staging / MARKER,
        )
        if out.exists():
            old = out.with_name(f".{out.name}.{os.getpid()}.old")
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Prediction(out, subset, len(cases), len(labelled), result, notes)
