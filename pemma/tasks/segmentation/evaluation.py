"""Evaluation by MONAI sliding-window inference on every input subset a model accepts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from monai.data import Dataset
from monai.inferers import sliding_window_inference

from pemma.config import EvalConfig
from pemma.data.transforms import (
    ORIGINAL_CT,
    ORIGINAL_LABEL,
    WORKING_AFFINE,
    original_label,
    to_original_grid,
)
from pemma.metrics.segmentation import CLASSES, DiceAccumulator
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


def evaluate(
    model: torch.nn.Module,
    volumes: Dataset,
    subsets: tuple[str, ...],
    roi: tuple[int, int, int],
    cfg: EvalConfig,
    device: torch.device,
    amp: bool = True,
    original_grid: bool = False,
) -> dict[str, SubsetResult]:
    """Sliding-window inference on every subset; Dice on the working grid and, with `original_grid`,
    on each patient's original CT grid (probabilities resampled back, then argmax; the volumes must
    carry their original files, as CohortData's do)."""
    model.to(device).eval()
    accumulators = {s: DiceAccumulator() for s in subsets}
    originals = {s: DiceAccumulator() for s in subsets}
    seconds = dict.fromkeys(subsets, 0.0)
    rows: dict[str, list[dict]] = {s: [] for s in subsets}
    with torch.inference_mode(), autocast(device, amp):
        for index in range(len(volumes)):
            item = volumes[index]
            patient = item.get("patient_id", str(index))
            truth = original_label(item[ORIGINAL_LABEL], item[ORIGINAL_CT]) if original_grid else None
            batch = {k: plain(item[k].unsqueeze(0), device) for k in ("ct", "pet") if k in item}
            for subset in subsets:
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
                seconds[subset] += time.perf_counter() - t0
                accumulators[subset].add(prediction.cpu(), item["label"])
                rows[subset] += _patient_rows(accumulators[subset], patient, "working")
                if original_grid:
                    back = to_original_grid(
                        torch.softmax(logits[0].float(), dim=0), item[WORKING_AFFINE], item[ORIGINAL_CT]
                    )
                    originals[subset].add(back, truth)
                    rows[subset] += _patient_rows(originals[subset], patient, "original")
    return {
        s: SubsetResult(
            accumulators[s].aggregated(),
            accumulators[s].case_mean(),
            len(volumes) / seconds[s] if seconds[s] > 0 else float("nan"),
            len(volumes),
            rows[s],
            originals[s].aggregated() if original_grid else None,
            originals[s].case_mean() if original_grid else None,
        )
        for s in subsets
    }


def _patient_rows(acc: DiceAccumulator, patient_id: str, grid: str) -> list[dict]:
    """The case just added to `acc`, one row per class."""
    return [
        {
            "patient_id": patient_id,
            "grid": grid,
            "class": name,
            "dice": float(acc.per_case[-1][k]),
            "intersection_voxels": float(acc.intersection[-1][k]),
            "prediction_voxels": float(acc.predicted[-1][k]),
            "truth_voxels": float(acc.truth[-1][k]),
        }
        for k, name in enumerate(CLASSES.values())
    ]
