"""Evaluation by MONAI sliding-window inference on every input subset a model accepts."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from monai.data import Dataset
from monai.inferers import sliding_window_inference

from pemma.config import EvalConfig
from pemma.engine.train import autocast, plain
from pemma.metrics.segmentation import DiceAccumulator
from pemma.modalities import split_inputs, stack, unstack


@dataclass(frozen=True)
class SubsetResult:
    aggregated: dict[str, float]
    case_mean: dict[str, float]
    volumes_per_s: float
    cases: int


def evaluate(
    model: torch.nn.Module,
    volumes: Dataset,
    subsets: tuple[str, ...],
    roi: tuple[int, int, int],
    cfg: EvalConfig,
    device: torch.device,
    amp: bool = True,
) -> dict[str, SubsetResult]:
    model.to(device).eval()
    accumulators = {s: DiceAccumulator() for s in subsets}
    seconds = dict.fromkeys(subsets, 0.0)
    with torch.inference_mode(), autocast(device, amp):
        for index in range(len(volumes)):
            item = volumes[index]
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
    return {
        s: SubsetResult(
            accumulators[s].aggregated(),
            accumulators[s].case_mean(),
            len(volumes) / seconds[s] if seconds[s] > 0 else float("nan"),
            len(volumes),
        )
        for s in subsets
    }
