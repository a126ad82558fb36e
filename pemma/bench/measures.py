"""Throughput and memory of every method, measured side by side in one process on random data.

No pretraining and no cohort: the numbers are about the compute cost of each method's model and
trainable set, so a randomly initialised CT base does. Ratios are against the reference method
(early fusion), measured in the same run.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from pemma.config import RunConfig
from pemma.methods import METHODS, build_method, reference_method
from pemma.metrics.params import count_parameters
from pemma.modalities import split_inputs
from pemma.models.backbones import BACKBONES
from pemma.tasks.segmentation.evaluation import evaluate
from pemma.training.loop import dtype_name, train


class RandomVolumes(torch.utils.data.Dataset):
    """Volumes of random CT / PET with a labelled cube of each class; `shape` per channel."""

    def __init__(self, n: int, shape: tuple[int, int, int], seed: int = 0) -> None:
        self.n, self.shape, self.seed = n, shape, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed + i)
        label = torch.zeros(1, *self.shape, dtype=torch.uint8)
        d = [s // 4 for s in self.shape]
        label[0, d[0] : 2 * d[0], d[1] : 2 * d[1], d[2] : 2 * d[2]] = 1
        label[0, 2 * d[0] : 3 * d[0], 2 * d[1] : 3 * d[1], 2 * d[2] : 3 * d[2]] = 2
        return {
            "ct": torch.rand(1, *self.shape, generator=g),
            "pet": torch.randn(1, *self.shape, generator=g),
            "label": label,
        }


def throughput(
    cfg: RunConfig, methods: list[str], steps: int, device: torch.device, volumes: int = 2
) -> pd.DataFrame:
    torch.manual_seed(cfg.seed)
    base = BACKBONES.get(cfg.backbone).build(cfg.model, 1)
    crops = RandomVolumes(max(cfg.train.batch_size, 2), cfg.model.roi)
    whole = RandomVolumes(volumes, tuple(int(r * 1.5) for r in cfg.model.roi), seed=100)
    rows = []
    for name in methods:
        method = METHODS.get(name)()
        built = build_method(name, cfg, base)
        total, trainable = count_parameters(built.model)
        subsets, probabilities = method.train_schedule(cfg)
        t0 = time.perf_counter()
        budget = replace(cfg.train, steps=steps + cfg.train.warmup_steps, lr=1e-4, weight_decay=0.0)
        stats = train(
            built.model,
            crops,
            budget,
            subsets=subsets[:1],
            probabilities=(1.0,),
            seed=cfg.seed,
            device=device,
        )
        subset = method.inputs()[0]
        result = evaluate(built.model, whole, (subset,), cfg.model.roi, cfg.eval, device, cfg.train.amp)[
            subset
        ]
        rows.append(
            {
                "method": name,
                "backbone": cfg.backbone,
                "train subset": subsets[0],
                "params total": total,
                "params trainable": trainable,
                "train samples/s": stats.samples_per_s,
                "train peak MB": stats.peak_memory_mb,
                "infer volumes/s": result.volumes_per_s,
                "wall s": time.perf_counter() - t0,
            }
        )
        del built
        if device.type == "cuda":
            torch.cuda.empty_cache()
    table = pd.DataFrame(rows)
    reference = reference_method("parameters")
    if reference in set(table["method"]):
        ref = table[table["method"] == reference].iloc[0]
        table[f"trainable % of {reference}"] = 100 * table["params trainable"] / ref["params trainable"]
        table[f"step speed vs {reference}"] = table["train samples/s"] / ref["train samples/s"]
        table[f"memory vs {reference}"] = table["train peak MB"] / ref["train peak MB"]
    table.attrs["device"] = str(device)
    table.attrs["dtype"] = dtype_name(device, cfg.train.amp)
    return table


def data_cache(
    cfg: RunConfig, loaded, cold_cache: Path, device: torch.device, steps: int = 20
) -> pd.DataFrame:
    """Epoch time with a cold preprocessing cache vs a warm one, and the share of a step spent on data."""
    from pemma.data.datasets import CohortData
    from pemma.tasks.segmentation.task import KEYS

    data = CohortData(cfg.data, loaded.data.fingerprint, cold_cache)
    cases = loaded.plan.adapt["train"]
    crops = data.crops(cases, KEYS, cfg.model.roi, seed=cfg.seed)
    epochs = []
    for _ in range(2):
        t0 = time.perf_counter()
        for i in range(len(crops)):
            crops[i]
        epochs.append(time.perf_counter() - t0)
    torch.manual_seed(cfg.seed)
    base = BACKBONES.get(cfg.backbone).build(cfg.model, 1)
    method = METHODS.get(cfg.method)()
    built = build_method(cfg.method, cfg, base)
    subsets, probabilities = method.train_schedule(cfg)
    budget = replace(cfg.train, steps=steps + cfg.train.warmup_steps)
    stats = train(
        built.model, crops, budget, subsets=subsets, probabilities=probabilities, seed=cfg.seed, device=device
    )
    return pd.DataFrame(
        [
            {
                "cases": len(cases),
                "epoch 1 s (cold cache)": epochs[0],
                "epoch 2 s (warm cache)": epochs[1],
                "speed-up": epochs[0] / epochs[1],
                "method": cfg.method,
                "data wait share of a step": stats.data_wait_share,
                "train samples/s": stats.samples_per_s,
            }
        ]
    )


def merged_inference(
    cfg: RunConfig, methods: list[str], device: torch.device, volumes: int = 2
) -> pd.DataFrame:
    """Sliding-window inference with adapters as trained (unmerged) and folded into the base (merged).

    Each method trains two steps on random crops first so its adapters are not at their zero start;
    the largest logit difference between the two forms is reported next to their speeds.
    """
    import copy

    from pemma.models.adapters import merge_adapters

    torch.manual_seed(cfg.seed)
    base = BACKBONES.get(cfg.backbone).build(cfg.model, 1)
    crops = RandomVolumes(max(cfg.train.batch_size, 2), cfg.model.roi)
    whole = RandomVolumes(volumes, tuple(int(r * 1.5) for r in cfg.model.roi), seed=100)
    probe = {k: v.unsqueeze(0).to(device) for k, v in crops[0].items() if k != "label"}
    rows = []
    for name in methods:
        method = METHODS.get(name)()
        built = build_method(name, cfg, base)
        budget = replace(cfg.train, steps=2, lr=1e-2, weight_decay=0.0, warmup_steps=0)
        subset = method.inputs()[0]
        train(
            built.model, crops, budget, subsets=(subset,), probabilities=(1.0,), seed=cfg.seed, device=device
        )
        merged = copy.deepcopy(built.model)
        folded = merge_adapters(merged)
        if not folded["adapters"]:
            continue
        speeds, logits = {}, {}
        for form, model in (("unmerged", built.model), ("merged", merged)):
            warm = torch.utils.data.Subset(whole, [0])  # first-call costs (kernel choice) are not timed
            evaluate(model, warm, (subset,), cfg.model.roi, cfg.eval, device, cfg.train.amp)
            result = evaluate(model, whole, (subset,), cfg.model.roi, cfg.eval, device, cfg.train.amp)
            speeds[form] = result[subset].volumes_per_s
            with torch.inference_mode():
                logits[form] = model.eval()(*split_inputs(probe, subset)).float()
        rows.append(
            {
                "method": name,
                "backbone": cfg.backbone,
                "adapters folded": folded["adapters"],
                "infer vol/s unmerged": speeds["unmerged"],
                "infer vol/s merged": speeds["merged"],
                "merged speed-up": speeds["merged"] / speeds["unmerged"],
                "max |logit diff|": f"{(logits['merged'] - logits['unmerged']).abs().max().item():.1e}",
            }
        )
        del built, merged
    return pd.DataFrame(rows)


def parameter_table(cfg: RunConfig, methods: list[str]) -> pd.DataFrame:
    """Total and trainable parameters, share of early fusion's, and the size of what each method saves.

    No training: models are built with a random CT base. The saved size is the safetensors file of
    the trainable parameters, which is what a method needs to ship on top of the CT base.
    """
    from safetensors.torch import save

    from pemma.models.portable import trained_state

    torch.manual_seed(cfg.seed)
    base = BACKBONES.get(cfg.backbone).build(cfg.model, 1)
    rows = []
    for name in methods:
        built = build_method(name, cfg, base)
        total, trainable = count_parameters(built.model)
        state = trained_state(built.model, built.trained)
        rows.append(
            {
                "method": name,
                "backbone": cfg.backbone,
                "params total": total,
                "params trainable": trainable,
                "saved MB": len(save(state)) / 2**20,
                "adapted modules": len(built.adapted_modules),
            }
        )
        del built
    table = pd.DataFrame(rows)
    reference = reference_method("parameters")
    ref = table.loc[table["method"] == reference, "params trainable"]
    if not ref.empty:
        table.insert(4, f"trainable % of {reference}", 100 * table["params trainable"] / ref.iloc[0])
    return table
