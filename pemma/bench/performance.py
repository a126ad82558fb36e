"""What the harness costs against plain PyTorch, and what its speed and memory options buy.

Every figure is a ratio of two measurements taken in one process, side by side, so machine drift
cancels: alternating rounds, the best round of each kind kept; `overhead` interleaves single steps.

- `overhead`: the harness's training loop (its cached data, its loop with checkpoints, progress
  callback, autocast) against a bare step written here (same model, crops already in memory), one
  step of each in turn, with a bootstrap interval over the pairs.
- `public_reference`: this harness's defaults against the public PEMMA code's way of training (fp32,
  eager, MONAI's manual attention, MetaTensors through the network, data read and preprocessed on
  every step), same model and batch.
- `memory_options`: peak memory and step time of each method with activation checkpointing and
  frozen bf16 weights, against full fine-tuning with neither.
- `compile_speed`: torch.compile's compile time, steady-state speed-up and output difference.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.data import list_data_collate
from monai.losses import DiceCELoss

from pemma.bench.measures import RandomVolumes
from pemma.config import RunConfig
from pemma.methods import METHODS, build_method, reference_method
from pemma.modalities import CTPET, split_inputs
from pemma.models.backbones import BACKBONES
from pemma.training.loop import autocast, castable_frozen, dtype_name, plain, train

MEMORY_OPTIONS = {
    "plain": {},
    "activation checkpointing": {"activation_checkpointing": True},
    "frozen bf16": {"frozen_bf16": True},
    "both": {"activation_checkpointing": True, "frozen_bf16": True},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(cfg: RunConfig, method: str, public: bool = False) -> torch.nn.Module:
    """The method's model at `cfg`'s sizes; `public`: as the public code builds it (MONAI's manual
    attention, NCDHW convolutions)."""
    torch.manual_seed(cfg.seed)
    model_cfg = replace(cfg.model, sdpa=False, channels_last=False) if public else cfg.model
    base = BACKBONES.get(cfg.backbone).build(model_cfg, 1)
    return build_method(method, replace(cfg, model=model_cfg), base).model


def _batches(dataset, batch_size: int, n: int, device: torch.device, keep_meta: bool = False) -> list:
    """`n` collated batches of CT+PET crops, drawn in order from `dataset` and held in memory."""
    out = []
    for i in range(n):
        batch = list_data_collate([dataset[(i * batch_size + j) % len(dataset)] for j in range(batch_size)])
        move = (lambda t: t.to(device)) if keep_meta else (lambda t: plain(t, device))
        ct, pet = (move(t) for t in split_inputs(batch, CTPET))
        out.append((ct, pet, move(batch["label"]).long()))
    return out


class BareStep:
    """The training step with nothing around it: forward, loss, backward, optimiser step on batches
    already in memory; no sync unless asked (`sync=True`: the step has finished on the device when
    the call returns, so it can be timed alone)."""

    def __init__(self, model: torch.nn.Module, cfg: RunConfig, device: torch.device, amp: bool) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimiser = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        weight = torch.tensor(cfg.train.class_weights, dtype=torch.float32, device=device)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, weight=weight)
        self.model, self.device, self.amp = model.to(device).train(), device, amp

    def __call__(self, ct: torch.Tensor, pet: torch.Tensor, label: torch.Tensor, sync: bool = False) -> None:
        with autocast(self.device, self.amp):
            logits = self.model(ct, pet)
        loss = self.loss_fn(logits.float(), label)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        if sync:
            _sync(self.device)


def bare_loop(
    model: torch.nn.Module,
    batches: list,
    cfg: RunConfig,
    device: torch.device,
    amp: bool,
    times: dict[str, float] | None = None,
) -> float:
    """The bare training step over all `batches`: seconds, one sync at the end. `times`, if given,
    receives `steady`: the seconds of the steps after the first `cfg.train.warmup_steps` (the span
    the harness's own step timing covers; one more sync there)."""
    step = BareStep(model, cfg, device, amp)
    warmup = cfg.train.warmup_steps if times is not None else -1
    _sync(device)
    t0 = t_steady = time.perf_counter()
    for i, batch in enumerate(batches):
        if i == warmup:
            _sync(device)
            t_steady = time.perf_counter()
        step(*batch)
    _sync(device)
    end = time.perf_counter()
    if times is not None:
        times["steady"] = end - t_steady
    return end - t0


def _progress_line(step: int, steps: int, loss: float) -> str:
    """What the CLI's progress bar shows after each step: the per-step work a callback adds."""
    return f"step {step + 1}/{steps} loss {loss:.3f}"


def _harness(
    model: torch.nn.Module,
    dataset,
    cfg: RunConfig,
    steps: int,
    device: torch.device,
    on_step: Callable[[int, float], None] | None = None,
    **options,
) -> tuple[float, object]:
    """Wall seconds of the harness's `train` over `steps` CT+PET steps (checkpoints as configured, a
    progress callback: `on_step`, or one that formats a progress line as the CLI's bar does), and
    its stats."""
    shown: list[str] = []

    def progress(step: int, loss: float) -> None:
        shown[:] = [_progress_line(step, steps, loss)]

    budget = replace(cfg.train, steps=steps, **options)
    with tempfile.TemporaryDirectory() as folder:
        _sync(device)
        t0 = time.perf_counter()
        stats = train(
            model,
            dataset,
            budget,
            subsets=(CTPET,),
            probabilities=(1.0,),
            seed=cfg.seed,
            device=device,
            on_step=on_step or progress,
            checkpoint=Path(folder) / "train.pt",
        )
        _sync(device)
        return time.perf_counter() - t0, stats


def _alternate(rounds: int, contenders: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Each contender's best (lowest) seconds over `rounds`, the contenders run in turn each round."""
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(rounds):
        for name, run in contenders.items():
            best[name] = min(best[name], run())
    return best


def _ratio_interval(ours: np.ndarray, bare: np.ndarray) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of sum(ours) / sum(bare) over paired steps (pairs
    resampled together); NaN with fewer than two pairs."""
    from scipy.stats import bootstrap

    if len(ours) < 2:
        return float("nan"), float("nan")
    found = bootstrap(
        (ours, bare),
        lambda h, b, axis: h.sum(axis=axis) / b.sum(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=4999,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    return found.low, found.high


class _Interleaved:
    """The harness's progress callback (a progress line, as the CLI's bar makes) that then runs one
    bare step on the batch of the same number and records when it began and ended."""

    def __init__(self, step: BareStep, batches: list) -> None:
        self.step, self.batches = step, batches
        self.spans: list[tuple[float, float]] = []
        self.shown = ""

    def __call__(self, i: int, loss: float) -> None:
        self.shown = _progress_line(i, len(self.batches), loss)
        enter = time.perf_counter()
        self.step(*self.batches[i], sync=True)
        self.spans.append((enter, time.perf_counter()))


def overhead(cfg: RunConfig, crops, device: torch.device, steps: int, rounds: int = 2) -> pd.DataFrame:
    """The harness's training steps against bare steps of the same model, interleaved one for one.

    Each round runs the harness's `train` for its warm-up and then `steps` CT+PET steps (crops from
    its cache, its loop with resumable checkpoints, a progress callback) and, from inside that
    callback, one bare step (`BareStep`) of a second copy of the same initial model on a batch drawn
    beforehand from the same cache: harness step, bare step, harness step... The two steps of a pair
    run within a fraction of a second of each other, so the machine's drift (on a shared 2-core
    machine, +-10% over seconds to minutes) cancels in each pair, where alternating whole loops left
    it in. A harness step is the span between two callbacks less the bare step inside: its data, its
    step, its bookkeeping, the progress line. The pairs after `train.warmup_steps` (at least one
    step: the first one's start is not seen by the callbacks) count, pooled over rounds: per-step
    overhead = sum of harness steps / sum of bare steps - 1, with a 95% bootstrap interval over
    pairs. Both sides end every step synced (the harness reads its loss; the bare step to be timed
    alone), so on CUDA the figure leaves out the overlap of a step's launch with the previous step's
    kernels that a loop that never syncs would get. The whole call's overhead adds the harness's
    setup and final checkpoint (`fixed s`).
    """
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    first = max(cfg.train.warmup_steps, 1)
    total = first + steps  # harness steps a round: `steps` of them paired
    initial = _model(cfg, cfg.method)
    batches = _batches(crops, cfg.train.batch_size, total, device)
    ours: list[float] = []  # steady harness steps, every round's, in order
    bare: list[float] = []  # the bare step paired with each
    rounds_of: list[int] = []
    calls, bare_total, fixed, waited, timed = 0.0, 0.0, [], 0.0, 0.0
    for number in range(rounds):
        paired = _Interleaved(BareStep(copy.deepcopy(initial), cfg, device, cfg.train.amp), batches)
        seconds, stats = _harness(copy.deepcopy(initial), crops, cfg, total, device, on_step=paired)
        spans = paired.spans
        callbacks = sum(end - enter for enter, end in spans)
        ours_round = [spans[i][0] - spans[i - 1][1] for i in range(first, total)]
        ours += ours_round
        bare += [end - enter for enter, end in spans[first:]]
        rounds_of += [number] * len(ours_round)
        calls += seconds - callbacks
        bare_total += callbacks
        fixed.append(seconds - callbacks - total * float(np.mean(ours_round)))
        waited += stats.data_wait_share * stats.seconds
        timed += stats.seconds
    h, b = np.array(ours), np.array(bare)
    low, high = _ratio_interval(h, b)
    table = pd.DataFrame(
        [
            {
                "method": cfg.method,
                "backbone": cfg.backbone,
                "steps": steps,
                "rounds": rounds,
                "pairs": len(h),
                "batch": cfg.train.batch_size,
                "dtype": dtype_name(device, cfg.train.amp),
                "bare ms/step": 1000 * b.mean(),
                "harness ms/step": 1000 * h.mean(),
                "excess ms/step": 1000 * (h.mean() - b.mean()),
                "per-step overhead %": 100 * (h.sum() / b.sum() - 1),
                "95% CI low %": 100 * (low - 1),
                "95% CI high %": 100 * (high - 1),
                "median paired overhead %": 100 * (float(np.median(h / b)) - 1),
                "whole-call overhead %": 100 * (calls / bare_total - 1),
                "fixed s": float(np.mean(fixed)),
                "data wait share": waited / timed if timed > 0 else float("nan"),
            }
        ]
    )
    # every pair, for a look at their spread and drift (logged beside the table)
    table.attrs["detail"] = pd.DataFrame(
        {
            "round": rounds_of,
            "step": [first + i % steps for i in range(len(h))],
            "harness ms": 1000 * h,
            "bare ms": 1000 * b,
        }
    )
    return table


def public_reference(
    cfg: RunConfig, fresh, crops, device: torch.device, steps: int, rounds: int = 2
) -> pd.DataFrame:
    """The public PEMMA code's configuration against this harness's defaults, same model and batch.

    Public: fp32, eager, MONAI's manual attention (no SDPA), NCDHW convolutions, MetaTensors kept
    through the network, every crop read from its files and preprocessed on the step that uses it.
    Harness: its loop on cached crops with plain tensors, SDPA, channels-last convolutions, and bf16
    autocast where the device has it (CUDA). Both train CT+PET steps from the same initial weights;
    Dice is the task's concern (`pemma-bench run --set model.sdpa=false --set
    model.channels_last=false --set train.amp=false` trains the public configuration end to end).
    """
    public_model = _model(cfg, cfg.method, public=True)
    harness_model = _model(cfg, cfg.method)

    def public() -> float:
        model = copy.deepcopy(public_model).to(device)
        t0 = time.perf_counter()
        batches = _batches(fresh, cfg.train.batch_size, steps, device, keep_meta=True)
        return time.perf_counter() - t0 + bare_loop(model, batches, cfg, device, amp=False)

    def harness() -> float:
        return _harness(copy.deepcopy(harness_model), crops, cfg, steps, device)[0]

    best = _alternate(rounds, {"public": public, "harness": harness})
    samples = steps * cfg.train.batch_size
    return pd.DataFrame(
        [
            {
                "configuration": "public PEMMA code",
                "dtype": "fp32",
                "attention": "manual",
                "layout": "NCDHW",
                "tensors": "MetaTensor",
                "data": "preprocessed every step",
                "samples/s": samples / best["public"],
                "speed-up": 1.0,
            },
            {
                "configuration": "pemma-bench",
                "dtype": dtype_name(device, cfg.train.amp),
                "attention": "SDPA",
                "layout": "channels-last" if cfg.model.channels_last else "NCDHW",
                "tensors": "plain",
                "data": "cached",
                "samples/s": samples / best["harness"],
                "speed-up": best["public"] / best["harness"],
            },
        ]
    )


def _weights_mb(model: torch.nn.Module, frozen_bf16: bool) -> float:
    """Bytes of the parameters as stored while training, in MiB."""
    halved = {id(p) for p in castable_frozen(model)} if frozen_bf16 else set()
    total = sum(p.numel() * (2 if id(p) in halved else p.element_size()) for p in model.parameters())
    return total / 2**20


def memory_options(
    cfg: RunConfig, methods: list[str], device: torch.device, steps: int, options: list[str] | None = None
) -> pd.DataFrame:
    """Peak training memory and step time per method and memory option, on random crops.

    Peak memory counts the weights as stored while training (on CUDA the allocator's peak holds
    them; on CPU the sampled growth of the anonymous resident set is added to their size),
    activations, gradients and optimiser state. Ratios are against full fine-tuning with no option, same run.
    """
    crops = RandomVolumes(max(cfg.train.batch_size, 2), cfg.model.roi)
    rows = []
    for name in methods:
        METHODS.get(name)  # an unknown name fails before any training
        initial = _model(cfg, name)
        for option in options or list(MEMORY_OPTIONS):
            settings = MEMORY_OPTIONS[option]
            model = copy.deepcopy(initial)
            budget = replace(cfg.train, steps=steps + cfg.train.warmup_steps, checkpoint_every=0, **settings)
            stats = train(
                model, crops, budget, subsets=(CTPET,), probabilities=(1.0,), seed=cfg.seed, device=device
            )
            weights = _weights_mb(model, settings.get("frozen_bf16", False))
            rows.append(
                {
                    "method": name,
                    "option": option,
                    "weights MB": weights,
                    "peak MB": stats.peak_memory_mb + (weights if device.type != "cuda" else 0.0),
                    "ms/step": 1000 * cfg.train.batch_size / stats.samples_per_s,
                }
            )
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    table = pd.DataFrame(rows)
    reference = reference_method("memory")
    ref = table[(table["method"] == reference) & (table["option"] == "plain")]
    if not ref.empty:
        table[f"memory vs {reference}"] = table["peak MB"] / ref["peak MB"].iloc[0]
        table[f"step time vs {reference}"] = table["ms/step"] / ref["ms/step"].iloc[0]
    table.attrs["device"] = str(device)
    return table


def layout_speed(
    cfg: RunConfig, methods: list[str], device: torch.device, steps: int, rounds: int = 2
) -> pd.DataFrame:
    """Training step time with the 3D convolutions channels-last (`model.channels_last`, the default)
    against NCDHW, per method: same weights, the same random CT+PET crops, alternating rounds (the
    steps after `train.warmup_steps` are timed; the best round of each layout counts)."""
    from pemma.models.networks import set_memory_format

    crops = RandomVolumes(max(cfg.train.batch_size, 2), cfg.model.roi)
    batches = _batches(crops, cfg.train.batch_size, steps + cfg.train.warmup_steps, device)
    rows = []
    for name in methods:
        METHODS.get(name)  # an unknown name fails before any training
        initial = _model(cfg, name)

        def timed(channels_last: bool, initial: torch.nn.Module = initial) -> float:
            model = copy.deepcopy(initial)
            set_memory_format(model, channels_last)
            times: dict[str, float] = {}
            bare_loop(model, batches, cfg, device, cfg.train.amp, times)
            return times["steady"]

        best = _alternate(rounds, {"NCDHW": lambda: timed(False), "channels-last": lambda: timed(True)})
        ms = {layout: 1000 * seconds / steps for layout, seconds in best.items()}
        rows.append(
            {
                "method": name,
                "NCDHW ms/step": ms["NCDHW"],
                "channels-last ms/step": ms["channels-last"],
                "speed-up": ms["NCDHW"] / ms["channels-last"],
            }
        )
    table = pd.DataFrame(rows)
    table.attrs["device"] = str(device)
    return table


def compile_speed(cfg: RunConfig, device: torch.device, steps: int) -> pd.DataFrame:
    """Eager against torch.compile for one method: compile seconds, steady step times, the steps a
    compile takes to pay for itself (against the profile's step budget), and the largest logit
    difference on one CT+PET crop from the same weights (eval mode)."""
    initial = _model(cfg, cfg.method)
    crops = RandomVolumes(max(cfg.train.batch_size, 2), cfg.model.roi)
    warm = max(cfg.train.warmup_steps, 2)
    runs = {}
    for form, compiled in (("eager", False), ("compiled", True)):
        model = copy.deepcopy(initial)
        budget = replace(
            cfg.train, steps=steps + warm, warmup_steps=warm, checkpoint_every=0, compile=compiled
        )
        _sync(device)
        t0 = time.perf_counter()
        stats = train(
            model, crops, budget, subsets=(CTPET,), probabilities=(1.0,), seed=cfg.seed, device=device
        )
        _sync(device)
        runs[form] = (time.perf_counter() - t0, stats.seconds / steps)
    (wall_e, step_e), (wall_c, step_c) = runs["eager"], runs["compiled"]
    total = steps + warm
    compile_s = (wall_c - total * step_c) - (wall_e - total * step_e)
    gain = step_e - step_c
    probe = {k: v.unsqueeze(0).to(device) for k, v in crops[0].items() if k != "label"}
    model = copy.deepcopy(initial).to(device).eval()
    with torch.no_grad(), autocast(device, cfg.train.amp):
        eager_logits = model(*split_inputs(probe, CTPET)).float()
        compiled_logits = torch.compile(model)(*split_inputs(probe, CTPET)).float()
    return pd.DataFrame(
        [
            {
                "method": cfg.method,
                "backbone": cfg.backbone,
                "dtype": dtype_name(device, cfg.train.amp),
                "compile s": compile_s,
                "eager ms/step": 1000 * step_e,
                "compiled ms/step": 1000 * step_c,
                "speed-up": step_e / step_c,
                "break-even steps": compile_s / gain if gain > 0 else float("inf"),
                "unit steps": cfg.train.steps,
                "max |logit diff|": (compiled_logits - eager_logits).abs().max().item(),
                "logit scale": eager_logits.abs().max().item(),
            }
        ]
    )
