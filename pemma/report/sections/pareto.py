"""pareto: Dice against trainable parameters over every method and variant; the Pareto front marked."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pemma.report.sections.base import Block, Figure, Options, Section, section_kind
from pemma.report.sections.common import arrow, dice_title, grouped, row_label, runs_of, values_of
from pemma.report.sources import Sources


@dataclass(frozen=True)
class ParetoOptions(Options):
    suites: tuple[str, ...] = ()  # suites read beside the section's own
    subset: str = "ctpet"
    klass: str = "mean"

    def extra_suites(self) -> tuple[str, ...]:
        return self.suites


@section_kind(
    "pareto",
    "Dice against trainable parameters over every method and variant; the Pareto front marked",
    ParetoOptions,
)
def pareto_block(section: Section, sources: Sources) -> Block:
    opts = section.options
    import matplotlib.pyplot as plt

    block = Block(section)
    points = []
    metric = f"dice_hecktor/{opts.subset}/{opts.klass}"
    for suite in section.all_suites:
        runs = runs_of(section, sources, suite)
        if runs.empty:
            continue
        for (method, backbone, variant), group in grouped(runs):
            dice, params = values_of(group, metric), values_of(group, "params_trainable")
            if dice.size and params.size:
                points.append(
                    {
                        "suite": suite,
                        **row_label(method, backbone, variant),
                        "trainable": params.mean(),
                        "dice": dice.mean(),
                    }
                )
            block.run_keys += sorted(group["tags.run_key"])
    if not points:
        return block
    frame = pd.DataFrame(points).fillna("")
    front = [
        not any(
            (o["dice"] >= p["dice"] and o["trainable"] <= p["trainable"])
            and (o["dice"] > p["dice"] or o["trainable"] < p["trainable"])
            for _, o in frame.iterrows()
        )
        for _, p in frame.iterrows()
    ]
    frame = frame.assign(front=front).sort_values(
        ["trainable", "dice"], ascending=[True, False], kind="stable"
    )
    table = frame.assign(
        trainable=frame["trainable"].map(lambda v: f"{v:,.0f}"),
        dice=frame["dice"].map(lambda v: f"{v:.3f}"),
        front=frame["front"].map(lambda f: "yes" if f else ""),
    ).rename(columns={"dice": arrow(dice_title(opts.subset, opts.klass), True), "front": "Pareto front"})
    block.table = table.reset_index(drop=True)
    block.best = pd.DataFrame(False, index=block.table.index, columns=block.table.columns)
    block.best["Pareto front"] = list(frame["front"])
    block.notes = [
        "Each point: one method x backbone x variant, mean over seeds. The front: no other point has "
        "at least its Dice with at most its trainable parameters (and is better in one)."
    ]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for _, p in frame.iterrows():
        colour = "tab:red" if p["front"] else "tab:blue"
        ax.scatter(p["trainable"], p["dice"], color=colour, zorder=3)
        ax.annotate(
            f"{p['method']} {p.get('variant', '')}".strip(),
            (p["trainable"], p["dice"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    on_front = frame[frame["front"]].sort_values("trainable")
    ax.step(on_front["trainable"], on_front["dice"], where="post", color="tab:red", alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(dice_title(opts.subset, opts.klass))
    ax.grid(alpha=0.3)
    block.figures.append(Figure("pareto", "Dice against trainable parameters (front in red)", fig))
    return block
