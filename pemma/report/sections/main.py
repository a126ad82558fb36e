"""main: method x backbone, Dice per input subset and class with the method-level interval, and the
declared extras (parameters, throughput, memory); the best value per column in bold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pemma.classes import title_of
from pemma.methods import reference_method
from pemma.modalities import SUBSETS
from pemma.report import stats
from pemma.report.sections.base import Block, Options, Section, section_kind
from pemma.report.sections.common import (
    CI_NOTE,
    arrow,
    chosen_classes,
    ci,
    declared,
    dice_interval,
    dice_title,
    grouped,
    mark_best,
    mean_std,
    row_label,
    runs_of,
    values_of,
)
from pemma.report.sources import Sources


@dataclass(frozen=True)
class MainOptions(Options):
    subsets: tuple[str, ...] = SUBSETS
    classes: tuple[str, ...] = ("mean",)
    boundary: tuple[str, ...] = ("hd95", "nsd")
    """Boundary metrics beside Dice, on the first subset and each class: the per-seed medians over
    patients, mean ± std over seeds with a t interval over seeds (about the method)."""
    extras: tuple[str, ...] = (
        "params_trainable",
        "params_trainable_pct_of_reference",
        "saved_bytes",
        "train_samples_per_s",
        "train_peak_memory_mb",
    )


@section_kind(
    "main",
    "method x backbone: Dice per input subset and class (mean ± std over seeds, 95% CI about the "
    "method), parameters, throughput, memory; best value per column in bold",
    MainOptions,
)
def main_table(section: Section, sources: Sources) -> Block:
    opts = section.options
    runs = runs_of(section, sources)
    block = Block(section)
    if runs.empty:
        return block
    rows, means, higher = [], {}, {}
    classes, class_notes = chosen_classes(opts.classes, runs, opts.subsets[0])
    for (method, backbone, variant), group in grouped(runs):
        row = row_label(method, backbone, variant)
        row["seeds"] = str(group["params.seed"].nunique())
        row["patients"] = "—"
        tested = 0
        for subset in opts.subsets:
            for klass in classes:
                title = arrow(dice_title(subset, klass), True)
                values = values_of(group, f"dice_hecktor/{subset}/{klass}")
                interval, n = dice_interval(sources, section.suite, group, subset, klass)
                tested = max(tested, n)
                row[title] = mean_std(values) + (ci(interval) if interval and values.size else "")
                means.setdefault(title, []).append(values.mean() if values.size else np.nan)
                higher[title] = True
        row["patients"] = str(tested) if tested else "—"
        for name in opts.boundary:
            for klass in classes:
                metric = declared(f"{name}/{opts.subsets[0]}/{klass}")
                label = metric.title if klass == "mean" else f"{metric.title} {title_of(klass)}"
                title = arrow(label, metric.higher_is_better)
                values = values_of(group, f"{name}/{opts.subsets[0]}/{klass}")
                interval = ci(stats.seed_interval(values), metric.digits) if values.size else ""
                row[title] = mean_std(values, metric.digits) + interval
                means.setdefault(title, []).append(values.mean() if values.size else np.nan)
                higher[title] = metric.higher_is_better
        for key in opts.extras:
            metric = declared(key)
            title = arrow(metric.title_for(reference_method), metric.higher_is_better)
            values = values_of(group, key)
            row[title] = mean_std(values, metric.digits) if key != "saved_bytes" else _size(values)
            means.setdefault(title, []).append(values.mean() if values.size else np.nan)
            higher[title] = metric.higher_is_better
        rows.append(row)
        block.run_keys += sorted(group["tags.run_key"])
    table = pd.DataFrame(rows).fillna("")
    shown = [c for c in table.columns if not (table[c] == "—").all()]
    table = table[shown]
    block.table = table
    block.best = mark_best(table, {k: v for k, v in means.items() if k in shown}, higher)
    block.notes = [
        CI_NOTE,
        "Dice: HECKTOR aggregated Dice on each patient's original CT grid (intersections and volumes "
        "pooled over the test split's patients; 'Dice' is the mean of the cohort's classes: "
        f"{', '.join(title_of(c) for c in chosen_classes(('each',), runs, opts.subsets[0])[0])}); "
        "patients: test patients over all seeds.",
        *class_notes,
        *[
            f"{declared(key).title_for(reference_method)}: {declared(key).meaning}."
            for key in opts.extras
            if arrow(declared(key).title_for(reference_method), declared(key).higher_is_better) in shown
        ],
        *[_boundary_note(declared(f"{name}/{opts.subsets[0]}/mean")) for name in opts.boundary],
        "Best value per column in bold; ↑ / ↓ say which direction is better.",
    ]
    return block


def _boundary_note(metric) -> str:
    return (
        f"{metric.title}: {metric.meaning}; each seed's median, mean ± std over seeds, [95% t interval "
        "over seeds]."
    )


def _size(values: np.ndarray) -> str:
    if values.size == 0:
        return "—"
    mb = values.mean() / 1e6
    return f"{mb:,.2f} MB"
