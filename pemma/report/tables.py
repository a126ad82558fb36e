"""The results table of a suite, computed from its FINISHED MLflow runs (mean ± std over seeds)."""

from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pemma.methods import METHODS
from pemma.modalities import LABELS, SUBSETS


@dataclass(frozen=True)
class Column:
    title: str
    metric: str
    higher_is_better: bool | None
    digits: int = 3

    @property
    def header(self) -> str:
        arrow = {True: " ↑", False: " ↓", None: ""}[self.higher_is_better]
        return self.title + arrow


COLUMNS = [
    *(Column(f"Dice {LABELS[s]}", f"dice_agg/{s}/mean", True) for s in SUBSETS),
    Column("GTVp (CT+PET)", "dice_agg/ctpet/gtvp", True),
    Column("GTVn (CT+PET)", "dice_agg/ctpet/gtvn", True),
    Column("trainable", "params_trainable", None, 0),
    Column("% of EF", "params_trainable_pct_of_reference", False, 1),
    Column("train samples/s", "train_samples_per_s", True, 2),
    Column("infer vol/s", "infer_volumes_per_s/ctpet", True, 2),
    Column("peak MB", "train_peak_memory_mb", False, 0),
    *(Column(f"ACC {LABELS[s]}", f"cl/{s}/acc", True) for s in SUBSETS),
    *(Column(f"BWT {LABELS[s]}", f"cl/{s}/bwt", True) for s in SUBSETS),
    *(Column(f"forgetting {LABELS[s]}", f"cl/{s}/forgetting", False) for s in SUBSETS),
    Column("C-index", "surv/cindex_harrell", True),
    Column("C 95% CI low", "surv/cindex_harrell_low", None),
    Column("C 95% CI high", "surv/cindex_harrell_high", None),
    Column("ΔC vs CT-only %", "surv/cindex_harrell_rel_ct_pct", True, 1),
    Column("Uno C", "surv/cindex_uno", True),
    Column("AUC 2y", "surv/auc_730d", True),
    Column("IBS", "surv/ibs", False),
    Column("Cox clinical C", "cox_clinical/cindex_harrell", True),
    Column("Cox volume+PET max C", "cox_image/cindex_harrell", True),
]
"""Columns whose metric no run of the suite logged are left out of its table."""


LABEL_PARAMS = {"params.suite", "params.seed", "params.method", "params.backbone", "params.data.root"}


def variant_columns(runs: pd.DataFrame) -> list[str]:
    """Config params that differ between runs of one backbone (besides method and seed).

    Sizes that differ only between backbones (a profile's per-backbone crop or width) are not a variant.
    """
    cols = [c for c in runs.columns if c.startswith("params.") and c not in LABEL_PARAMS]
    if "tags.backbone" not in runs:
        return [c for c in cols if runs[c].nunique(dropna=False) > 1]
    groups = runs.groupby("tags.backbone")
    return [c for c in cols if (groups[c].nunique(dropna=False) > 1).any()]


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, backbone, variant); each cell 'mean ± std' over seeds, '—' where not measured."""
    if runs.empty:
        return pd.DataFrame()
    order = {m: i for i, m in enumerate(METHODS.names())}
    runs = relative_to_ct_only(runs)
    varying = variant_columns(runs)
    runs = runs.assign(
        variant=runs.apply(lambda run: _variant(run, runs, varying), axis=1) if varying else ""
    )
    rows = []
    for (method, backbone, variant), group in runs.groupby(
        ["tags.method", "tags.backbone", "variant"], sort=False
    ):
        row = {"method": method, "backbone": backbone}
        if varying:
            row["variant"] = variant
        row["seeds"] = group["params.seed"].nunique() if "params.seed" in group else len(group)
        for col in COLUMNS:
            key = f"metrics.{col.metric}"
            values = group[key].dropna().to_numpy(dtype=float) if key in group else np.array([])
            row[col.header] = _cell(values, col.digits)
        rows.append((order.get(method, len(order)), backbone, variant, row))
    rows.sort(key=lambda r: (r[1], r[0], r[2]))
    table = pd.DataFrame([r for *_, r in rows])
    logged = [
        c.header
        for c in COLUMNS
        if f"metrics.{c.metric}" in runs and runs[f"metrics.{c.metric}"].notna().any()
    ]
    return table.drop(columns=[c.header for c in COLUMNS if c.header not in logged])


REFERENCE_PROGNOSIS = "ct-only"
"""Prognosis C-indices are also given relative to this method's (images only, same backbone and seed),
as the papers state their claims (+10% for CT+PET, +23% for CT+PET+EHR)."""


def relative_to_ct_only(runs: pd.DataFrame) -> pd.DataFrame:
    """Add `surv/cindex_harrell_rel_ct_pct`: 100 x (C / C of the CT-only run - 1), matched by backbone
    and seed, the reference trained on images only (prognosis.ehr false)."""
    key = "metrics.surv/cindex_harrell"
    if key not in runs or runs[key].isna().all():
        return runs
    ehr = runs.get("params.prognosis.ehr", pd.Series("False", index=runs.index)).astype(str)
    ref = runs[(runs["tags.method"] == REFERENCE_PROGNOSIS) & (ehr == "False")]
    lookup = {(r["tags.backbone"], str(r.get("params.seed"))): r[key] for _, r in ref.iterrows()}
    rel = [
        100.0 * (r[key] / lookup[k] - 1.0)
        if (k := (r["tags.backbone"], str(r.get("params.seed")))) in lookup
        else np.nan
        for _, r in runs.iterrows()
    ]
    return runs.assign(**{"metrics.surv/cindex_harrell_rel_ct_pct": rel})


def _variant(run: pd.Series, runs: pd.DataFrame, varying: list[str]) -> str:
    """`key=value` for the varying params that vary among the runs of this run's backbone."""
    same = runs[runs["tags.backbone"] == run["tags.backbone"]] if "tags.backbone" in runs else runs
    cols = [c for c in varying if same[c].nunique(dropna=False) > 1]
    return ", ".join(f"{c.removeprefix('params.')}={run[c]}" for c in cols)


def _cell(values: np.ndarray, digits: int) -> str:
    if values.size == 0:
        return "—"
    mean = values.mean()
    text = f"{mean:,.{digits}f}"
    if values.size > 1:
        text += f" ± {values.std(ddof=1):.{digits}f}"
    return text


def to_markdown(table: pd.DataFrame, title: str = "") -> str:
    if table.empty:
        return f"{title}\n\n(no finished runs)\n" if title else "(no finished runs)\n"
    head = "| " + " | ".join(table.columns) + " |"
    rule = (
        "|"
        + "|".join("---" if c in ("method", "backbone", "variant") else "---:" for c in table.columns)
        + "|"
    )
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    lines = ([f"## {title}", ""] if title else []) + [head, rule, *body]
    notes = (
        "Dice: HECKTOR aggregated Dice on the adaptation centre's test split, mean of GTVp and GTVn; "
        "'—': input subset the method does not accept. % of EF: trainable parameters as a share of "
        "early fusion's. Mean ± sample std over seeds."
    )
    if any(c.startswith("C-index") for c in table.columns):
        notes = (
            "C-index: Harrell's on the test split of every centre (higher risk = earlier relapse), "
            "95% percentile bootstrap CI over test patients; ΔC: relative to the CT-only model on images "
            "only (same backbone and seed). Uno C: IPCW, truncated at the 90th percentile of training "
            "follow-up. AUC 2y: cumulative/dynamic AUC at 730 days. IBS: integrated Brier score of "
            "Breslow curves. Cox columns: lifelines Cox PH on the same split. Mean ± sample std over seeds."
        )
    return "\n".join(lines) + "\n\n" + notes + "\n"


def continual_matrices(runs: pd.DataFrame) -> str:
    """Markdown of every continual run's R[stage, centre] per input subset (rows: after each stage)."""
    parts = []
    for _, run in runs.iterrows():
        keys = [k for k in run.index if k.startswith("metrics.cl/") and "/R/" in k and run[k] == run[k]]
        if not keys:
            continue
        parts.append(f"### {run['tags.run_key']}\n")
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
                    f"| {st} | "
                    + " | ".join(f"{cells.get((st, c), float('nan')):.3f}" for c in centres)
                    + " |"
                )
            parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)
