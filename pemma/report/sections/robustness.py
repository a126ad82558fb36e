"""robustness: Dice against the magnitude of each test-time condition (pet-shift, pet-blur, pet-noise,
or any registered one), per method, with the method-level interval and the drop from clean CT+PET;
one figure panel per condition."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pemma.classes import title_of
from pemma.conditions import CONDITIONS
from pemma.modalities import LABELS
from pemma.report.sections.base import Block, Figure, Options, Section, section_kind
from pemma.report.sections.common import (
    CI_NOTE,
    arrow,
    ci,
    dice_interval,
    grouped,
    interval_lines,
    mean_std,
    row_label,
    runs_of,
    values_of,
)
from pemma.report.sources import Sources


@dataclass(frozen=True)
class RobustnessOptions(Options):
    conditions: tuple[str, ...] = ()  # default: every condition the runs were scored under
    klass: str = "mean"


def _magnitudes(runs: pd.DataFrame, condition) -> list[float]:
    """The magnitudes of `condition` some run logged a Dice for."""
    found = []
    for column in runs.columns:
        prefix = "metrics.dice_hecktor/"
        if column.startswith(prefix) and runs[column].notna().any():
            key = column.removeprefix(prefix).rsplit("/", 1)[0]
            for value in condition.magnitudes + tuple(_numbers(key, condition)):
                if condition.key(value) == key:
                    found.append(float(value))
    return sorted(set(found), reverse=condition.clean > 0)


def _numbers(key: str, condition):
    """A magnitude outside the default grid, read back from a key such as `pet-shift-6mm`."""
    text = key.removeprefix(f"{condition.name}-").removesuffix(condition.unit)
    try:
        yield float(text)
    except ValueError:
        return


@section_kind(
    "robustness",
    "Dice against the magnitude of each test-time condition (misregistered, blurred, noisy PET) per "
    "method, with 95% CIs about the method and the drop from clean CT+PET",
    RobustnessOptions,
)
def robustness_block(section: Section, sources: Sources) -> Block:
    import matplotlib.pyplot as plt

    opts = section.options
    runs = runs_of(section, sources)
    block = Block(section)
    if runs.empty:
        return block
    names = opts.conditions or tuple(n for n, c in CONDITIONS.items() if c.transform is not None)
    conditions = [CONDITIONS.get(n) for n in names]
    rows, panels = [], {c.name: {} for c in conditions}
    for (method, backbone, variant), group in grouped(runs):
        clean = values_of(
            group, f"dice_hecktor/{conditions[0].subset if conditions else 'ctpet'}/{opts.klass}"
        )
        for condition in conditions:
            for magnitude in _magnitudes(group, condition):
                key = condition.key(magnitude)
                values = values_of(group, f"dice_hecktor/{key}/{opts.klass}")
                if values.size == 0:
                    continue
                interval, n = dice_interval(
                    sources, section.suite, group, condition.name, opts.klass, magnitude
                )
                row = {**row_label(method, backbone, variant), "condition": condition.name}
                row["magnitude"] = f"{magnitude:g} {condition.unit}"
                row["seeds"] = str(values.size)  # the seeds scored under this magnitude
                row[arrow(f"{title_of(opts.klass)} {LABELS[condition.subset]}", True)] = mean_std(values) + (
                    ci(interval) if interval else ""
                )
                clean = f"metrics.dice_hecktor/{condition.subset}/{opts.klass}"
                if clean in group:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        ratio = group[f"metrics.dice_hecktor/{key}/{opts.klass}"] / group[clean]
                    drop = (100.0 * (1.0 - ratio)).to_numpy(dtype=float)
                    row[arrow("drop from clean %", False)] = mean_std(drop[np.isfinite(drop)], 1)
                rows.append(row)
                low, high = (interval.low, interval.high) if interval else (np.nan, np.nan)
                panels[condition.name].setdefault(f"{method} {backbone} {variant}".strip(), []).append(
                    (magnitude, values.mean(), low, high)
                )
        block.run_keys += sorted(group["tags.run_key"])
    if not rows:
        return block
    block.table = pd.DataFrame(rows).fillna("—")
    block.notes = [
        CI_NOTE,
        "Each condition changes the test inputs only, after training (`pemma-bench conditions`): "
        + "; ".join(f"{c.name}: {c.description}" for c in conditions)
        + ". The clean magnitude (0 mm, 0 mm, 100%) reproduces the unchanged CT+PET Dice exactly. "
        "drop from clean: 100 x (1 - Dice under the condition / clean CT+PET Dice), per seed, averaged.",
    ]
    shown = [(name, lines) for name, lines in panels.items() if lines]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.6 * len(shown), 3.8), squeeze=False)
    for ax, (name, lines) in zip(axes.flat, shown, strict=True):
        condition = CONDITIONS.get(name)
        interval_lines(ax, lines)
        ax.set_xlabel(f"{condition.parameter} ({condition.unit})")
        ax.set_ylabel(f"{title_of(opts.klass)} {LABELS[condition.subset]}")
        ax.set_title(name, fontsize=9)
        if condition.clean > 0:
            ax.invert_xaxis()  # left to right: worse
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    block.figures.append(Figure("robustness", "Dice against each test-time condition's magnitude", fig))
    return block
