"""The results table of a suite, computed from its FINISHED MLflow runs (mean ± std over seeds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pemma.classes import ordered, title_of
from pemma.config import key_scopes
from pemma.files import write_atomic
from pemma.methods import METHODS, reference_method
from pemma.modalities import CTPET, LABELS
from pemma.report.markdown import markdown_table
from pemma.tasks import TASKS, all_metrics


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


def columns() -> list[Column]:
    """Table columns from the tasks' metric declarations; those no run logged are left out later."""
    return [
        Column(m.title_for(reference_method), m.key, m.higher_is_better, m.digits)
        for m in all_metrics()
        if m.column
    ]


def logged_classes(runs: pd.DataFrame, subset: str = CTPET) -> list[str]:
    """The classes the runs logged a Dice for on `subset` (their cohort's), in table order."""
    prefix = f"metrics.dice_hecktor/{subset}/"
    return [
        n
        for n in ordered(c.removeprefix(prefix) for c in runs.columns if c.startswith(prefix))
        if n != "mean"
    ]


def with_classes(cols: list[Column], runs: pd.DataFrame) -> list[Column]:
    """`cols` with a Dice column per class the runs logged (`GTVp (CT+PET)`: HECKTOR's; `lesion
    (CT+PET)` on a one-class cohort), after the mean Dice columns."""
    metric = next(m for m in all_metrics() if m.matches(f"dice_hecktor/{CTPET}/class"))
    added = [
        Column(f"{title_of(n)} ({LABELS[CTPET]})", f"dice_hecktor/{CTPET}/{n}", True, metric.digits)
        for n in logged_classes(runs)
    ]
    last = max((i for i, c in enumerate(cols) if c.metric.startswith("dice_hecktor/")), default=-1)
    return cols[: last + 1] + added + cols[last + 1 :]


NOT_VARIANT = {"params.seed", "params.method", "params.backbone"} | {
    f"params.{key}" for key, scope in key_scopes().items() if not scope
}
"""Params that never make a variant: the grouping ones, and those in no key (labels such as the suite
or data folder, and the test-time conditions, which a finished run may have grown since it logged
them: runs that differ only there are one unit)."""


def variant_columns(runs: pd.DataFrame) -> list[str]:
    """Config params that differ between runs of one backbone (besides method and seed).

    Sizes that differ only between backbones (a profile's per-backbone crop or width) are not a variant.
    """
    cols = [c for c in runs.columns if c.startswith("params.") and c not in NOT_VARIANT]
    if "tags.backbone" not in runs:
        return [c for c in cols if runs[c].nunique(dropna=False) > 1]
    groups = runs.groupby("tags.backbone")
    return [c for c in cols if (groups[c].nunique(dropna=False) > 1).any()]


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, backbone, variant); each cell 'mean ± std' over seeds, '—' where not measured."""
    if runs.empty:
        return pd.DataFrame()
    order = {m: i for i, m in enumerate(METHODS.names())}
    runs = with_derived(runs)
    cols = with_classes(columns(), runs)
    varying = variant_columns(runs)
    runs = runs.assign(
        variant=runs.apply(lambda run: variant_of(run, runs, varying), axis=1) if varying else ""
    )
    rows = []
    for (method, backbone, variant), group in runs.groupby(
        ["tags.method", "tags.backbone", "variant"], sort=False
    ):
        row = {"method": method, "backbone": backbone}
        if varying:
            row["variant"] = variant
        row["seeds"] = group["params.seed"].nunique() if "params.seed" in group else len(group)
        for col in cols:
            key = f"metrics.{col.metric}"
            values = group[key].dropna().to_numpy(dtype=float) if key in group else np.array([])
            row[col.header] = _cell(values, col.digits)
        rows.append((order.get(method, len(order)), backbone, variant, row))
    rows.sort(key=lambda r: (r[1], r[0], r[2]))
    table = pd.DataFrame([r for *_, r in rows])
    logged = [
        c.header for c in cols if f"metrics.{c.metric}" in runs and runs[f"metrics.{c.metric}"].notna().any()
    ]
    table = table.drop(columns=[c.header for c in cols if c.header not in logged])
    table.attrs["variance"] = variance(runs)
    return table


def variance(runs: pd.DataFrame) -> str:
    """What the ± of a table spans: seeds on one fixed split, or seeds each with its own split."""
    follows = runs.get("params.data.split_follows_seed", pd.Series(dtype=str)).astype(str)
    if (follows == "True").all() and len(follows):
        return "Mean ± sample std over seeds, each seed with its own train / val / test split."
    if (follows == "True").any():
        return "Mean ± sample std over seeds; some rows draw a split per seed, others keep one (see variant)."
    return (
        "Mean ± sample std over seeds on one fixed split (data.split_seed): the spread leaves out the "
        "split's variance (set data.split_follows_seed to include it)."
    )


def with_derived(runs: pd.DataFrame) -> pd.DataFrame:
    """Add every declared derived metric: 100 x (value / the reference method's value - 1), matched by
    backbone and seed, the reference run restricted by the metric's reference parameters."""
    for metric in all_metrics():
        source = f"metrics.{metric.derived_from}" if metric.derived_from else None
        if source is None or source not in runs or runs[source].isna().all():
            continue
        ref = runs[runs["tags.method"] == reference_method(metric.reference)]
        for param, value in metric.reference_params:
            column = runs.get(f"params.{param}", pd.Series(value, index=runs.index)).astype(str)
            ref = ref[column.loc[ref.index] == value]
        lookup = {(r["tags.backbone"], str(r.get("params.seed"))): r[source] for _, r in ref.iterrows()}
        derived = [
            100.0 * (r[source] / lookup[k] - 1.0)
            if (k := (r["tags.backbone"], str(r.get("params.seed")))) in lookup
            else np.nan
            for _, r in runs.iterrows()
        ]
        runs = runs.assign(**{f"metrics.{metric.key}": derived})
    return runs


def variant_of(run: pd.Series, runs: pd.DataFrame, varying: list[str]) -> str:
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
    lines = [f"## {title}", ""] if title else []
    lines.append(markdown_table(table, left=("method", "backbone", "variant")))
    headers = {c.metric: c.header for c in columns()}
    notes = [task.note for _, task in TASKS.items() if task.note and _shows(task, table, headers)]
    notes += [
        f"{m.title_for(reference_method)}: {m.meaning}."
        for m in all_metrics()
        if m.reference and m.column and headers.get(m.key) in table.columns
    ]
    notes = " ".join([*notes, table.attrs.get("variance", "Mean ± sample std over seeds.")])
    return "\n".join(lines) + "\n\n" + notes + "\n"


def _shows(task, table: pd.DataFrame, headers: dict[str, str]) -> bool:
    """Whether the table shows a column only this task declares."""
    others = {m.key for _, t in TASKS.items() if t is not task for m in t.metrics}
    return any(headers.get(m.key) in table.columns for m in task.metrics if m.column and m.key not in others)


def appendices(runs: pd.DataFrame) -> str:
    """What each task adds under the table (e.g. continual R matrices)."""
    return "".join(task().appendix(runs) for _, task in TASKS.items()) if not runs.empty else ""


def write_suite_table(tracker, suite: str, results: Path, include_ci: bool = False, keep_wider: bool = False):
    """`results/<suite>/results.md`: the table of every FINISHED run of the suite (the latest per run
    key), with what was left out and the tasks' appendices. Returns (path, table, left out).

    With `keep_wider` (a view asked for after the fact, `report --suite`), a narrower view never
    replaces the wider one: when ci-profile runs exist and are left out, the table goes to
    `results-without-ci.md` and `results.md` is left alone. `run` always writes `results.md`."""
    from pemma.report.sources import select

    runs = tracker.runs(suite, status=None)
    selected = select(runs, suite, include_ci)
    narrower = (
        keep_wider and not include_ci and "tags.profile" in runs and (runs["tags.profile"] == "ci").any()
    )
    table = summary(selected.runs)
    text = to_markdown(table, f"pemma-bench suite {suite}")
    if selected.left_out:
        text += "\nLeft out: " + "; ".join(f"{n} {why}" for why, n in selected.left_out.items()) + ".\n"
    extra = appendices(selected.runs)
    if extra:
        text += "\n" + extra
    out = Path(results) / suite / ("results-without-ci.md" if narrower else "results.md")
    write_atomic(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return out, table, selected.left_out
