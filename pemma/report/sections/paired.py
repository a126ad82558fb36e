"""paired: each method minus a reference on the same patients and seeds, with Holm-adjusted p."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pemma.classes import title_of
from pemma.modalities import LABELS, SUBSETS
from pemma.report import stats
from pemma.report.sections.base import Block, Options, Section, section_kind
from pemma.report.sections.common import (
    chosen_classes,
    ci,
    fmt,
    grouped,
    p_text,
    row_label,
    runs_of,
    segmentation_rows,
)
from pemma.report.sources import Sources


@dataclass(frozen=True)
class PairedOptions(Options):
    subsets: tuple[str, ...] = SUBSETS
    classes: tuple[str, ...] = ("mean",)
    reference: str = ""  # default: early fusion (the methods' 'parameters' reference)


@section_kind(
    "paired",
    "each method minus a reference on the same patients and seeds: aggregated-Dice difference with its "
    "95% CI about the methods, p from the same t over seeds, Holm-adjusted across the table",
    PairedOptions,
)
def paired_table(section: Section, sources: Sources) -> Block:
    opts = section.options
    runs = runs_of(section, sources)
    block = Block(section)
    if runs.empty:
        return block
    reference = section.reference_method
    rows, pvalues = [], []
    groups = grouped(runs)
    classes, class_notes = chosen_classes(opts.classes, runs, opts.subsets[0])
    for (method, backbone, variant), group in groups:
        if method == reference:
            continue
        ref = runs[(runs["tags.method"] == reference) & (runs["tags.backbone"] == backbone)]
        seeds = sorted(set(group["params.seed"]) & set(ref["params.seed"]))
        if not seeds:
            continue
        mine = group[group["params.seed"].isin(seeds)]
        theirs = ref[ref["params.seed"].isin(seeds)]
        for subset in opts.subsets:
            a = segmentation_rows(sources, section.suite, mine["tags.run_key"], subset)
            b = segmentation_rows(sources, section.suite, theirs["tags.run_key"], subset)
            if a.empty or b.empty:
                continue
            patients = sorted(set(a["patient_id"]) & set(b["patient_id"]))
            a, b = a[a["patient_id"].isin(patients)], b[b["patient_id"].isin(patients)]
            ca, cb = stats.Counts.from_rows(a, patients), stats.Counts.from_rows(b, patients)
            for klass in classes:
                result = stats.paired(ca, cb, klass)
                mean_a = float(stats.aggregated_dice(ca, klass)(np.arange(len(patients))))
                mean_b = float(stats.aggregated_dice(cb, klass)(np.arange(len(patients))))
                row = row_label(method, backbone, variant)
                row.update(
                    {
                        "input": LABELS[subset],
                        "class": title_of(klass),
                        "seeds": str(len(seeds)),
                        "patients": str(result.patients),
                        "Dice": fmt(mean_a, 3),
                        f"Dice {reference}": fmt(mean_b, 3),
                        "Δ Dice [95% CI]": fmt(result.difference.estimate, 3) + ci(result.difference),
                        "p": p_text(result.p) + ("†" if result.test == "wilcoxon" else ""),
                    }
                )
                rows.append(row)
                pvalues.append(result.p)
        block.run_keys += sorted(set(mine["tags.run_key"]) | set(theirs["tags.run_key"]))
    if not rows:
        block.notes = [f"No run of {reference} shares a backbone and seed with the other methods."]
        return block
    for row, adjusted in zip(rows, stats.holm(pvalues), strict=True):
        row["Holm p"] = p_text(adjusted)
    block.table = pd.DataFrame(rows).fillna("")
    block.best = pd.DataFrame(False, index=block.table.index, columns=block.table.columns)
    block.best["Holm p"] = [np.isfinite(p) and p < 0.05 for p in stats.holm(pvalues)]
    block.notes = [
        f"Each method against {reference} on the same patients and seeds (the seeds both ran; a seed's "
        "split is shared by every method). Δ Dice: the method's HECKTOR aggregated Dice (original grid, "
        "mean over seeds) minus the reference's, with a 95% CI about the methods: a t interval over seeds "
        "of each seed's paired difference, plus the covariance of patients several seeds tested "
        "(training randomness and patient sampling both inside it). p: two-sided, from the same t "
        "statistic (its unit is the seed, as the interval's). With one seed, marked †: the paired BCa "
        "bootstrap over patients and the Wilcoxon signed-rank test of per-patient Dice differences, both "
        "with the networks held fixed. Holm p: adjusted across every row of this table; bold where below "
        "0.05.",
        *class_notes,
    ]
    block.run_keys = sorted(set(block.run_keys))
    return block
