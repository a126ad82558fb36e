"""Helpers every section kind shares: the runs a section reads, their grouping into method x backbone x
variant, cell formatting, the Dice interval from per-patient rows, and best-value marking."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pemma.classes import title_of
from pemma.methods import METHODS
from pemma.modalities import LABELS
from pemma.report import stats
from pemma.report.sections.base import Section
from pemma.report.sources import Sources
from pemma.report.tables import logged_classes, variant_columns, variant_of, with_derived
from pemma.tasks import all_metrics

CI_NOTE = (
    "Cells: mean ± sample std over seeds [95% CI about the method: a t interval over seeds of each "
    "seed's value on its own test split, plus the covariance of patients that several seeds tested, so "
    "training randomness and patient sampling are both inside it (pemma.report.stats)]. With one seed, "
    "marked †: the BCa bootstrap over patients with that seed's network held fixed (9,999 resamples), "
    "which leaves training randomness out."
)


def runs_of(section: Section, sources: Sources, suite: str | None = None) -> pd.DataFrame:
    runs = sources.suite(suite or section.suite).runs
    if runs.empty:
        return runs
    if section.methods:
        runs = runs[runs["tags.method"].isin(section.methods)]
    if section.backbones:
        runs = runs[runs["tags.backbone"].isin(section.backbones)]
    for key, value in section.where:
        column = runs.get(f"params.{key}", pd.Series(index=runs.index, dtype=object))
        runs = runs[column.astype(str) == value]
    return with_derived(runs.reset_index(drop=True))


def grouped(
    runs: pd.DataFrame, drop: tuple[str, ...] = ()
) -> list[tuple[tuple[str, str, str], pd.DataFrame]]:
    """(method, backbone, variant) groups in registry order; `drop` params do not make a variant."""
    varying = [c for c in variant_columns(runs) if c not in drop]
    variant = runs.apply(lambda r: variant_of(r, runs, varying), axis=1) if varying else ""
    runs = runs.assign(variant=variant)
    order = {m: i for i, m in enumerate(METHODS.names())}
    groups = list(runs.groupby(["tags.method", "tags.backbone", "variant"], sort=False))
    groups.sort(key=lambda g: (g[0][1], order.get(g[0][0], len(order)), g[0][2]))
    return groups


def row_label(method: str, backbone: str, variant: str) -> dict[str, str]:
    row = {"method": method, "backbone": backbone}
    if variant:
        row["variant"] = variant
    return row


def values_of(group: pd.DataFrame, metric: str) -> np.ndarray:
    key = f"metrics.{metric}"
    return group[key].dropna().to_numpy(dtype=float) if key in group else np.array([])


def fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}" if np.isfinite(value) else "—"


def mean_std(values: np.ndarray, digits: int = 3) -> str:
    if values.size == 0:
        return "—"
    text = fmt(values.mean(), digits)
    return text + (f" ± {values.std(ddof=1):.{digits}f}" if values.size > 1 else "")


def ci(interval: stats.Interval, digits: int = 3) -> str:
    if not np.isfinite(interval.low):
        return ""
    network = "†" if interval.scope == stats.NETWORK else ""
    return f" [{interval.low:.{digits}f}, {interval.high:.{digits}f}]{network}"


def segmentation_rows(
    sources: Sources, suite: str, keys, condition: str, magnitude: float | None = None
) -> pd.DataFrame:
    """Original-grid rows of these runs under `condition`: an input subset (`ctpet`), or a test-time
    condition's name with its `magnitude`."""
    patients = sources.patients(suite)
    if patients.empty:
        return patients
    chosen = (
        (patients["kind"] == "segmentation")
        & (patients["grid"] == "original")
        & (patients["condition"] == condition)
        & patients["run_key"].isin(set(keys))
    )
    if magnitude is not None:
        chosen &= np.isclose(patients["magnitude"].astype(float), magnitude)
    return patients[chosen]


def dice_interval(
    sources: Sources, suite: str, group: pd.DataFrame, condition: str, klass: str, magnitude=None
):
    rows = segmentation_rows(sources, suite, group["tags.run_key"], condition, magnitude)
    if rows.empty:
        return None, 0
    counts = stats.Counts.from_rows(rows)
    if klass != "mean" and klass not in counts.classes:  # a class of another cohort than these runs'
        return None, len(counts.patients)
    return stats.dice_interval(counts, klass), len(counts.patients)


def chosen_classes(asked: tuple[str, ...], runs: pd.DataFrame, subset: str) -> tuple[list[str], list[str]]:
    """The classes a section shows of those it asks for (`each`: every class the runs logged, in
    table order), and a note for each asked class the runs do not hold (a cohort with other classes)."""
    held = logged_classes(runs, subset)
    shown, notes = [], []
    for klass in asked:
        if klass == "each":
            shown += [c for c in held if c not in shown]
        elif klass == "mean" or klass in held:
            shown += [klass] if klass not in shown else []
        else:
            notes.append(
                f"Class {klass!r}: not in these runs (their cohort's classes: {', '.join(held) or 'none'}); "
                "its columns are left out."
            )
    return shown, notes


def declared(key: str):
    for metric in all_metrics():
        if metric.matches(key):
            return metric
    raise KeyError(f"no task declares the metric {key!r}")


def dice_title(subset: str, klass: str) -> str:
    return f"{title_of(klass)} {LABELS[subset]}"


def mark_best(table: pd.DataFrame, means: dict[str, list[float]], higher: dict[str, bool | None]):
    best = pd.DataFrame(False, index=table.index, columns=table.columns)
    for column, values in means.items():
        direction = higher.get(column)
        arr = np.array(values, dtype=float)
        if direction is None or not np.isfinite(arr).any() or np.isfinite(arr).sum() < 2:
            continue
        target = np.nanmax(arr) if direction else np.nanmin(arr)
        best[column] = np.isclose(arr, target, rtol=0, atol=1e-12)
    return best


def arrow(title: str, higher: bool | None) -> str:
    return title + {True: " ↑", False: " ↓", None: ""}[higher]


def p_text(value: float) -> str:
    if not np.isfinite(value):
        return "—"
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def interval_lines(ax, lines: dict[str, list[tuple[float, float, float, float]]]) -> None:
    """One line per label through its (x, estimate, low, high) points, sorted by x, with the interval
    as error bars (none where it is undefined)."""
    for label, points in lines.items():
        xs, ys, lo, hi = map(np.array, zip(*sorted(points), strict=True))
        err = np.vstack([ys - np.where(np.isfinite(lo), lo, ys), np.where(np.isfinite(hi), hi, ys) - ys])
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
