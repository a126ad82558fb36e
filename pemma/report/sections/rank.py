"""rank: Dice against adapter rank (or another config key) per method, with the method-level interval."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pemma.report.sections.base import Block, Figure, Options, Section, section_kind
from pemma.report.sections.common import (
    CI_NOTE,
    arrow,
    ci,
    dice_interval,
    dice_title,
    grouped,
    interval_lines,
    mean_std,
    row_label,
    runs_of,
    values_of,
)
from pemma.report.sources import Sources


@dataclass(frozen=True)
class RankOptions(Options):
    x: str = "adapter.rank"
    subset: str = "ctpet"
    klass: str = "mean"


@section_kind(
    "rank",
    "Dice against adapter rank per method (and alpha rule), with 95% CIs about the method",
    RankOptions,
)
def rank_block(section: Section, sources: Sources) -> Block:
    opts = section.options
    import matplotlib.pyplot as plt

    runs = runs_of(section, sources)
    block = Block(section)
    x = f"params.{opts.x}"
    if runs.empty or x not in runs:
        return block
    rows, lines = [], {}
    for (method, backbone, variant), group in grouped(runs, drop=(x,)):
        for value, part in sorted(group.groupby(x), key=lambda kv: float(kv[0])):
            values = values_of(part, f"dice_hecktor/{opts.subset}/{opts.klass}")
            interval, n = dice_interval(sources, section.suite, part, opts.subset, opts.klass)
            params = values_of(part, "params_trainable")
            row = {
                **row_label(method, backbone, variant),
                opts.x: value,
                "seeds": str(part["params.seed"].nunique()),
            }
            row[arrow(dice_title(opts.subset, opts.klass), True)] = mean_std(values) + (
                ci(interval) if interval and values.size else ""
            )
            row["trainable"] = mean_std(params, 0)
            rows.append(row)
            if values.size:
                low, high = (interval.low, interval.high) if interval else (np.nan, np.nan)
                lines.setdefault(f"{method} {backbone} {variant}".strip(), []).append(
                    (float(value), values.mean(), low, high)
                )
        block.run_keys += sorted(group["tags.run_key"])
    block.table = pd.DataFrame(rows).fillna("—")
    block.notes = [CI_NOTE]
    if lines:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        interval_lines(ax, lines)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(opts.x)
        ax.set_ylabel(dice_title(opts.subset, opts.klass))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        block.figures.append(Figure("rank", f"{dice_title(opts.subset, opts.klass)} against {opts.x}", fig))
    return block
