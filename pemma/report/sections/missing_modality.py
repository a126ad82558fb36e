"""missing-modality: train subset x test subset per method, with the relative drop from CT+PET."""

from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pemma.methods import METHODS
from pemma.modalities import LABELS, SUBSETS
from pemma.report.sections.base import Block, Options, Section, section_kind
from pemma.report.sections.common import (
    CI_NOTE,
    arrow,
    ci,
    dice_interval,
    grouped,
    mark_best,
    mean_std,
    row_label,
    runs_of,
    values_of,
)
from pemma.report.sources import Sources


@dataclass(frozen=True)
class MissingModalityOptions(Options):
    subsets: tuple[str, ...] = SUBSETS


def _train_label(method: str, value) -> str:
    """What the method trained on, from its own schedule (methods without modality dropout ignore it)."""
    from types import SimpleNamespace

    try:
        weights = tuple(float(w) for w in ast.literal_eval(str(value)))
        schedule = METHODS.get(method)().train_schedule(
            SimpleNamespace(train=SimpleNamespace(modality_dropout=weights))
        )
    except (ValueError, SyntaxError, TypeError, KeyError):
        return str(value)
    subsets, probs = schedule
    if len(subsets) == 1:
        return f"{LABELS[subsets[0]]} only"
    return " / ".join(f"{LABELS[s]} {p:g}" for s, p in zip(subsets, probs, strict=True))


@section_kind(
    "missing-modality",
    "train subset x test subset per method, with the relative drop from CT+PET",
    MissingModalityOptions,
)
def missing_modality_table(section: Section, sources: Sources) -> Block:
    opts = section.options
    runs = runs_of(section, sources)
    block = Block(section)
    if runs.empty:
        return block
    dropout = "params.train.modality_dropout"
    labels = (
        [_train_label(m, v) for m, v in zip(runs["tags.method"], runs[dropout], strict=True)]
        if dropout in runs
        else ""
    )
    runs = runs.assign(train=labels)
    rows, means = [], {}
    for (method, backbone, variant), group in grouped(runs, drop=(dropout,)):
        for train, part in group.groupby("train", sort=True):
            row = row_label(method, backbone, variant)
            row["trained on"] = train
            row["seeds"] = str(part["params.seed"].nunique())
            full = part.get("metrics.dice_hecktor/ctpet/mean")
            for subset in opts.subsets:
                title = arrow(f"Dice {LABELS[subset]}", True)
                values = values_of(part, f"dice_hecktor/{subset}/mean")
                interval, _ = dice_interval(sources, section.suite, part, subset, "mean")
                row[title] = mean_std(values) + (ci(interval) if interval and values.size else "")
                means.setdefault(title, []).append(values.mean() if values.size else np.nan)
                if subset != SUBSETS[0] and full is not None:
                    key = f"metrics.dice_hecktor/{subset}/mean"
                    if key in part:
                        with np.errstate(invalid="ignore", divide="ignore"):
                            drop = (100.0 * (1.0 - part[key] / full)).dropna().to_numpy(dtype=float)
                        drop = drop[np.isfinite(drop)]
                        row[arrow(f"drop {LABELS[subset]} %", False)] = mean_std(drop, 1)
            rows.append(row)
        block.run_keys += sorted(group["tags.run_key"])
    table = pd.DataFrame(rows).fillna("—")
    block.table = table
    block.best = mark_best(table, means, dict.fromkeys(means, True))
    block.notes = [
        CI_NOTE,
        "Trained on: the input subsets the method trained with (train.modality_dropout: CT+PET / CT / "
        "PET draw probabilities). drop X %: 100 x (1 - Dice on X / Dice on CT+PET), per seed, then "
        "averaged; a method that does not accept an input has no cell.",
    ]
    return block
