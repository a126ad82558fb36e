"""The PEMMA papers' claims as verdicts: supported, contradicted or inconclusive, with effect sizes.

A claims plan (reports/claims.yaml) names the units the claims need (shipped suites, filtered, at one
profile and seed list, with overrides) and the margins. Each claim reads those units' tracked runs
and per-patient tables and states its effect with a 95% interval about the methods (training
randomness and patient sampling both inside it: see pemma.report.stats); the verdict follows from
where the interval lies against the claim's threshold, never from the point estimate alone:

- supported: the whole interval is on the claim's side of the threshold;
- contradicted: the whole interval is on the other side;
- inconclusive: the interval straddles the threshold (at this sample size);
- not run: a unit the claim needs has no FINISHED run.

Each verdict is then judged again with each seed left out in turn: a verdict that any of those
changes is marked fragile, whatever its interval says (an interval is a statement at this many seeds;
a verdict that one seed carries would not survive a rerun).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from pemma.conditions import CONDITIONS
from pemma.config import parse_override
from pemma.files import write_atomic
from pemma.methods import METHODS, reference_method
from pemma.modalities import CTPET, LABELS
from pemma.report import stats
from pemma.report.claims.plan import CONTRADICTED, INCONCLUSIVE, NOT_RUN, SUPPORTED, ClaimsPlan, select
from pemma.report.markdown import markdown_table
from pemma.report.sources import Sources


@dataclass
class Verdict:
    claim: str
    effect: str = ""
    basis: str = ""
    verdict: str = NOT_RUN
    test: str = ""
    stability: str = ""


def decide(interval: stats.Interval, threshold: float, above: bool) -> str:
    """The claim holds when its effect lies above (or below) `threshold`. Only a method-level interval
    (several seeds) can decide; one seed's network interval says nothing about the method."""
    low, high = interval.low, interval.high
    if not (np.isfinite(low) and np.isfinite(high)) or interval.scope != stats.METHOD:
        return INCONCLUSIVE
    if above:
        return SUPPORTED if low > threshold else CONTRADICTED if high < threshold else INCONCLUSIVE
    return SUPPORTED if high < threshold else CONTRADICTED if low > threshold else INCONCLUSIVE


def _ci(interval: stats.Interval, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    e, lo, hi = (v * scale for v in (interval.estimate, interval.low, interval.high))
    if not np.isfinite(lo):
        why = "one seed: no interval about the method" if interval.seeds == 1 else "no interval"
        return f"{e:+.{digits}f}{unit} [{why}]"
    return f"{e:+.{digits}f}{unit} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


# --- per-patient Dice helpers ----------------------------------------------------------------------


@dataclass
class Cohort:
    """Per-patient Dice counts of each method on one input subset, over the same patients and seeds."""

    counts: dict[str, stats.Counts] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)

    @property
    def patients(self) -> int:
        return len(next(iter(self.counts.values())).patients) if self.counts else 0

    def tested(self) -> np.ndarray:
        """(seeds, patients): tested by every method and subset of the cohort in that seed."""
        return np.logical_and.reduce([c.tested_mask() for c in self.counts.values()])


def pass_keys(rows: pd.DataFrame) -> pd.Series:
    """Each per-patient row's evaluation pass: its input subset (`ctpet`), or its condition at its
    magnitude as the metrics name it (`pet-shift-8mm`)."""
    units = {name: CONDITIONS.get(name).unit for name in rows["condition"].dropna().unique()}
    shifted = rows["magnitude"].notna()
    keys = rows["condition"].astype(object).copy()
    keys[shifted] = (
        rows.loc[shifted, "condition"]
        + "-"
        + rows.loc[shifted, "magnitude"].map("{:g}".format)
        + rows.loc[shifted, "condition"].map(units)
    )
    return keys


def _cohort(sources: Sources, suite: str, runs: pd.DataFrame, pairs: list[tuple[str, str]]) -> Cohort | None:
    """Counts for each (method, evaluation pass: an input subset or a condition key), restricted to
    the seeds every method ran and the patients every one of them tested; None when a method has no
    run."""
    if runs.empty:
        return None
    seeds = None
    for method in {m for m, _ in pairs}:
        mine = set(runs.loc[runs["tags.method"] == method, "params.seed"].astype(int))
        seeds = mine if seeds is None else seeds & mine
    if not seeds:
        return None
    patients = sources.patients(suite)
    if patients.empty:
        return None
    keys = set(runs.loc[runs["params.seed"].astype(int).isin(seeds), "tags.run_key"])
    rows = patients[
        (patients["kind"] == "segmentation")
        & (patients["grid"] == "original")
        & patients["run_key"].isin(keys)
    ]
    passes = pass_keys(rows)
    chosen = {}
    for method, subset in pairs:
        chosen[(method, subset)] = rows[(rows["method"] == method) & (passes == subset)]
        if chosen[(method, subset)].empty:
            return None
    common = sorted(set.intersection(*(set(r["patient_id"]) for r in chosen.values())))
    counts = {
        f"{m}/{s}": stats.Counts.from_rows(r[r["patient_id"].isin(common)], common)
        for (m, s), r in chosen.items()
    }
    if len({c.seeds for c in counts.values()}) > 1:
        return None  # a unit without per-patient rows: the seeds do not line up
    return Cohort(counts, sorted(seeds))


def _basis(cohort: Cohort) -> str:
    seeds = len(cohort.seeds)
    return f"{seeds} seed{'s' if seeds != 1 else ''}, {cohort.patients} test patients"


def _paired_dice(sources, suite, runs, method, reference, subset="ctpet"):
    cohort = _cohort(sources, suite, runs, [(method, subset), (reference, subset)])
    if cohort is None:
        return None, None, None
    a = stats.aggregated_dice_per_seed(cohort.counts[f"{method}/{subset}"])
    b = stats.aggregated_dice_per_seed(cohort.counts[f"{reference}/{subset}"])
    interval = stats.method_interval(lambda idx: a(idx) - b(idx), cohort.tested())
    return interval, float(np.nanmean(b(np.arange(cohort.patients)))), cohort


# --- the claims ------------------------------------------------------------------------------------

PAIRED_TEST = (
    "t over seeds of each seed's paired difference (aggregated Dice, CT+PET input, original grid), "
    "shared patients counted"
)
DROP_TEST = "t over seeds of each seed's 1 - Dice(alone) / Dice(CT+PET), shared patients counted"
C_TEST = "t over seeds of each seed's paired Harrell's C difference, shared patients counted"
C_RESAMPLES = 500  # the shared-patient term of a C difference (one lifelines call per seed and draw)


def claim_comparable(plan: ClaimsPlan, sources: Sources) -> list[Verdict]:
    runs = select(plan, sources, "main")
    rows = []
    statement = (
        f"1. PEMMA-LoRA's CT+PET Dice is within {plan.margin:.0%} (relative) of early fusion's "
        "(non-inferiority: the interval's lower end above -margin)"
    )
    interval, ref, cohort = _paired_dice(sources, "main", runs, "pemma-lora", reference_method("parameters"))
    if interval is None:
        rows.append(Verdict(statement))
    else:
        margin = plan.margin * ref
        rows.append(
            Verdict(
                statement,
                f"Δ Dice {_ci(interval)} vs early fusion's {ref:.3f}; margin -{margin:.3f}",
                _basis(cohort),
                decide(interval, -margin, above=True),
                PAIRED_TEST,
            )
        )
    statement = "1b. ... with about 8% of early fusion's trainable parameters (at most 10%)"
    logged = (
        runs.loc[runs["tags.method"] == "pemma-lora", "metrics.params_trainable_pct_of_reference"].dropna()
        if not runs.empty and "metrics.params_trainable_pct_of_reference" in runs
        else pd.Series(dtype=float)
    )
    counted = trainable_share(plan.sizes, plan.backbone, plan.overrides)
    here = (
        f"; {float(logged.mean()):.1f}% at the {plan.profile} profile's (the runs)"
        if not logged.empty
        else ""
    )
    rows.append(
        Verdict(
            statement,
            f"{counted:.1f}% at the {plan.sizes} profile's sizes{here}",
            f"parameter count at the {plan.sizes} profile (exact, no training, no sampling)",
            SUPPORTED if counted <= 10.0 else CONTRADICTED,
            "count of trainable parameters (pemma-bench params)",
            "exact",
        )
    )
    return rows


def claim_no_collapse(plan: ClaimsPlan, sources: Sources) -> list[Verdict]:
    runs = select(plan, sources, "main")
    methods = [m for m in plan.suite_methods("main") if len(METHODS.get(m).inputs()) == 3]
    rows = []
    for method in methods or ["pemma-lora"]:
        for subset in ("ct", "pet"):
            statement = (
                f"2. {method} trained on CT+PET and tested on {LABELS[subset]} alone keeps more than "
                f"{1 - plan.collapse:.0%} of its CT+PET Dice (relative drop below {plan.collapse:.0%})"
            )
            cohort = _cohort(sources, "main", runs, [(method, "ctpet"), (method, subset)])
            if cohort is None:
                rows.append(Verdict(statement))
                continue
            full_counts, alone_counts = cohort.counts[f"{method}/ctpet"], cohort.counts[f"{method}/{subset}"]
            tested = cohort.tested()
            if full_counts.truth[tested].sum() > 0 and alone_counts.intersection[tested].sum() == 0:
                # no overlap at all alone: a 100% drop is what every patient of every seed shows
                rows.append(
                    Verdict(
                        statement,
                        "drop 100% for every patient, every seed (no overlap at all)",
                        _basis(cohort),
                        CONTRADICTED if plan.collapse < 1 else INCONCLUSIVE,
                        "every patient at the bound: no sampling can move it",
                    )
                )
                continue
            full = stats.aggregated_dice_per_seed(full_counts)
            alone = stats.aggregated_dice_per_seed(alone_counts)

            def drop(idx, full=full, alone=alone):
                with np.errstate(invalid="ignore", divide="ignore"):
                    return 1.0 - alone(idx) / full(idx)

            interval = stats.method_interval(drop, tested)
            rows.append(
                Verdict(
                    statement,
                    f"drop {_ci(interval, 1, 100, '%')}",
                    _basis(cohort),
                    decide(interval, plan.collapse, above=False),
                    DROP_TEST,
                )
            )
    return rows


def claim_continual(plan: ClaimsPlan, sources: Sources) -> list[Verdict]:
    runs = select(plan, sources, "continual")
    key_before, key_after = "metrics.cl/pet/R/0/MDA", "metrics.cl/pet/R/1/MDA"
    first = (
        "3. After a CT-only stage on the next centre, PEMMA-LoRA's PET-only Dice on the adaptation "
        f"centre keeps more than {plan.keep:.0%} of its value before that stage"
    )
    second = (
        "3b. ... and is higher than early fusion's after the same stage (the papers: +28% Dice on PET); "
        "compared: R[after stage 1, adaptation centre] on PET input, PEMMA-LoRA - early fusion"
    )
    if runs.empty or key_after not in runs:
        return [Verdict(first), Verdict(second)]
    by_seed = runs.set_index(runs["params.seed"].astype(int))
    lora = by_seed[by_seed["tags.method"] == "pemma-lora"]
    ef = by_seed[by_seed["tags.method"] == reference_method("parameters")]
    rows = []
    if lora.empty:
        rows.append(Verdict(first))
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            kept = (lora[key_after] / lora[key_before]).to_numpy(dtype=float)
        interval = stats.seed_interval(kept)
        rows.append(
            Verdict(
                first,
                f"kept {_ci(interval, 1, 100, '%')}".replace("+", ""),
                f"{np.isfinite(kept).sum()} seeds (R cells have no per-patient rows)",
                decide(interval, plan.keep, above=True),
                "t interval over seeds of R[1, MDA] / R[0, MDA], PET input",
            )
        )
    seeds = sorted(set(lora.index) & set(ef.index))
    if not seeds:
        rows.append(Verdict(second))
    else:
        # The difference in Dice, not the ratio: early fusion's PET-only Dice after a CT-only stage can
        # be 0 for a seed, where a ratio is undefined and one seed's near-zero divisor swamps the rest.
        after_lora = lora.loc[seeds, key_after].to_numpy(dtype=float)
        after_ef = ef.loc[seeds, key_after].to_numpy(dtype=float)
        gain = after_lora - after_ef
        interval = stats.seed_interval(gain)
        defined = np.isfinite(gain)
        mean_ef = float(after_ef[defined].mean()) if defined.any() else float("nan")
        relative = 100.0 * interval.estimate / mean_ef if mean_ef else float("nan")
        rows.append(
            Verdict(
                second,
                f"Δ Dice {_ci(interval)} ({relative:+.0f}% of early fusion's mean {mean_ef:.3f})",
                f"{defined.sum()} seeds",
                decide(interval, 0.0, above=True),
                "t interval over seeds of the paired Dice difference (PET input, R[1, MDA])",
            )
        )
    return rows


def claim_prognosis(plan: ClaimsPlan, sources: Sources) -> list[Verdict]:
    runs = select(plan, sources, "prognosis")
    methods = [m for m in plan.suite_methods("prognosis") if m != reference_method("modalities")] or [
        "pemma-lora"
    ]
    patients = sources.patients("prognosis") if not runs.empty else pd.DataFrame()
    rows = []
    for method in methods:
        for ehr, paper in ((False, "+10%"), (True, "+23%")):
            inputs = "CT+PET+EHR" if ehr else "CT+PET"
            statement = (
                f"4. {method}'s C-index rises from CT (ct-only) to {inputs} (the papers: {paper} relative)"
            )
            if runs.empty or patients.empty:
                rows.append(Verdict(statement))
                continue
            ehr_column = runs.get("params.prognosis.ehr", pd.Series("False", index=runs.index)).astype(str)
            mine = runs[(runs["tags.method"] == method) & (ehr_column == str(ehr))]
            ref = runs[(runs["tags.method"] == reference_method("modalities")) & (ehr_column == "False")]
            seeds = sorted(set(mine["params.seed"].astype(int)) & set(ref["params.seed"].astype(int)))
            if not seeds:
                rows.append(Verdict(statement))
                continue

            def chosen(frame, seeds=seeds):
                keys = set(frame.loc[frame["params.seed"].astype(int).isin(seeds), "tags.run_key"])
                return patients[(patients["kind"] == "prognosis") & patients["run_key"].isin(keys)]

            a, b = chosen(mine), chosen(ref)
            test = sorted(
                set(a.loc[a["split"] == "test", "patient_id"])
                & set(b.loc[b["split"] == "test", "patient_id"])
            )
            sa, sb = stats.Survival.from_rows(a, test), stats.Survival.from_rows(b, test)
            if sa.seeds != sb.seeds or not test:
                rows.append(Verdict(statement))
                continue
            ca, cb = stats.harrell_per_seed(sa), stats.harrell_per_seed(sb)
            interval = stats.method_interval(
                lambda idx, ca=ca, cb=cb: ca(idx) - cb(idx), sa.tested & sb.tested, resamples=C_RESAMPLES
            )
            base = float(np.nanmean(cb(np.arange(len(test)))))
            relative = 100.0 * interval.estimate / base if base else float("nan")
            rows.append(
                Verdict(
                    statement,
                    f"ΔC {_ci(interval)} ({relative:+.1f}% of CT-only's {base:.3f})",
                    f"{len(seeds)} seeds, {len(test)} test patients",
                    decide(interval, 0.0, above=True),
                    C_TEST,
                )
            )
    return rows


SHIFT_TEST = (
    "t over seeds of each seed's difference of relative drops, 1 - Dice(shifted) / Dice(CT+PET) "
    "(aggregated Dice, original grid), shared patients counted"
)


def question_shift(plan: ClaimsPlan, sources: Sources) -> list[Verdict]:
    """An open question of the papers, judged like a claim: does PEMMA-LoRA lose less CT+PET Dice than
    early fusion when PET is misregistered by `plan.shift_mm` at test time (no retraining)?"""
    reference, shifted = reference_method("parameters"), CONDITIONS.get("pet-shift").key(plan.shift_mm)
    statement = (
        f"Q1. Open question (the papers do not ask it): with PET misregistered by {plan.shift_mm:g} mm at "
        f"test time, does PEMMA-LoRA lose less of its CT+PET Dice than early fusion? compared: early "
        "fusion's relative drop - PEMMA-LoRA's"
    )
    runs = select(plan, sources, "robustness")
    pairs = [(m, p) for m in ("pemma-lora", reference) for p in (CTPET, shifted)]
    cohort = _cohort(sources, "robustness", runs, pairs)
    if cohort is None:
        return [Verdict(statement)]
    dice = {key: stats.aggregated_dice_per_seed(counts) for key, counts in cohort.counts.items()}

    def drop(method: str, idx) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return 1.0 - dice[f"{method}/{shifted}"](idx) / dice[f"{method}/{CTPET}"](idx)

    every = np.arange(cohort.patients)
    interval = stats.method_interval(
        lambda idx: drop(reference, idx) - drop("pemma-lora", idx), cohort.tested()
    )
    return [
        Verdict(
            statement,
            f"Δ drop {_ci(interval, 1, 100, ' pts')} (mean drops: early fusion "
            f"{100 * np.nanmean(drop(reference, every)):.0f}%, PEMMA-LoRA "
            f"{100 * np.nanmean(drop('pemma-lora', every)):.0f}%)",
            _basis(cohort),
            decide(interval, 0.0, above=True),
            SHIFT_TEST,
        )
    ]


def _paired_claim(statement: str, method: str, reference: str, paper: str = "") -> Callable:
    def claim(plan: ClaimsPlan, sources: Sources) -> list[Verdict]:
        runs = select(plan, sources, "main")
        interval, ref, cohort = _paired_dice(sources, "main", runs, method, reference)
        if interval is None:
            return [Verdict(statement)]
        relative = 100.0 * interval.estimate / ref if ref else float("nan")
        return [
            Verdict(
                statement,
                f"Δ Dice {_ci(interval)} ({relative:+.1f}% of {reference}'s {ref:.3f}){paper}",
                _basis(cohort),
                decide(interval, 0.0, above=True),
                PAIRED_TEST,
            )
        ]

    return claim


CLAIMS: tuple[Callable[[ClaimsPlan, Sources], list[Verdict]], ...] = (
    claim_comparable,
    claim_no_collapse,
    claim_continual,
    claim_prognosis,
    _paired_claim(
        "5. PEMMA-LoRA beats early fusion widened from the CT base with LoRA at PEMMA's budget "
        "(early-fusion-lora; the comparison the papers leave out)",
        "pemma-lora",
        "early-fusion-lora",
    ),
    _paired_claim("6. PEMMA-DoRA beats PEMMA-LoRA (the papers: +2-3% Dice)", "pemma-dora", "pemma-lora"),
    question_shift,
)


def judge(plan: ClaimsPlan, sources: Sources) -> pd.DataFrame:
    """One row per claim: statement, effect, basis, verdict, test."""
    rows = [verdict for claim in CLAIMS for verdict in claim(plan, sources)]
    return pd.DataFrame([vars(r) for r in rows])


def verdict_table(plan: ClaimsPlan, sources: Sources) -> pd.DataFrame:
    """judge(), with each verdict's stability: the verdicts judged again with each seed left out."""
    table = judge(plan, sources)
    if len(plan.seeds) < 2:
        table["stability"] = table["stability"].where(table["stability"] != "", "one seed: not assessed")
        return table
    without = {
        seed: judge(replace(plan, seeds=tuple(s for s in plan.seeds if s != seed)), sources)
        for seed in plan.seeds
    }
    table["stability"] = [
        row.stability or _stability(row.claim, row.verdict, without) for row in table.itertuples(index=False)
    ]
    return table


def _stability(claim: str, verdict: str, without: dict[int, pd.DataFrame]) -> str:
    if verdict == NOT_RUN:
        return "—"
    changed = []
    for seed, other in without.items():
        match = other.loc[other["claim"] == claim, "verdict"]
        moved = match.iloc[0] if not match.empty else NOT_RUN
        if moved != verdict:
            changed.append(f"without seed {seed}: {moved}")
    if changed:
        return "fragile (" + "; ".join(changed) + ")"
    return f"robust (each of {len(without)} seeds left out)"


@cache
def trainable_share(profile: str, backbone: str, overrides: tuple[str, ...] = ()) -> float:
    """PEMMA-LoRA's trainable parameters as a % of early fusion's, counted on models built at
    `profile`'s sizes (no training; the plan's adapter overrides apply, its data overrides do not
    matter)."""
    from pemma.bench.measures import parameter_table
    from pemma.config import resolve

    reference = reference_method("parameters")
    model_overrides = [parse_override(o) for o in overrides if not o.startswith("data.")]
    cfg = resolve({"profile": profile, "backbone": backbone}, *model_overrides)
    table = parameter_table(cfg, ["pemma-lora", reference]).set_index("method")
    return float(table.loc["pemma-lora", f"trainable % of {reference}"])


def to_markdown(plan: ClaimsPlan, table: pd.DataFrame) -> str:
    stability = table["stability"] if "stability" in table else pd.Series("", index=table.index)
    shown = pd.DataFrame(
        {
            "claim": table["claim"],
            "measured effect [95% CI]": table["effect"].replace("", "—"),
            "basis": table["basis"].replace("", "—"),
            "verdict": "**" + table["verdict"] + "**",
            "stability": [f"**{s}**" if s.startswith("fragile") else s or "—" for s in stability],
            "test": table["test"].replace("", "—"),
        }
    )
    fragile = int(stability.str.startswith("fragile").sum())
    counts = table["verdict"].value_counts()
    summary = ", ".join(f"{counts.get(v, 0)} {v}" for v in (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN))
    return "\n".join(
        [
            f"## {plan.title}",
            "",
            f"Profile {plan.profile}, backbone {plan.backbone}, seeds {', '.join(map(str, plan.seeds))}"
            + (f", overrides {' '.join(plan.overrides)}" if plan.overrides else "")
            + f". Verdicts: {summary}; {fragile} fragile.",
            "",
            markdown_table(shown),
            "",
            "Intervals are about the methods, not the networks one run trained: each seed's statistic on "
            "its own test split, a t interval over seeds (its spread holds training and patient sampling), "
            "plus the covariance of patients two seeds both tested. A verdict follows from where the 95% "
            "interval lies against the claim's threshold: supported when all of it is on the claim's side, "
            "contradicted when all of it is on the other side, inconclusive when it straddles the threshold "
            "(at this many seeds and patients); not run when a unit the claim needs has no FINISHED run. "
            "Stability: the verdict judged again with each seed left out; fragile when any of those "
            "differs (read those rows as open, whatever their interval says).",
            "",
        ]
    )


def write_claims(plan: ClaimsPlan, table: pd.DataFrame, path: Path) -> Path:
    text = to_markdown(plan, table)
    write_atomic(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return Path(path)
