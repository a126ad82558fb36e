"""The training loop of segmentation (every method, the CT pretraining too), and the resumable
checkpoint both it and prognosis's Cox loop (tasks/prognosis/cox.py) save and load.

Resumable: given a checkpoint path, the loop saves everything a rerun needs to continue as if it had
never stopped (trainable weights and buffers, optimiser, step, losses, every random stream: torch,
CUDA, NumPy, Python, the modality draw, each random transform of the data pipeline, and the data
loader's shuffle and position in its epoch) every `checkpoint_every` steps and at the end. A rerun
with the same path continues from it; a finished one is loaded instead of retrained.

With `train.augment_seeding: sample`, the epoch's order and every crop's random draws are functions of
(seed, epoch, position): loader worker processes (`train.loader_workers`) prepare crops ahead of the
step and the batches are the same for any number of them; the data position is then one count.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset, get_track_meta, list_data_collate, set_track_meta
from monai.losses import DiceCELoss
from monai.transforms import Randomizable, Transform
from torch.utils.data import BatchSampler, RandomSampler, Sampler

from pemma.config import TrainConfig
from pemma.files import CorruptFile, discard, load_state, save_state
from pemma.modalities import CTPET, split_inputs
from pemma.models.networks import set_activation_checkpointing
from pemma.training.memory import PeakMemory

log = logging.getLogger(__name__)
CHECKPOINT_VERSION = 1


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


def autocast(device: torch.device, enabled: bool, cpu: bool = False):
    """bf16 autocast on CUDA; plain fp32 elsewhere unless `cpu` asks for bf16 autocast there too."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    if cpu and device.type == "cpu":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def dtype_name(device: torch.device, amp: bool, cpu: bool = False) -> str:
    return "bf16-autocast" if (amp and device.type == "cuda") or (cpu and device.type == "cpu") else "fp32"


_NORMS = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._NormBase)


def castable_frozen(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The frozen floating-point parameters that `frozen_bf16` stores in bf16: all but those of
    normalisation layers, which stay fp32 (CPU autocast runs layer norm on fp32 inputs, and their
    weights are a rounding error of the model's size)."""
    found: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, _NORMS):
            continue
        for param in module.parameters(recurse=False):
            if not param.requires_grad and param.is_floating_point():
                found.setdefault(id(param), param)
    return list(found.values())


def cast_frozen(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store the castable frozen parameters (`castable_frozen`) in `dtype`; returns how many values
    changed dtype."""
    count = 0
    for param in castable_frozen(model):
        if param.dtype != dtype:
            param.data = param.data.to(dtype)
            count += param.numel()
    return count


@contextlib.contextmanager
def memory_options(model: torch.nn.Module, budget: TrainConfig):
    """The budget's memory options applied for the span of a training stage and undone after it:
    activation checkpointing off again; frozen weights back in fp32 (holding their bf16-rounded
    values, as trained with)."""
    set_activation_checkpointing(model, budget.activation_checkpointing)
    if budget.frozen_bf16:
        cast_frozen(model, torch.bfloat16)
    try:
        yield
    finally:
        set_activation_checkpointing(model, False)
        if budget.frozen_bf16:
            cast_frozen(model, torch.float32)


def plain(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """A plain tensor on `device`: MONAI's MetaTensor costs a Python hook on every op in the network."""
    return None if t is None else t.as_subclass(torch.Tensor).to(device, non_blocking=True)


class SkippingBatchSampler(BatchSampler):
    """Batches of a seeded shuffle whose first `skip` batches of the next epoch are passed over
    without loading their data (how a resumed loop finds its place in an epoch)."""

    skip = 0

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                yield batch


class Batches:
    """An endless stream of batches, epoch after epoch, whose position can be saved and restored."""

    def __init__(self, dataset: Dataset, batch_size: int, generator: torch.Generator) -> None:
        self.generator = generator
        self.sampler = SkippingBatchSampler(
            RandomSampler(dataset, generator=generator), batch_size, drop_last=len(dataset) >= batch_size
        )
        # The same sampler and collation DataLoader(shuffle=True, generator=...) would build.
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, generator=generator, num_workers=0)
        self.epoch_start: torch.Tensor | None = None
        self.position = 0
        self._batches = None

    def __next__(self) -> dict:
        while True:
            if self._batches is None:
                self.epoch_start = self.generator.get_state()
                self._batches = iter(self.loader)
            try:
                batch = next(self._batches)
            except StopIteration:
                self._batches, self.position = None, 0
                continue
            self.position += 1
            return batch

    def state(self) -> dict[str, Any]:
        return {"epoch_start": self.epoch_start, "position": self.position}

    def close(self) -> None:
        """Nothing to stop: batches are read in this process."""

    def restore(self, state: dict[str, Any]) -> None:
        if state["epoch_start"] is None:
            return
        self.generator.set_state(state["epoch_start"])
        self.sampler.skip = self.position = state["position"]
        self.epoch_start = state["epoch_start"]
        self._batches = iter(self.loader)


def sample_seed(seed: int, epoch: int, kind: int, index: int) -> int:
    """A 32-bit seed that is a function of (run seed, epoch, kind, index) alone: kind 0 seeds the
    epoch's order, kind 1 the random transforms of the crop at `index` in the epoch."""
    return int(np.random.SeedSequence([seed, epoch, kind, index]).generate_state(1)[0])


class PerSample(torch.utils.data.Dataset):
    """A dataset read by (index, seed): its pipeline's random transforms (a MONAI Compose, itself
    Randomizable) are seeded with `seed` just before item `index` passes through them, in whichever
    process reads it."""

    def __init__(self, dataset: Dataset) -> None:
        from pemma.data.transforms import Reseeder

        self.dataset = dataset
        transform = getattr(dataset, "transform", None)  # (a dataset without one draws nothing)
        self.reseed = Reseeder(transform) if isinstance(transform, Randomizable) else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, pair: tuple[int, int]) -> dict:
        index, seed = pair
        if self.reseed is not None:
            self.reseed(seed)
        # The crops end as plain tensors: MONAI's MetaTensor bookkeeping on the way costs half of a
        # crop's time and changes no value (the cache holds plain tensors; the working affine is an
        # item key).
        before = get_track_meta()
        set_track_meta(False)
        try:
            return self.dataset[index]
        finally:
            set_track_meta(before)


class _SeededSampler(Sampler):
    """Endless batches of (index, seed) pairs from batch number `start` on, epoch after epoch."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        drop_last = size >= batch_size
        self.per_epoch = size // batch_size if drop_last else math.ceil(size / batch_size)
        self.start = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        number = self.start
        while True:
            epoch, skip = divmod(number, self.per_epoch)
            order = torch.randperm(
                self.size, generator=torch.Generator().manual_seed(sample_seed(self.seed, epoch, 0, 0))
            ).tolist()
            for position in range(skip, self.per_epoch):
                first = position * self.batch_size
                yield [
                    (order[i], sample_seed(self.seed, epoch, 1, i))
                    for i in range(first, min(first + self.batch_size, self.size))
                ]
            number = (epoch + 1) * self.per_epoch


class SeededBatches:
    """An endless stream of batches whose order and augmentation depend on (seed, epoch, position)
    only, prepared by `workers` loader processes (0: here); its state is how many were taken."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, workers: int, pin_memory: bool) -> None:
        self.sampler = _SeededSampler(len(dataset), batch_size, seed)
        # torch's loader with MONAI's collation: MONAI's own loader reseeds the global torch generator
        self.loader = torch.utils.data.DataLoader(
            PerSample(dataset),
            batch_sampler=self.sampler,
            collate_fn=list_data_collate,
            num_workers=workers,
            pin_memory=pin_memory,
            prefetch_factor=2 if workers else None,
            # its own generator: a new iterator's base seed must not be drawn from the global stream
            generator=torch.Generator().manual_seed(seed),
        )
        self.taken = 0
        self._batches: Iterator[dict] | None = None

    def __next__(self) -> dict:
        if self._batches is None:
            self.sampler.start = self.taken
            self._batches = iter(self.loader)
        batch = next(self._batches)
        self.taken += 1
        return batch

    def state(self) -> dict[str, Any]:
        return {"taken": self.taken}

    def restore(self, state: dict[str, Any]) -> None:
        self.close()
        self.taken = state["taken"]

    def close(self) -> None:
        """Stop the loader's worker processes (the next batch starts them again)."""
        self._batches = None


def _transform_streams(dataset: Dataset) -> list[np.random.RandomState]:
    """The random streams of every random transform in a dataset's pipeline, in a stable order."""
    found: dict[int, np.random.RandomState] = {}

    def visit(obj: Any) -> None:
        if isinstance(obj, list | tuple):
            for item in obj:
                visit(item)
        elif isinstance(obj, Transform | Randomizable):
            if isinstance(obj, Randomizable):
                found.setdefault(id(obj.R), obj.R)
            for value in vars(obj).values():
                visit(value)

    visit(getattr(dataset, "transform", None))
    return list(found.values())


def _numpy_state(state: tuple) -> dict[str, Any]:
    """A legacy NumPy RandomState state as plain values and a tensor (torch.load weights_only)."""
    name, keys, pos, has_gauss, cached = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": pos,
        "gauss": has_gauss,
        "cached": cached,
    }


def _from_numpy_state(s: dict[str, Any]) -> tuple:
    return (s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["gauss"], s["cached"])


def random_state(draw: np.random.Generator | None = None, streams=()) -> dict[str, Any]:
    """Every random stream a training loop draws from: torch (CPU and CUDA), NumPy, Python, and the
    loop's own `draw` generator and transform `streams`, as plain values and tensors."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_state(np.random.get_state()),
        "python": random.getstate(),
        "draw": draw.bit_generator.state if draw is not None else None,
        "transforms": [_numpy_state(r.get_state()) for r in streams],
    }


def restore_random_state(state: dict[str, Any], draw: np.random.Generator | None = None, streams=()) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(_from_numpy_state(state["numpy"]))
    random.setstate(state["python"])
    if draw is not None:
        draw.bit_generator.state = state["draw"]
    for stream, saved in zip(streams, state["transforms"], strict=True):
        stream.set_state(_from_numpy_state(saved))


def _trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: parameters that require grad, and every buffer."""
    state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    state.update({f"buffer:{n}": b.detach().cpu().clone() for n, b in model.named_buffers()})
    return state


def _load_trained_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    names = {n for n in state if not n.startswith("buffer:")}
    if names != set(params):
        raise ValueError(
            f"{path}: checkpoint holds another trainable set ({len(names)} tensors, the model trains "
            f"{len(params)}); delete it to train from the start"
        )
    with torch.no_grad():
        for name, value in state.items():
            target = buffers[name.removeprefix("buffer:")] if name.startswith("buffer:") else params[name]
            target.copy_(value)


class Checkpoint:
    """One training stage's resumable state at `path` (None: the stage does not resume): the trainable
    weights and buffers, the optimiser, the step and whatever the loop adds (its random streams, its
    data position, its losses), saved atomically with a digest. `identity` is the stage's budget: a
    checkpoint of another budget is an error, a damaged one is warned about and the stage starts over.
    Both loops use it: segmentation's `train` and prognosis's `fit_risk_model`."""

    def __init__(
        self, path: Path | None, identity: dict[str, Any], model: torch.nn.Module, optimiser
    ) -> None:
        self.path = None if path is None else Path(path)
        self.identity, self.model, self.optimiser = identity, model, optimiser

    def load(self) -> dict[str, Any] | None:
        """The saved state, its weights and optimiser already put back; None when there is none."""
        if self.path is None or not self.path.exists():
            return None
        try:
            saved = load_state(self.path)
        except CorruptFile as err:
            log.warning("%s; starting this training stage over", err)
            discard(self.path)
            return None
        if saved.get("version") != CHECKPOINT_VERSION or saved.get("identity") != self.identity:
            raise ValueError(
                f"{self.path}: a checkpoint of another training budget ({saved.get('identity')}, this one "
                f"is {self.identity}); delete it to train from the start"
            )
        _load_trained_state(self.model, saved["trained"], self.path)
        self.optimiser.load_state_dict(saved["optimiser"])
        return saved

    def save(self, step: int, **extra: Any) -> None:
        if self.path is None:
            return
        state = {
            "version": CHECKPOINT_VERSION,
            "identity": self.identity,
            "step": step,
            "trained": _trained_state(self.model),
            "optimiser": self.optimiser.state_dict(),
            **extra,
        }
        save_state(state, self.path)


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
    checkpoint: Path | None = None,
) -> TrainStats:
    """Train what requires grad for `budget.steps` steps; `subsets` drawn per batch by `probabilities`.

    With `checkpoint`, resume from it if it exists and save it every `budget.checkpoint_every` steps
    and at the end (the caller removes it when the unit is done).
    """
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
    if budget.augment_seeding == "sample":
        batches = SeededBatches(dataset, batch_size, seed, budget.loader_workers, device.type == "cuda")
        streams = []  # every crop seeds its own draws: nothing to carry from step to step
    else:
        batches = Batches(dataset, batch_size, torch.Generator().manual_seed(seed))
        streams = _transform_streams(dataset)
    rng = np.random.default_rng(seed)
    model.to(device).train()
    losses: list[float] = []
    timed = {"seconds": 0.0, "data_seconds": 0.0, "samples": 0, "peak_mb": 0.0}
    identity = {"steps": steps, "batch_size": batch_size, "subsets": list(subsets), "seed": seed}
    stage = Checkpoint(checkpoint, identity, model, optimiser)
    start = 0
    saved = stage.load()
    if saved is not None:
        batches.restore(saved["batches"])
        restore_random_state(saved["random"], rng, streams)
        losses, timed, start = list(saved["losses"]), dict(saved["timed"]), saved["step"]
        log.info("%s: resuming at step %d of %d", checkpoint, start, steps)

    def save(step: int) -> None:
        stage.save(
            step,
            scaler=None,  # bf16 autocast needs no gradient scaler
            batches=batches.state(),
            random=random_state(rng, streams),
            losses=losses,
            timed=timed,
        )

    every = budget.checkpoint_every
    forward = torch.compile(model) if budget.compile else model
    with memory_options(model, budget), PeakMemory(device) as memory, contextlib.closing(batches):
        for step in range(start, steps):
            t0 = time.perf_counter()
            batch = next(batches)
            t_data = time.perf_counter() - t0
            subset = subsets[rng.choice(len(subsets), p=probabilities)]
            if step < budget.modality_warmup_steps and CTPET in subsets:
                subset = CTPET
            ct, pet = (plain(t, device) for t in split_inputs(batch, subset))
            label = plain(batch["label"], device).long()
            with autocast(device, amp, cpu=budget.frozen_bf16):
                logits = forward(ct, pet)
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
                timed["seconds"] += time.perf_counter() - t0
                timed["data_seconds"] += t_data
                timed["samples"] += label.shape[0]
            if on_step:
                on_step(step, losses[-1])
            if checkpoint is not None and every and (step + 1) % every == 0 and step + 1 < steps:
                timed["peak_mb"] = max(timed["peak_mb"], memory.so_far_mb())
                save(step + 1)
    timed["peak_mb"] = max(timed["peak_mb"], memory.peak_mb)
    if checkpoint is not None and start < steps:
        save(steps)
    tail = losses[-max(1, steps // 10) :]
    seconds = timed["seconds"]
    return TrainStats(
        steps=steps,
        seconds=seconds,
        samples_per_s=timed["samples"] / seconds if seconds > 0 else float("nan"),
        data_wait_share=timed["data_seconds"] / seconds if seconds > 0 else float("nan"),
        peak_memory_mb=timed["peak_mb"],
        first_loss=losses[0],
        final_loss=float(np.mean(tail)),
    )
