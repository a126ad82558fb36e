"""Evaluation by MONAI sliding-window inference on every input subset a model accepts, and under
every test-time condition a suite names (pemma/conditions)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import torch
from monai.data import Dataset
from monai.inferers import sliding_window_inference

from pemma.classes import HECKTOR, Classes
from pemma.conditions import CONDITIONS, Applied
from pemma.config import EvalConfig
from pemma.data.transforms import (
    ORIGINAL_CT,
    ORIGINAL_LABEL,
    WORKING_AFFINE,
    original_label,
    to_original_grid,
)
from pemma.metrics.segmentation import DiceAccumulator, boundary_metrics
from pemma.modalities import split_inputs, stack, unstack
from pemma.training.loop import autocast, plain


@dataclass(frozen=True)
class SubsetResult:
    aggregated: dict[str, float]
    """HECKTOR aggregated Dice on the working grid (data.spacing)."""
    case_mean: dict[str, float]
    volumes_per_s: float
    cases: int
    patients: list[dict] = field(default_factory=list)
    """Per patient, class and grid: dice and voxel counts (the per-patient table's rows)."""
    original: dict[str, float] | None = None
    """Aggregated Dice on each patient's original CT grid, as HECKTOR evaluates (when asked for)."""
    original_case_mean: dict[str, float] | None = None
    hd95: dict[str, float] | None = None
    """Median HD95 (mm) over the patients, per class, on the original grid (when asked for)."""
    nsd: dict[str, float] | None = None
    """Median normalised surface Dice at eval.nsd_tolerance_mm, per class, on the original grid."""


def evaluate(
    model: torch.nn.Module,
    volumes: Dataset,
    subsets: tuple[str, ...],
    roi: tuple[int, int, int],
    cfg: EvalConfig,
    device: torch.device,
    amp: bool = True,
    original_grid: bool = False,
    conditions: list[Applied] | tuple[Applied, ...] = (),
    seed: int = 0,
    write: Callable[[str, str, torch.Tensor, str], object] | None = None,
    classes: Classes = HECKTOR,
) -> dict[str, SubsetResult]:
    """Sliding-window inference on every subset, then under every test-time condition given (the
    caller keeps those whose input subset the model accepts; each patient's inputs changed as the
    condition says, deterministically
    in `seed`); Dice on the working grid and, with `original_grid`, on each patient's original CT
    grid (probabilities resampled back, then argmax; the volumes must carry their original files, as
    CohortData's do). Results are keyed by subset, or by condition key (e.g. `pet-shift-8mm`).
    `write(pass key, patient, labels on the CT grid, CT file)` receives each original-grid prediction
    (predictions.PredictionWriter writes them as NIfTI). `classes`: the cohort's, in label order."""
    model.to(device).eval()
    passes = [Applied(CONDITIONS.get(s)) for s in subsets]
    passes += list(conditions)
    keys = [p.key for p in passes]
    accumulators = {k: DiceAccumulator(classes.names) for k in keys}
    originals = {k: DiceAccumulator(classes.names) for k in keys}
    seconds = dict.fromkeys(keys, 0.0)
    rows: dict[str, list[dict]] = {k: [] for k in keys}
    with torch.inference_mode(), autocast(device, amp):
        for index in range(len(volumes)):
            item = volumes[index]
            patient = item.get("patient_id", str(index))
            scored = "label" in item  # a cohort without labels is predicted, not scored
            truth = (
                original_label(item[ORIGINAL_LABEL], item[ORIGINAL_CT]) if original_grid and scored else None
            )
            ct_spacing = nib.load(item[ORIGINAL_CT]).header.get_zooms()[:3] if original_grid else None
            clean = {k: plain(item[k].unsqueeze(0), device) for k in ("ct", "pet") if k in item}
            for applied in passes:
                subset, key = applied.subset, applied.key
                changed = applied.apply(item, patient, seed)
                batch = (
                    clean
                    if changed is item
                    else {k: plain(changed[k].unsqueeze(0), device) for k in ("ct", "pet") if k in changed}
                )
                ct, pet = split_inputs(batch, subset)

                def predictor(x: torch.Tensor, subset: str = subset) -> torch.Tensor:
                    return model(*unstack(x, subset)).float()

                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                logits = sliding_window_inference(
                    stack(ct, pet),
                    roi_size=roi,
                    sw_batch_size=cfg.sw_batch_size,
                    predictor=predictor,
                    overlap=cfg.overlap,
                    mode=cfg.mode,
                )
                prediction = logits.argmax(dim=1)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds[key] += time.perf_counter() - t0
                if scored:
                    accumulators[key].add(prediction.cpu(), item["label"])
                    rows[key] += _patient_rows(accumulators[key], patient, "working", applied)
                if original_grid:
                    back = to_original_grid(
                        torch.softmax(logits[0].float(), dim=0), item[WORKING_AFFINE], item[ORIGINAL_CT]
                    )
                    if write is not None:
                        write(key, patient, back, item[ORIGINAL_CT])
                    if scored:
                        originals[key].add(back, truth)
                        boundary = boundary_metrics(
                            back, truth, ct_spacing, cfg.nsd_tolerance_mm, classes.count
                        )
                        rows[key] += _patient_rows(originals[key], patient, "original", applied, boundary)
    return {
        k: SubsetResult(
            accumulators[k].aggregated(),
            accumulators[k].case_mean(),
            len(volumes) / seconds[k] if seconds[k] > 0 else float("nan"),
            len(volumes),
            rows[k],
            originals[k].aggregated() if original_grid else None,
            originals[k].case_mean() if original_grid else None,
            _medians(rows[k], "hd95_mm", classes.names) if original_grid else None,
            _medians(rows[k], "nsd", classes.names) if original_grid else None,
        )
        for k in keys
    }


def _medians(rows: list[dict], column: str, names: tuple[str, ...]) -> dict[str, float]:
    """Per class, the median over patients of an original-grid per-patient value (undefined ones left
    out); `mean`: the mean of the classes' medians (undefined unless both are)."""
    out = {}
    for name in names:
        values = [r[column] for r in rows if r["grid"] == "original" and r["class"] == name]
        defined = np.array([v for v in values if np.isfinite(v)], dtype=float)
        out[name] = float(np.median(defined)) if defined.size else float("nan")
    out["mean"] = float(np.mean(list(out.values())))
    return out


def _patient_rows(
    acc: DiceAccumulator,
    patient_id: str,
    grid: str,
    applied: Applied,
    boundary: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[dict]:
    """The case just added to `acc`, one row per class, with the input subset and the condition, and
    the boundary metrics where given (original grid)."""
    hd95, nsd = boundary if boundary is not None else (np.full(len(acc.names), np.nan),) * 2
    return [
        {
            "patient_id": patient_id,
            "subset": applied.subset,
            "condition": applied.condition.name,
            "magnitude": applied.magnitude,
            "grid": grid,
            "class": name,
            "dice": float(acc.per_case[-1][k]),
            "intersection_voxels": float(acc.intersection[-1][k]),
            "prediction_voxels": float(acc.predicted[-1][k]),
            "truth_voxels": float(acc.truth[-1][k]),
            "hd95_mm": float(hd95[k]),
            "nsd": float(nsd[k]),
        }
        for k, name in enumerate(acc.names)
    ]
