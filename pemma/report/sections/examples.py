"""examples: pictures a reviewer looks at. For the reference method's best, median and worst test
patient by Dice (one seed), an axial slice through the largest cross-section of the truth: CT in a
soft-tissue window, PET as a colour overlay, the truth's contour in white and each method's contour
in its own colour; one row per patient, one column per method. Read from the units' prediction files
(`eval.predictions`) and the cohort's own CT, PET and label files, on each patient's CT grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pemma.methods import METHODS
from pemma.modalities import CTPET, LABELS
from pemma.report.sections.base import Block, Figure, Options, Section, section_kind
from pemma.report.sections.common import grouped, runs_of
from pemma.report.sources import Sources
from pemma.tasks.segmentation.pictures import CAPTION, Example, Panel, draw, patient_dice, pick


@dataclass(frozen=True)
class ExamplesOptions(Options):
    reference: str = "pemma-lora"
    """Whose per-patient Dice picks the patients (best, median, worst)."""
    subset: str = CTPET
    """The evaluation pass shown (an input subset)."""


@section_kind(
    "examples",
    "the reference method's best, median and worst test patient: an axial CT slice with PET overlay, "
    "the truth's contour and each method's, one column per method",
    ExamplesOptions,
)
def examples_block(section: Section, sources: Sources) -> Block:
    opts = section.options
    runs = runs_of(section, sources)
    block = Block(section)
    reference = runs[runs["tags.method"] == opts.reference] if not runs.empty else runs
    if reference.empty:
        return block
    patients = sources.patients(section.suite)
    if patients.empty:
        return block
    chosen = reference.sort_values(["tags.backbone", "params.seed"]).iloc[0]
    seed, backbone = chosen["params.seed"], chosen["tags.backbone"]
    rows = patients[
        (patients["run_key"] == chosen["tags.run_key"])
        & (patients["grid"] == "original")
        & (patients["condition"] == opts.subset)
    ]
    picks = pick(patient_dice(rows))
    columns = [
        group[group["params.seed"] == seed].iloc[0]
        for (method, group_backbone, _), group in grouped(runs)
        if group_backbone == backbone
        and (group["params.seed"] == seed).any()
        and opts.subset in METHODS.get(method).inputs()  # ct-only has no CT+PET prediction
    ]
    if not picks:
        return block
    passes = patients[(patients["grid"] == "original") & (patients["condition"] == opts.subset)]
    dice = {}
    for column in columns:
        mine = patient_dice(passes[passes["run_key"] == column["tags.run_key"]])
        dice.update({(column["tags.run_key"], p): float(mine.get(p, float("nan"))) for _, p in picks})
    block.table = pd.DataFrame(
        [
            {
                "patient": patient,
                "chosen as": f"{name} of {opts.reference}",
                **{f"{c['tags.method']} Dice ↑": _fmt(dice[(c["tags.run_key"], patient)]) for c in columns},
            }
            for name, patient in picks
        ]
    )
    block.run_keys += [c["tags.run_key"] for c in columns]
    note = (
        f"Patients chosen by {opts.reference}'s Dice ({LABELS[opts.subset]} input, both classes pooled, "
        f"original grid), seed {seed}, {backbone}: its best, median and worst test patient; each "
        "method's Dice for that patient."
    )
    files = _cohort_files(chosen.get("tags.data_root"))
    drawn = [c for c in columns if sources.prediction(c, opts.subset, picks[0][1]) is not None]
    if files is None or not drawn:
        block.notes = [
            note + " No picture: the units wrote no predictions (`eval.predictions`, off at the ci "
            "profile) or their cohort folder is not on this machine."
        ]
        return block
    missing = [c["tags.method"] for c in columns if c["tags.method"] not in {d["tags.method"] for d in drawn}]
    examples = [
        Example(
            f"{name}: {patient}",
            *files[patient],
            [
                Panel(
                    str(sources.prediction(c, opts.subset, patient)),
                    f"{c['tags.method']}  Dice {_fmt(dice[(c['tags.run_key'], patient)], 2)}",
                )
                for c in drawn
            ],
        )
        for name, patient in picks
    ]
    block.figures.append(Figure("examples", f"{LABELS[opts.subset]} predictions", draw(examples)))
    block.notes = [note + " " + CAPTION + (f" No predictions from {', '.join(missing)}." if missing else "")]
    return block


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else "—"


def _cohort_files(root) -> dict[str, tuple[str, str | None, str | None]] | None:
    """Patient -> (CT, PET, label) files of the units' cohort folder, if it is on this machine."""
    from pemma.data.hecktor import CohortError, read_cohort

    if not isinstance(root, str) or not Path(root).is_dir():
        return None
    try:
        cohort = read_cohort(root)
    except CohortError:
        return None
    return {
        c.patient_id: (str(c.ct), str(c.pet) if c.pet else None, str(c.label) if c.label else None)
        for c in cohort.cases
    }
