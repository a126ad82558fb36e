"""Each section kind of a report definition, computed from tracked runs and per-patient tables.

A section yields a Block: a table of display strings (with a mask of the best value per column),
notes that say what every number is, and matplotlib figures. Rendering is report/render.py's.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pemma.methods import METHODS, reference_method
from pemma.metrics.segmentation import CLASSES
from pemma.modalities import LABELS, SUBSETS
from pemma.report import stats
from pemma.report.definition import Section
from pemma.report.sources import Sources
from pemma.report.tables import variant_columns, variant_of, with_derived
from pemma.tasks import all_metrics

CLASS_TITLES = {"mean": "Dice", **{name: name.replace("gtv", "GTV") for name in CLASSES.values()}}
# Harrell's C (lifelines, ~0.3 ms a call) is not vectorised: 1,999 resamples keep a paper-scale report
# within a minute. Uno's C (scikit-survival, ~3 ms a call, mostly input validation) gets no report
# interval: each run logs its own percentile interval.
C_RESAMPLES = 1999
C_SHARED_RESAMPLES = 500  # the shared-patient covariance of several seeds' C (a variance, not a tail)
CI_NOTE = (
    "Cells: mean ± sample std over seeds [95% CI about the method: a t interval over seeds of each "
    "seed's value on its own test split, plus the covariance of patients that several seeds tested, so "
    "training randomness and patient sampling are both inside it (pemma.report.stats)]. With one seed, "
    "marked †: the BCa bootstrap over patients with that seed's network held fixed (9,999 resamples), "
    "which leaves training randomness out."
)


@dataclass
class Figure:
    name: str
    title: str
    figure: object  # matplotlib.figure.Figure


@dataclass
class Block:
    section: Section
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    best: pd.DataFrame | None = None  # True where a cell holds its column's best value
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    run_keys: list[str] = field(default_factory=list)


def build(section: Section, sources: Sources) -> Block:
    return BUILDERS[section.kind](section, sources)


# --- shared helpers --------------------------------------------------------------------------------


def _runs(section: Section, sources: Sources, suite: str | None = None) -> pd.DataFrame:
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


def _groups(
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


def _label(method: str, backbone: str, variant: str) -> dict[str, str]:
    row = {"method": method, "backbone": backbone}
    if variant:
        row["variant"] = variant
    return row


def _values(group: pd.DataFrame, metric: str) -> np.ndarray:
    key = f"metrics.{metric}"
    return group[key].dropna().to_numpy(dtype=float) if key in group else np.array([])


def _fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}" if np.isfinite(value) else "—"


def _mean_std(values: np.ndarray, digits: int = 3) -> str:
    if values.size == 0:
        return "—"
    text = _fmt(values.mean(), digits)
    return text + (f" ± {values.std(ddof=1):.{digits}f}" if values.size > 1 else "")


def _ci(interval: stats.Interval, digits: int = 3) -> str:
    if not np.isfinite(interval.low):
        return ""
    network = "†" if interval.scope == stats.NETWORK else ""
    return f" [{interval.low:.{digits}f}, {interval.high:.{digits}f}]{network}"


def _segmentation_rows(sources: Sources, suite: str, keys, subset: str) -> pd.DataFrame:
    patients = sources.patients(suite)
    if patients.empty:
        return patients
    rows = patients[
        (patients["kind"] == "segmentation")
        & (patients["grid"] == "original")
        & (patients["subset"] == subset)
        & patients["run_key"].isin(set(keys))
    ]
    return rows


def _dice_interval(sources: Sources, suite: str, group: pd.DataFrame, subset: str, klass: str):
    rows = _segmentation_rows(sources, suite, group["tags.run_key"], subset)
    if rows.empty:
        return None, 0
    counts = stats.Counts.from_rows(rows)
    return stats.dice_interval(counts, klass), len(counts.patients)


def _declared(key: str):
    for metric in all_metrics():
        if metric.matches(key):
            return metric
    raise KeyError(f"no task declares the metric {key!r}")


def _dice_title(subset: str, klass: str) -> str:
    return f"{CLASS_TITLES[klass]} {LABELS[subset]}"


def _mark_best(table: pd.DataFrame, means: dict[str, list[float]], higher: dict[str, bool | None]):
    best = pd.DataFrame(False, index=table.index, columns=table.columns)
    for column, values in means.items():
        direction = higher.get(column)
        arr = np.array(values, dtype=float)
        if direction is None or not np.isfinite(arr).any() or np.isfinite(arr).sum() < 2:
            continue
        target = np.nanmax(arr) if direction else np.nanmin(arr)
        best[column] = np.isclose(arr, target, rtol=0, atol=1e-12)
    return best


def _arrow(title: str, higher: bool | None) -> str:
    return title + {True: " ↑", False: " ↓", None: ""}[higher]


# --- main ------------------------------------------------------------------------------------------


def main_table(section: Section, sources: Sources) -> Block:
    runs = _runs(section, sources)
    block = Block(section)
    if runs.empty:
        return block
    rows, means, higher = [], {}, {}
    for (method, backbone, variant), group in _groups(runs):
        row = _label(method, backbone, variant)
        row["seeds"] = str(group["params.seed"].nunique())
        row["patients"] = "—"
        tested = 0
        for subset in section.subsets:
            for klass in section.classes:
                title = _arrow(_dice_title(subset, klass), True)
                values = _values(group, f"dice_hecktor/{subset}/{klass}")
                interval, n = _dice_interval(sources, section.suite, group, subset, klass)
                tested = max(tested, n)
                row[title] = _mean_std(values) + (_ci(interval) if interval and values.size else "")
                means.setdefault(title, []).append(values.mean() if values.size else np.nan)
                higher[title] = True
        row["patients"] = str(tested) if tested else "—"
        for key in section.extras:
            metric = _declared(key)
            title = _arrow(metric.title_for(reference_method), metric.higher_is_better)
            values = _values(group, key)
            row[title] = _mean_std(values, metric.digits) if key != "saved_bytes" else _size(values)
            means.setdefault(title, []).append(values.mean() if values.size else np.nan)
            higher[title] = metric.higher_is_better
        rows.append(row)
        block.run_keys += sorted(group["tags.run_key"])
    table = pd.DataFrame(rows).fillna("")
    shown = [c for c in table.columns if not (table[c] == "—").all()]
    table = table[shown]
    block.table = table
    block.best = _mark_best(table, {k: v for k, v in means.items() if k in shown}, higher)
    block.notes = [
        CI_NOTE,
        "Dice: HECKTOR aggregated Dice on each patient's original CT grid (intersections and volumes "
        "pooled over the test split's patients; 'Dice' is the mean of GTVp and GTVn); patients: test "
        "patients over all seeds.",
        *[
            f"{_declared(key).title_for(reference_method)}: {_declared(key).meaning}."
            for key in section.extras
            if _arrow(_declared(key).title_for(reference_method), _declared(key).higher_is_better) in shown
        ],
        "Best value per column in bold; ↑ / ↓ say which direction is better.",
    ]
    return block


def _size(values: np.ndarray) -> str:
    if values.size == 0:
        return "—"
    mb = values.mean() / 1e6
    return f"{mb:,.2f} MB"


# --- paired ----------------------------------------------------------------------------------------


def paired_table(section: Section, sources: Sources) -> Block:
    runs = _runs(section, sources)
    block = Block(section)
    if runs.empty:
        return block
    reference = section.reference_method
    rows, pvalues = [], []
    groups = _groups(runs)
    for (method, backbone, variant), group in groups:
        if method == reference:
            continue
        ref = runs[(runs["tags.method"] == reference) & (runs["tags.backbone"] == backbone)]
        seeds = sorted(set(group["params.seed"]) & set(ref["params.seed"]))
        if not seeds:
            continue
        mine = group[group["params.seed"].isin(seeds)]
        theirs = ref[ref["params.seed"].isin(seeds)]
        for subset in section.subsets:
            a = _segmentation_rows(sources, section.suite, mine["tags.run_key"], subset)
            b = _segmentation_rows(sources, section.suite, theirs["tags.run_key"], subset)
            if a.empty or b.empty:
                continue
            patients = sorted(set(a["patient_id"]) & set(b["patient_id"]))
            a, b = a[a["patient_id"].isin(patients)], b[b["patient_id"].isin(patients)]
            ca, cb = stats.Counts.from_rows(a, patients), stats.Counts.from_rows(b, patients)
            for klass in section.classes:
                result = stats.paired(ca, cb, klass)
                mean_a = float(stats.aggregated_dice(ca, klass)(np.arange(len(patients))))
                mean_b = float(stats.aggregated_dice(cb, klass)(np.arange(len(patients))))
                row = _label(method, backbone, variant)
                row.update(
                    {
                        "input": LABELS[subset],
                        "class": CLASS_TITLES[klass],
                        "seeds": str(len(seeds)),
                        "patients": str(result.patients),
                        "Dice": _fmt(mean_a, 3),
                        f"Dice {reference}": _fmt(mean_b, 3),
                        "Δ Dice [95% CI]": _fmt(result.difference.estimate, 3) + _ci(result.difference),
                        "p": _p(result.p) + ("†" if result.test == "wilcoxon" else ""),
                    }
                )
                rows.append(row)
                pvalues.append(result.p)
        block.run_keys += sorted(set(mine["tags.run_key"]) | set(theirs["tags.run_key"]))
    if not rows:
        block.notes = [f"No run of {reference} shares a backbone and seed with the other methods."]
        return block
    for row, adjusted in zip(rows, stats.holm(pvalues), strict=True):
        row["Holm p"] = _p(adjusted)
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
        "0.05."
    ]
    block.run_keys = sorted(set(block.run_keys))
    return block


def _p(value: float) -> str:
    if not np.isfinite(value):
        return "—"
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


# --- missing modality ------------------------------------------------------------------------------


def _train_label(method: str, value) -> str:
    """What the method trained on, from its own schedule (methods without modality dropout ignore it)."""
    from types import SimpleNamespace

    try:
        weights = tuple(float(w) for w in ast.literal_eval(str(value)))
        schedule = METHODS.get(method)().train_schedule(
            SimpleNamespace(train=SimpleNamespace(modality_dropout=weights))
        )
    except (ValueError, SyntaxError, TypeError, KeyError):
        return str(value)
    subsets, probs = schedule
    if len(subsets) == 1:
        return f"{LABELS[subsets[0]]} only"
    return " / ".join(f"{LABELS[s]} {p:g}" for s, p in zip(subsets, probs, strict=True))


def missing_modality_table(section: Section, sources: Sources) -> Block:
    runs = _runs(section, sources)
    block = Block(section)
    if runs.empty:
        return block
    dropout = "params.train.modality_dropout"
    labels = (
        [_train_label(m, v) for m, v in zip(runs["tags.method"], runs[dropout], strict=True)]
        if dropout in runs
        else ""
    )
    runs = runs.assign(train=labels)
    rows, means = [], {}
    for (method, backbone, variant), group in _groups(runs, drop=(dropout,)):
        for train, part in group.groupby("train", sort=True):
            row = _label(method, backbone, variant)
            row["trained on"] = train
            row["seeds"] = str(part["params.seed"].nunique())
            full = part.get("metrics.dice_hecktor/ctpet/mean")
            for subset in section.subsets:
                title = _arrow(f"Dice {LABELS[subset]}", True)
                values = _values(part, f"dice_hecktor/{subset}/mean")
                interval, _ = _dice_interval(sources, section.suite, part, subset, "mean")
                row[title] = _mean_std(values) + (_ci(interval) if interval and values.size else "")
                means.setdefault(title, []).append(values.mean() if values.size else np.nan)
                if subset != SUBSETS[0] and full is not None:
                    key = f"metrics.dice_hecktor/{subset}/mean"
                    if key in part:
                        with np.errstate(invalid="ignore", divide="ignore"):
                            drop = (100.0 * (1.0 - part[key] / full)).dropna().to_numpy(dtype=float)
                        drop = drop[np.isfinite(drop)]
                        row[_arrow(f"drop {LABELS[subset]} %", False)] = _mean_std(drop, 1)
            rows.append(row)
        block.run_keys += sorted(group["tags.run_key"])
    table = pd.DataFrame(rows).fillna("—")
    block.table = table
    block.best = _mark_best(table, means, dict.fromkeys(means, True))
    block.notes = [
        CI_NOTE,
        "Trained on: the input subsets the method trained with (train.modality_dropout: CT+PET / CT / "
        "PET draw probabilities). drop X %: 100 x (1 - Dice on X / Dice on CT+PET), per seed, then "
        "averaged; a method that does not accept an input has no cell.",
    ]
    return block


# --- continual -------------------------------------------------------------------------------------


def continual_block(section: Section, sources: Sources) -> Block:
    import matplotlib.pyplot as plt

    runs = _runs(section, sources)
    block = Block(section)
    if runs.empty or not any(c.startswith("metrics.cl/") for c in runs.columns):
        return block
    rows, panels = [], []
    for (method, backbone, variant), group in _groups(runs):
        for subset in section.subsets:
            acc = _values(group, f"cl/{subset}/acc")
            if acc.size == 0:
                continue
            row = {**_label(method, backbone, variant), "input": LABELS[subset]}
            row["seeds"] = str(group["params.seed"].nunique())
            for name, title, higher in (
                ("acc", "ACC", True),
                ("bwt", "BWT", True),
                ("forgetting", "forgetting", False),
            ):
                interval = stats.seed_interval(_values(group, f"cl/{subset}/{name}"))
                row[_arrow(title, higher)] = _fmt(interval.estimate, 3) + _ci(interval)
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


# --- rank and Pareto -------------------------------------------------------------------------------


def rank_block(section: Section, sources: Sources) -> Block:
    import matplotlib.pyplot as plt

    runs = _runs(section, sources)
    block = Block(section)
    x = f"params.{section.x}"
    if runs.empty or x not in runs:
        return block
    rows, lines = [], {}
    for (method, backbone, variant), group in _groups(runs, drop=(x,)):
        for value, part in sorted(group.groupby(x), key=lambda kv: float(kv[0])):
            values = _values(part, f"dice_hecktor/{section.subset}/{section.klass}")
            interval, n = _dice_interval(sources, section.suite, part, section.subset, section.klass)
            params = _values(part, "params_trainable")
            row = {
                **_label(method, backbone, variant),
                section.x: value,
                "seeds": str(part["params.seed"].nunique()),
            }
            row[_arrow(_dice_title(section.subset, section.klass), True)] = _mean_std(values) + (
                _ci(interval) if interval and values.size else ""
            )
            row["trainable"] = _mean_std(params, 0)
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
        for name, points in lines.items():
            xs, ys, lo, hi = map(np.array, zip(*points, strict=True))
            err = np.vstack([ys - np.where(np.isfinite(lo), lo, ys), np.where(np.isfinite(hi), hi, ys) - ys])
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(section.x)
        ax.set_ylabel(_dice_title(section.subset, section.klass))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        block.figures.append(
            Figure("rank", f"{_dice_title(section.subset, section.klass)} against {section.x}", fig)
        )
    return block


def pareto_block(section: Section, sources: Sources) -> Block:
    import matplotlib.pyplot as plt

    block = Block(section)
    points = []
    metric = f"dice_hecktor/{section.subset}/{section.klass}"
    for suite in section.all_suites:
        runs = _runs(section, sources, suite)
        if runs.empty:
            continue
        for (method, backbone, variant), group in _groups(runs):
            dice, params = _values(group, metric), _values(group, "params_trainable")
            if dice.size and params.size:
                points.append(
                    {
                        "suite": suite,
                        **_label(method, backbone, variant),
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
    ).rename(
        columns={"dice": _arrow(_dice_title(section.subset, section.klass), True), "front": "Pareto front"}
    )
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
    ax.set_ylabel(_dice_title(section.subset, section.klass))
    ax.grid(alpha=0.3)
    block.figures.append(Figure("pareto", "Dice against trainable parameters (front in red)", fig))
    return block


# --- prognosis -------------------------------------------------------------------------------------


def prognosis_block(section: Section, sources: Sources) -> Block:
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts
    from lifelines.statistics import logrank_test

    runs = _runs(section, sources)
    block = Block(section)
    if runs.empty or "metrics.surv/cindex_harrell" not in runs:
        return block
    patients = sources.patients(section.suite)
    prognosis = patients[patients["kind"] == "prognosis"] if not patients.empty else patients
    rows, means, curves = [], {}, []
    extras = [
        ("surv/cindex_harrell_rel_ref_pct", 1),
        ("surv/cindex_uno", 3),
        ("surv/auc_730d", 3),
        ("surv/ibs", 3),
        ("cox_clinical/cindex_harrell", 3),
    ]
    for (method, backbone, variant), group in _groups(runs):
        row = {**_label(method, backbone, variant), "seeds": str(group["params.seed"].nunique())}
        mine = (
            prognosis[prognosis["run_key"].isin(set(group["tags.run_key"]))]
            if not prognosis.empty
            else prognosis
        )
        test = mine[mine["split"] == "test"] if not mine.empty else mine
        row["test patients"] = str(test["patient_id"].nunique()) if not test.empty else "—"
        values = _values(group, "surv/cindex_harrell")
        interval = None
        if not test.empty:
            patients = sorted(test["patient_id"].unique())
            survival = stats.Survival.from_rows(mine, patients)
            interval = stats.method_interval(
                stats.harrell_per_seed(survival), survival.tested, C_SHARED_RESAMPLES, C_RESAMPLES
            )
        title = _arrow("C-index", True)
        row[title] = _mean_std(values) + (_ci(interval) if interval else "")
        means.setdefault(title, []).append(values.mean() if values.size else np.nan)
        for key, digits in extras:
            metric = _declared(key)
            column = _arrow(metric.title_for(reference_method), metric.higher_is_better)
            row[column] = _mean_std(_values(group, key), digits)
        rows.append(row)
        block.run_keys += sorted(group["tags.run_key"])
        if not mine.empty:
            first = sorted(mine["seed"].unique())[0]
            curves.append((f"{method} {backbone} {variant}".strip(), first, mine[mine["seed"] == first]))
    table = pd.DataFrame(rows).fillna("—")
    shown = [c for c in table.columns if not (table[c] == "—").all()]
    block.table = table[shown]
    block.best = _mark_best(
        block.table, {k: v for k, v in means.items() if k in shown}, dict.fromkeys(means, True)
    )
    block.notes = [
        "C-index: Harrell's on the test patients, mean ± std over seeds [95% CI about the method: t over "
        "seeds of each seed's C on its test split, plus the covariance of patients several seeds tested; "
        "one seed (†): BCa bootstrap over its test patients, 1,999 resamples, the network fixed]. "
        "Uno C: Uno's IPCW C (censoring from the training split, truncated at its 90th percentile of "
        "follow-up), mean ± std over seeds (each run logs its own percentile interval). "
        "ΔC: change relative to the CT-only model's C on the same seed, as the papers state it. "
        "Kaplan-Meier: test patients split at the median risk of the same run's training patients "
        "(first seed of each row), log-rank p between the groups."
    ]
    if curves:
        cols = min(3, len(curves))
        nrows = -(-len(curves) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 4.4 * nrows), squeeze=False)
        for ax in axes.flat[len(curves) :]:
            ax.axis("off")
        for ax, (name, seed, rows_) in zip(axes.flat, curves, strict=False):
            cut = rows_.loc[rows_["split"] == "train", "risk"].median()
            test = rows_[rows_["split"] == "test"]
            high = test["risk"] > cut
            fitters = []
            for label, part in (("low risk", test[~high]), ("high risk", test[high])):
                if part.empty:
                    continue
                km = KaplanMeierFitter(label=label).fit(part["time"], part["event"])
                km.plot_survival_function(ax=ax, ci_show=False)
                fitters.append(km)
            p = float("nan")
            if high.any() and (~high).any():
                p = logrank_test(
                    test.loc[~high, "time"],
                    test.loc[high, "time"],
                    test.loc[~high, "event"],
                    test.loc[high, "event"],
                ).p_value
            if fitters:
                add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk"])
            ax.set_title(f"{name} (seed {seed})\nlog-rank p = {_p(p)}", fontsize=9)
            ax.set_xlabel("days")
        fig.tight_layout()
        block.figures.append(
            Figure("km", "Kaplan-Meier curves of predicted low / high risk (test patients)", fig)
        )
    return block


BUILDERS: dict[str, Callable[[Section, Sources], Block]] = {
    "main": main_table,
    "paired": paired_table,
    "missing-modality": missing_modality_table,
    "continual": continual_block,
    "rank": rank_block,
    "pareto": pareto_block,
    "prognosis": prognosis_block,
}
