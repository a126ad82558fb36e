"""continual: R matrices (Dice after each stage, per centre) as heatmaps; ACC / BWT / forgetting."""

from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pemma.modalities import LABELS, SUBSETS
from pemma.report import stats
from pemma.report.sections.base import Block, Figure, Options, Section, section_kind
from pemma.report.sections.common import arrow, ci, fmt, grouped, row_label, runs_of, values_of
from pemma.report.sources import Sources


@dataclass(frozen=True)
class ContinualOptions(Options):
    subsets: tuple[str, ...] = SUBSETS


@section_kind(
    "continual",
    "R matrices as heatmaps; ACC / BWT / forgetting with t intervals over seeds",
    ContinualOptions,
)
def continual_block(section: Section, sources: Sources) -> Block:
    opts = section.options
    import matplotlib.pyplot as plt

    runs = runs_of(section, sources)
    block = Block(section)
    if runs.empty or not any(c.startswith("metrics.cl/") for c in runs.columns):
        return block
    rows, panels = [], []
    for (method, backbone, variant), group in grouped(runs):
        for subset in opts.subsets:
            acc = values_of(group, f"cl/{subset}/acc")
            if acc.size == 0:
                continue
            row = {**row_label(method, backbone, variant), "input": LABELS[subset]}
            row["seeds"] = str(group["params.seed"].nunique())
            for name, title, higher in (
                ("acc", "ACC", True),
                ("bwt", "BWT", True),
                ("forgetting", "forgetting", False),
            ):
                interval = stats.seed_interval(values_of(group, f"cl/{subset}/{name}"))
                row[arrow(title, higher)] = fmt(interval.estimate, 3) + ci(interval)
            rows.append(row)
            panels.append((f"{method} {backbone} {variant}".strip(), subset, _r_matrix(group, subset)))
        block.run_keys += sorted(group["tags.run_key"])
    block.table = pd.DataFrame(rows).fillna("—")
    block.notes = [
        "R[stage, centre]: Dice (working grid, mean over seeds) on each centre's test split after each "
        "stage. ACC: mean of the last row; BWT: mean change of earlier centres from when they were "
        "learned; forgetting: mean drop from the best earlier value. Intervals: 95% t interval over "
        "seeds (R cells have no per-patient rows)."
    ]
    panels = [p for p in panels if p[2] is not None]
    if panels:
        cols = min(3, len(panels))
        nrows = -(-len(panels) // cols)
        fig, axes = plt.subplots(
            nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False, layout="constrained"
        )
        for ax in axes.flat[len(panels) :]:
            ax.axis("off")
        for ax, (name, subset, matrix) in zip(axes.flat, panels, strict=False):
            image = ax.imshow(matrix.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks(range(matrix.shape[1]), matrix.columns)
            ax.set_yticks(range(matrix.shape[0]), [f"after {s}" for s in matrix.index])
            for (i, j), v in np.ndenumerate(matrix.to_numpy(dtype=float)):
                ax.text(j, i, "—" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", color="w")
            ax.set_title(f"{name}\n{LABELS[subset]} input", fontsize=9)
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="Dice")
        block.figures.append(Figure("continual-r", "R matrices (Dice after each stage, per centre)", fig))
    return block


def _r_matrix(group: pd.DataFrame, subset: str) -> pd.DataFrame | None:
    prefix = f"metrics.cl/{subset}/R/"
    keys = [c for c in group.columns if c.startswith(prefix) and group[c].notna().any()]
    if not keys:
        return None
    cells = {}
    for key in keys:
        stage, centre = key.removeprefix(prefix).split("/")
        cells[(int(stage), centre)] = group[key].mean()
    first = group.iloc[0]
    centres = [first["params.data.adapt_centre"], *ast.literal_eval(first["params.continual.order"])]
    stages = sorted({s for s, _ in cells})
    return pd.DataFrame(
        [[cells.get((s, c), np.nan) for c in centres] for s in stages], index=stages, columns=centres
    )
