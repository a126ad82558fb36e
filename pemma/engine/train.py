"""The one training loop: every method, the CT pretraining too. What differs comes in as arguments."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss

from pemma.config import TrainConfig
from pemma.engine.throughput import PeakMemory
from pemma.modalities import CTPET, split_inputs


@dataclass(frozen=True)
class TrainStats:
    steps: int
    seconds: float
    samples_per_s: float
    data_wait_share: float
    peak_memory_mb: float
    first_loss: float
    final_loss: float
    """Mean loss over the last tenth of the steps."""


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA; plain fp32 elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def dtype_name(device: torch.device, amp: bool) -> str:
    return "bf16-autocast" if amp and device.type == "cuda" else "fp32"


def plain(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """A plain tensor on `device`: MONAI's MetaTensor costs a Python hook on every op in the network."""
    return None if t is None else t.as_subclass(torch.Tensor).to(device, non_blocking=True)


def _forever(loader: DataLoader) -> Iterator[dict]:
    while True:
        yield from loader


def train(
    model: torch.nn.Module,
    dataset: Dataset,
    budget: TrainConfig,
    *,
    subsets: tuple[str, ...],
    probabilities: tuple[float, ...],
    seed: int,
    device: torch.device,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainStats:
    """Train what requires grad for `budget.steps` steps; `subsets` drawn per batch by `probabilities`."""
    steps, batch_size, lr = budget.steps, budget.batch_size, budget.lr
    weight_decay, class_weights, amp, warmup_steps = (
        budget.weight_decay,
        budget.class_weights,
        budget.amp,
        budget.warmup_steps,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    loss_fn = DiceCELoss(
        to_onehot_y=True, softmax=True, weight=torch.tensor(class_weights, dtype=torch.float32, device=device)
    )
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        num_workers=0,
        drop_last=len(dataset) >= batch_size,
    )
    rng = np.random.default_rng(seed)
    batches = _forever(loader)
    model.to(device).train()
    losses: list[float] = []
    timed_seconds = data_seconds = 0.0
    timed_samples = 0
    with PeakMemory(device) as memory:
        for step in range(steps):
            t0 = time.perf_counter()
            batch = next(batches)
            t_data = time.perf_counter() - t0
            subset = subsets[rng.choice(len(subsets), p=probabilities)]
            if step < budget.modality_warmup_steps and CTPET in subsets:
                subset = CTPET
            ct, pet = (plain(t, device) for t in split_inputs(batch, subset))
            label = plain(batch["label"], device).long()
            with autocast(device, amp):
                logits = model(ct, pet)
            loss = loss_fn(logits.float(), label)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at step {step} ({subset} batch)"
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            losses.append(loss.item())
            if step >= warmup_steps:
                timed_seconds += time.perf_counter() - t0
                data_seconds += t_data
                timed_samples += label.shape[0]
            if on_step:
                on_step(step, losses[-1])
    tail = losses[-max(1, steps // 10) :]
    return TrainStats(
        steps=steps,
        seconds=timed_seconds,
        samples_per_s=timed_samples / timed_seconds if timed_seconds > 0 else float("nan"),
        data_wait_share=data_seconds / timed_seconds if timed_seconds > 0 else float("nan"),
        peak_memory_mb=memory.peak_mb,
        first_loss=losses[0],
        final_loss=float(np.mean(tail)),
    )
