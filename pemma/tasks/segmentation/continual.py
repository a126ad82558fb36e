"""Continual stages: after the adaptation centre, train one stage per further centre and score every
centre (seen or not) on every input subset after each stage: the R matrices, ACC, BWT, forgetting."""

from __future__ import annotations

import ast
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pemma.methods import set_trainable
from pemma.metrics.continual import continual_summary
from pemma.modalities import CT, LABELS, SUBSETS
from pemma.tasks.base import Metric, Unit, per_subset

if TYPE_CHECKING:  # the task's declaration (METRICS) loads without torch
    import torch

    from pemma.tasks.segmentation.evaluation import SubsetResult

KEYS = ("ct", "pet", "label")

METRICS = (
    *per_subset("cl/{subset}/acc", "ACC {subset}", True, "mean Dice over all centres after the last stage"),
    *per_subset(
        "cl/{subset}/bwt", "BWT {subset}", True, "mean change of each earlier centre's Dice since its stage"
    ),
    *per_subset(
        "cl/{subset}/forgetting",
        "forgetting {subset}",
        False,
        "mean drop of each earlier centre's Dice from its best",
    ),
    *per_subset(
        "cl/{subset}/R/<stage>/<centre>",
        "R",
        True,
        "aggregated Dice of a centre's test split after a stage (0: the adaptation centre's)",
        column=False,
    ),
    *per_subset(
        "cl/{subset}/undefined_cells",
        "undefined R cells {subset}",
        None,
        "cells of R left out of ACC / BWT / forgetting: the centre's test split lacks a class",
        digits=0,
        column=False,
    ),
    Metric("cl/ct/base/<centre>", "CT base", True, "the unwrapped CT base's Dice on a centre", column=False),
    Metric(
        "cl_final_loss/<stage>",
        "stage final loss",
        None,
        "mean training loss over the last tenth of a continual stage's steps",
        column=False,
    ),
    Metric("cl_stage_steps", "stage steps", None, "training steps per continual stage", 0, column=False),
)


def run_stages(unit: Unit, model: torch.nn.Module, adapted: dict[str, SubsetResult]) -> dict[str, float]:
    """Train through the continual centres; after each stage score every centre (seen or not).

    `adapted` is the unit's own evaluation on the adaptation centre: stage 0's first column.
    """
    from monai.utils import set_determinism

    from pemma.models.fusion import CTOnly
    from pemma.tasks.segmentation.evaluation import evaluate
    from pemma.training.loop import train

    cfg, method, loaded, device = unit.cfg, unit.method, unit.data, unit.device
    centres = (cfg.data.adapt_centre, *cfg.continual.order)
    splits = {cfg.data.adapt_centre: loaded.plan.adapt, **loaded.plan.continual}
    tests = {c: loaded.data.volumes(splits[c]["test"], KEYS) for c in centres}
    subsets = method.inputs()
    r = {s: np.full((len(centres), len(centres)), np.nan) for s in subsets}
    metrics: dict[str, float] = {}

    def score(stage: int) -> None:
        for j, centre in enumerate(centres):
            result = (
                adapted
                if stage == 0 and j == 0
                else evaluate(
                    model,
                    tests[centre],
                    subsets,
                    cfg.model.roi,
                    cfg.eval,
                    device,
                    cfg.train.amp,
                    classes=loaded.data.classes,
                )  # fmt: skip
            )
            for s in subsets:
                r[s][stage, j] = result[s].aggregated["mean"]
                metrics[f"cl/{s}/R/{stage}/{centre}"] = r[s][stage, j]

    if unit.base is not None:  # the unwrapped CT base: the reference row a wrapped model is compared against
        for centre in centres:
            result = evaluate(
                CTOnly(unit.base), tests[centre], (CT,), cfg.model.roi, cfg.eval, device,
                classes=loaded.data.classes,
            )  # fmt: skip
            metrics[f"cl/ct/base/{centre}"] = result[CT].aggregated["mean"]
    score(0)
    set_trainable(model, method.continual_patterns(cfg))
    subset = method.stage_subset(cfg.continual.inputs)
    budget = replace(cfg.train, steps=cfg.continual.steps)
    for stage, centre in enumerate(cfg.continual.order, start=1):
        crops = loaded.data.crops(
            splits[centre]["train"],
            KEYS,
            cfg.model.roi,
            seed=cfg.seed + stage,
            pet_shift=(cfg.train.pet_shift_mm, cfg.train.pet_shift_prob),
        )
        # Every random stream the stage draws from (adapter dropout among them) starts from the stage's
        # seed: a stage's result does not depend on whether stage 0 was trained here or loaded.
        set_determinism(seed=cfg.seed + stage)
        stats = train(
            model,
            crops,
            budget,
            subsets=(subset,),
            probabilities=(1.0,),
            seed=cfg.seed + stage,
            device=device,
            on_step=unit.stage(f"continual stage {centre}", budget.steps),
            checkpoint=unit.checkpoint(f"continual-{stage}-{centre}"),
        )
        metrics[f"cl_final_loss/{stage}"] = stats.final_loss
        score(stage)
    for s in subsets:
        metrics.update({f"cl/{s}/{k}": v for k, v in continual_summary(r[s]).items()})
    metrics["cl_stage_steps"] = budget.steps
    return metrics


def _cell(value: float) -> str:
    return "undefined" if value != value else f"{value:.3f}"


def matrices_markdown(runs: pd.DataFrame) -> str:
    """Markdown of every continual run's R[stage, centre] per input subset (rows: after each stage)."""
    parts = []
    for _, run in runs.iterrows():
        keys = [k for k in run.index if k.startswith("metrics.cl/") and "/R/" in k and run[k] == run[k]]
        if not keys:
            continue
        parts.append(
            f"### {run['tags.run_key']}\n\n'undefined': the centre's test split lacks a class, so its Dice "
            "mean is not defined; ACC / BWT / forgetting leave such cells out.\n"
        )
        for subset in SUBSETS:
            cells = {}
            for k in keys:
                _, s, _, stage, centre = k.removeprefix("metrics.").split("/")
                if s == subset:
                    cells[(int(stage), centre)] = run[k]
            if not cells:
                continue
            centres = [run["params.data.adapt_centre"], *ast.literal_eval(run["params.continual.order"])]
            stages = sorted({st for st, _ in cells})
            lines = [
                f"{LABELS[subset]} input",
                "",
                "| after stage | " + " | ".join(centres) + " |",
                "|---|" + "---:|" * len(centres),
            ]
            for st in stages:
                lines.append(
                    f"| {st} | " + " | ".join(_cell(cells.get((st, c), float("nan"))) for c in centres) + " |"
                )
            parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)
