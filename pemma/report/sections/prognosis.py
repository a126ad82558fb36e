"""prognosis: Harrell's C with the method-level interval, its change vs CT-only, Uno's C, AUC, IBS;
Kaplan-Meier curves of predicted low / high risk with a log-rank p."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pemma.methods import reference_method
from pemma.report import stats
from pemma.report.sections.base import Block, Figure, Section, section_kind
from pemma.report.sections.common import (
    arrow,
    ci,
    declared,
    grouped,
    mark_best,
    mean_std,
    p_text,
    row_label,
    runs_of,
    values_of,
)
from pemma.report.sources import Sources

# Harrell's C (lifelines, ~0.3 ms a call) is not vectorised: 1,999 resamples keep a paper-scale report
# within a minute. Uno's C (scikit-survival, ~3 ms a call, mostly input validation) gets no report
# interval: each run logs its own percentile interval.
C_RESAMPLES = 1999
C_SHARED_RESAMPLES = 500  # the shared-patient covariance of several seeds' C (a variance, not a tail)


@section_kind(
    "prognosis",
    "Harrell's C (95% CI about the method), its change vs CT-only, Uno's C, AUC, IBS; Kaplan-Meier "
    "curves of predicted low / high risk with a log-rank p",
)
def prognosis_block(section: Section, sources: Sources) -> Block:
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts
    from lifelines.statistics import logrank_test

    runs = runs_of(section, sources)
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
    for (method, backbone, variant), group in grouped(runs):
        row = {**row_label(method, backbone, variant), "seeds": str(group["params.seed"].nunique())}
        mine = (
            prognosis[prognosis["run_key"].isin(set(group["tags.run_key"]))]
            if not prognosis.empty
            else prognosis
        )
        test = mine[mine["split"] == "test"] if not mine.empty else mine
        row["test patients"] = str(test["patient_id"].nunique()) if not test.empty else "—"
        values = values_of(group, "surv/cindex_harrell")
        interval = None
        if not test.empty:
            patients = sorted(test["patient_id"].unique())
            survival = stats.Survival.from_rows(mine, patients)
            interval = stats.method_interval(
                stats.harrell_per_seed(survival), survival.tested, C_SHARED_RESAMPLES, C_RESAMPLES
            )
        title = arrow("C-index", True)
        row[title] = mean_std(values) + (ci(interval) if interval else "")
        means.setdefault(title, []).append(values.mean() if values.size else np.nan)
        for key, digits in extras:
            metric = declared(key)
            column = arrow(metric.title_for(reference_method), metric.higher_is_better)
            row[column] = mean_std(values_of(group, key), digits)
        rows.append(row)
        block.run_keys += sorted(group["tags.run_key"])
        if not mine.empty:
            first = sorted(mine["seed"].unique())[0]
            curves.append((f"{method} {backbone} {variant}".strip(), first, mine[mine["seed"] == first]))
    table = pd.DataFrame(rows).fillna("—")
    shown = [c for c in table.columns if not (table[c] == "—").all()]
    block.table = table[shown]
    block.best = mark_best(
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
            ax.set_title(f"{name} (seed {seed})\nlog-rank p = {p_text(p)}", fontsize=9)
            ax.set_xlabel("days")
        fig.tight_layout()
        block.figures.append(
            Figure("km", "Kaplan-Meier curves of predicted low / high risk (test patients)", fig)
        )
    return block
