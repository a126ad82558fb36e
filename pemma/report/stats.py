"""Intervals about methods, not about the networks one run happened to train.

The estimand. A claim such as "PEMMA-LoRA is within 2% of early fusion" is about the methods trained
anew on new patients of this kind. Two sources of randomness are inside it: training (seed, thread
layout, float rounding amplified by a short schedule) and the patients a split happens to test. A
bootstrap over patients with the trained networks held fixed describes those networks only; it leaves
training out and under-covers the method-level quantity whenever seeds move the result (simulated in
python -m pemma.report.simulation: 25-80% coverage of a stated 95% at 0.02-0.05 Dice of seed-level
noise).

The method. Each seed is one replicate of the whole experiment: networks trained with that seed,
scored on that seed's test split. Its statistic d_s (a paired difference of aggregated Dice, a relative
drop, a difference of Harrell's C) is computed as the per-seed table computes it, and the estimate is
the mean over the k seeds. Its variance is

    Var(mean d) = Var(d_s) / k + c

where Var(d_s), estimated by the sample variance over seeds, already holds both the training variance
and the sampling variance of a seed's own patients (no variance component has to be pinned
separately), and c is the mean covariance between two seeds' statistics that comes from patients both
seeds tested: 0 when the seeds' test splits are disjoint, the whole patient-sampling variance when
every seed tests the same split. c is estimated, only where seeds share test patients, from a
bootstrap of the union of the test patients (each seed's statistic recomputed on the drawn patients it
tested). The 95% interval is Student's t with Satterthwaite's degrees of freedom (k - 1 for the seed
term, patients - 1 for the shared term).

Few seeds. Three seeds cannot pin a seed-level variance, and the interval says so by widening: the t
quantile with 2 degrees of freedom is 4.30, not 1.96. A bootstrap over seeds would do the opposite (it
shrinks the variance by (k - 1) / k and reads normal-like quantiles: 76% coverage at 3 seeds, normal
seed values, in a quick check).
One seed estimates no training variance at all: there the interval is the patient bootstrap (BCa) with
the network fixed, marked as such (scope "network"), and no verdict is read from it.

The test that goes with an interval has the same unit: the t statistic over seeds (with the shared
term) for method-level rows, the Wilcoxon signed-rank test over patients for a single seed's network;
Holm across a table. Intervals regenerate byte for byte (fixed generators).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

RESAMPLES = 9999
SHARED_RESAMPLES = 2000  # the shared-patient covariance: a variance, not a tail, needs fewer draws
SEED = 20240613  # any fixed value: intervals must not change between regenerations
METHOD, NETWORK = "method", "network"


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    scope: str = NETWORK  # METHOD: training and patients inside it; NETWORK: the trained networks fixed
    seeds: int = 0
    se: float = np.nan  # method scope: the standard error behind the t interval
    df: float = np.nan

    @property
    def defined(self) -> bool:
        return bool(np.isfinite(self.estimate))

    @property
    def bounded(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high))

    def p_value(self, null: float = 0.0) -> float:
        """Two-sided p of `estimate == null` from the t statistic behind a method-level interval."""
        if self.scope != METHOD or not (np.isfinite(self.se) and self.se > 0 and np.isfinite(self.df)):
            return float("nan")
        return float(2 * stats.t.sf(abs(self.estimate - null) / self.se, self.df))


def method_interval(
    per_seed: Callable[[np.ndarray], np.ndarray],
    tested: np.ndarray,
    resamples: int = SHARED_RESAMPLES,
    network_resamples: int = RESAMPLES,
) -> Interval:
    """95% interval of the mean over seeds of a per-seed statistic, training randomness included.

    `per_seed(idx)` maps patient indices (..., n) of the union of test patients to each seed's
    statistic on the drawn patients it tested, shape (..., k); `tested` (k, n) says which seed tested
    which patient. Seeds whose statistic is undefined are left out (the interval counts the others).
    Fewer than two defined seeds: the patient bootstrap with the network fixed (scope NETWORK)."""
    tested = np.asarray(tested, dtype=bool)
    n = tested.shape[1]
    d = np.asarray(per_seed(np.arange(n)), dtype=float)
    keep = np.isfinite(d)
    k = int(keep.sum())
    if k == 0:
        return Interval(np.nan, np.nan, np.nan, METHOD, 0)
    estimate = float(d[keep].mean())
    if k < 2:
        network = bootstrap(
            lambda idx: np.asarray(per_seed(idx))[..., keep].mean(axis=-1), n, network_resamples
        )
        return Interval(network.estimate, network.low, network.high, NETWORK, 1)
    between = float(d[keep].var(ddof=1)) / k
    shared, n_shared = _shared_covariance(per_seed, tested, keep, resamples)
    if not np.isfinite(shared):
        return Interval(estimate, np.nan, np.nan, METHOD, k)
    se2 = between + shared
    if se2 <= 0:  # every seed gave the same value and no patient is shared: nothing to resample
        return Interval(estimate, np.nan, np.nan, METHOD, k)
    # Welch-Satterthwaite; one shared patient gives the covariance term a single degree of freedom
    denominator = between**2 / (k - 1) + (shared**2 / max(n_shared - 1, 1) if shared > 0 else 0.0)
    df = se2**2 / denominator
    se = float(np.sqrt(se2))
    half = float(stats.t.ppf(0.975, df)) * se
    return Interval(estimate, estimate - half, estimate + half, METHOD, k, se, float(df))


def _shared_covariance(per_seed, tested: np.ndarray, keep: np.ndarray, resamples: int) -> tuple[float, int]:
    """(c, patients shared): the mean covariance between two kept seeds' statistics over a bootstrap of
    the union of test patients, floored at 0; (0, 0) when no patient is tested by two kept seeds; NaN
    when most draws leave some seed's statistic undefined (then there is no interval)."""
    shared = tested[keep].sum(axis=0) >= 2
    if not shared.any():
        return 0.0, 0
    n = tested.shape[1]
    rng = np.random.default_rng(SEED)
    draws = []
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for start in range(0, resamples, 500):
            idx = rng.integers(0, n, size=(min(500, resamples - start), n))
            draws.append(np.asarray(per_seed(idx), dtype=float)[:, keep])
    values = np.concatenate(draws)
    values = values[np.isfinite(values).all(axis=1)]
    k = values.shape[1]
    if values.shape[0] < 0.5 * resamples:  # most draws leave a seed undefined: no honest estimate
        return float("nan"), int(shared.sum())
    cov = np.cov(values, rowvar=False)
    mean_off_diagonal = (cov.sum() - np.trace(cov)) / (k * (k - 1))
    return max(float(mean_off_diagonal), 0.0), int(shared.sum())


def bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n: int, resamples: int = RESAMPLES) -> Interval:
    """BCa 95% interval over patients of `statistic(idx)` (idx (..., k) indexes the n patients along
    the last axis), the trained networks held fixed: scope NETWORK.

    An undefined estimate, fewer than 3 patients or a degenerate resampling distribution gives NaN
    bounds (never a zero-width interval presented as certainty). Where BCa is undefined because
    some resamples are, the percentile interval of the defined ones (see _percentile_of_defined)."""
    estimate = float(statistic(np.arange(n)))
    if n < 3 or not np.isfinite(estimate):
        return Interval(estimate, np.nan, np.nan)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")  # degenerate or NaN resamples: the NaN bounds say so
        result = stats.bootstrap(
            (np.arange(n),),
            lambda idx, axis=-1: statistic(idx),
            n_resamples=resamples,
            method="BCa",
            vectorized=True,
            batch=1000,
            rng=np.random.default_rng(SEED),
        )
    low, high = result.confidence_interval
    if np.isfinite(low) and np.isfinite(high):
        return Interval(estimate, float(low), float(high))
    return _percentile_of_defined(statistic, n, resamples)


def _percentile_of_defined(statistic, n: int, resamples: int) -> Interval:
    """Where some resamples leave the statistic undefined (a seed's drawn patients hold no voxel of a
    class), BCa is undefined too: the percentile interval of the defined resamples, kept only if
    at least 90% of them are defined (the same generator, so it regenerates identically)."""
    rng = np.random.default_rng(SEED)
    values = np.concatenate(
        [
            np.asarray(statistic(rng.integers(0, n, size=(min(1000, resamples - i), n))), dtype=float)
            for i in range(0, resamples, 1000)
        ]
    )
    defined = values[np.isfinite(values)]
    estimate = float(statistic(np.arange(n)))
    if defined.size < 0.9 * values.size or np.ptp(defined) == 0:
        return Interval(estimate, np.nan, np.nan)
    low, high = np.quantile(defined, [0.025, 0.975])
    return Interval(estimate, float(low), float(high))


@dataclass(frozen=True)
class Counts:
    """Voxel counts per seed x patient x class (zero where a seed did not test a patient)."""

    patients: list[str]
    classes: list[str]
    intersection: np.ndarray  # (seeds, patients, classes)
    size: np.ndarray  # |P| + |G|
    truth: np.ndarray
    dice: np.ndarray  # per-patient Dice, NaN where undefined or untested
    seeds: tuple[int, ...] = ()
    tested: np.ndarray | None = None  # (seeds, patients): the seed's test split held the patient

    @classmethod
    def from_rows(cls, rows: pd.DataFrame, patients: list[str] | None = None) -> Counts:
        """`rows`: per-patient segmentation rows of one subset and grid, with a `seed` column."""
        classes = sorted(rows["class"].unique())
        seeds = sorted(int(s) for s in rows["seed"].unique())
        patients = patients or sorted(rows["patient_id"].unique())
        index = pd.MultiIndex.from_product([seeds, patients, classes])
        table = rows.assign(seed=rows["seed"].astype(int)).set_index(["seed", "patient_id", "class"])
        table = table[~table.index.duplicated(keep="last")].reindex(index)
        shape = (len(seeds), len(patients), len(classes))

        def values(column: str, fill: float) -> np.ndarray:
            return table[column].astype(float).fillna(fill).to_numpy().reshape(shape)

        present = table["truth_voxels"].notna().to_numpy().reshape(shape).any(axis=-1)
        return cls(
            patients,
            classes,
            values("intersection_voxels", 0.0),
            values("prediction_voxels", 0.0) + values("truth_voxels", 0.0),
            values("truth_voxels", 0.0),
            values("dice", np.nan),
            tuple(seeds),
            present,
        )

    def tested_mask(self) -> np.ndarray:
        if self.tested is not None:
            return self.tested
        return (self.size > 0).any(axis=-1)


def aggregated_dice_per_seed(counts: Counts, klass: str = "mean") -> Callable[[np.ndarray], np.ndarray]:
    """Each seed's HECKTOR aggregated Dice on the drawn patients it tested: idx (..., n) -> (..., seeds).

    'mean' is the mean of the classes' values and undefined when any class is (as in the table)."""
    chosen = range(len(counts.classes)) if klass == "mean" else [counts.classes.index(klass)]

    def statistic(idx: np.ndarray) -> np.ndarray:
        inter = counts.intersection[:, idx][..., chosen].sum(axis=-2)  # (seeds, ..., classes)
        size = counts.size[:, idx][..., chosen].sum(axis=-2)
        truth = counts.truth[:, idx][..., chosen].sum(axis=-2)
        with np.errstate(invalid="ignore", divide="ignore"):
            dice = np.where(truth > 0, 2.0 * inter / size, np.nan)
        return np.moveaxis(dice.mean(axis=-1), 0, -1)

    return statistic


def aggregated_dice(counts: Counts, klass: str = "mean") -> Callable[[np.ndarray], np.ndarray]:
    """The mean over seeds of aggregated_dice_per_seed: idx (..., n) -> (...)."""
    per_seed = aggregated_dice_per_seed(counts, klass)
    return lambda idx: per_seed(idx).mean(axis=-1)


def dice_interval(counts: Counts, klass: str = "mean") -> Interval:
    """Method-level interval of a method's aggregated Dice (several seeds), or the network's (one)."""
    return method_interval(aggregated_dice_per_seed(counts, klass), counts.tested_mask())


def patient_dice(counts: Counts) -> np.ndarray:
    """Per patient: the mean over classes of its defined per-patient Dice, averaged over the seeds
    that tested it (NaN if it has none)."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are the NaN we want
        return np.nanmean(np.nanmean(counts.dice, axis=-1), axis=0)


@dataclass(frozen=True)
class Paired:
    patients: int
    difference: Interval  # aggregated Dice of the method minus the reference's, same patients and seeds
    p: float  # two-sided: t over seeds (method scope) or Wilcoxon over patients (one seed)
    test: str  # "t" or "wilcoxon"

    @property
    def wilcoxon_p(self) -> float:  # the name older callers read
        return self.p


def paired(method: Counts, reference: Counts, klass: str = "mean") -> Paired:
    """The method against the reference on the patients both tested, in the seeds both ran."""
    if method.patients != reference.patients:
        raise ValueError("paired counts must list the same patients in the same order")
    if method.seeds and reference.seeds and method.seeds != reference.seeds:
        raise ValueError(f"paired counts must hold the same seeds: {method.seeds} and {reference.seeds}")
    a, b = aggregated_dice_per_seed(method, klass), aggregated_dice_per_seed(reference, klass)
    tested = method.tested_mask() & reference.tested_mask()
    difference = method_interval(lambda idx: a(idx) - b(idx), tested)
    if difference.scope == METHOD:
        return Paired(len(method.patients), difference, difference.p_value(), "t")
    diffs = patient_dice(method) - patient_dice(reference)
    diffs = diffs[np.isfinite(diffs)]
    p = float("nan")
    if np.count_nonzero(diffs) > 0:
        p = float(stats.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue)
    return Paired(len(method.patients), difference, p, "wilcoxon")


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment; NaN p-values stay NaN and do not count in the family."""
    p = np.asarray(pvalues, dtype=float)
    finite = np.flatnonzero(np.isfinite(p))
    adjusted = np.full_like(p, np.nan)
    m = len(finite)
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def seed_interval(values: np.ndarray) -> Interval:
    """Mean over seeds with a 95% t interval, for figures with no per-patient rows (R cells, ACC, BWT):
    method scope, with no shared-patient term (the per-seed values carry their own patients)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Interval(np.nan, np.nan, np.nan, METHOD, 0)
    mean = float(values.mean())
    if values.size < 2:
        return Interval(mean, np.nan, np.nan, METHOD, 1)
    se = float(stats.sem(values))
    if se == 0:
        return Interval(mean, np.nan, np.nan, METHOD, int(values.size))
    low, high = stats.t.interval(0.95, values.size - 1, loc=mean, scale=se)
    return Interval(mean, float(low), float(high), METHOD, int(values.size), se, float(values.size - 1))


@dataclass(frozen=True)
class Survival:
    """Per-seed prognosis test rows over one list of patients, for Harrell's C on drawn patients."""

    patients: list[str]
    seeds: tuple[int, ...]
    tested: np.ndarray  # (seeds, patients)
    per_seed: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]  # row_of, time, event, risk

    @classmethod
    def from_rows(cls, rows: pd.DataFrame, patients: list[str]) -> Survival:
        """`rows`: per-patient prognosis rows (split, risk, time, event, seed)."""
        position = {p: i for i, p in enumerate(patients)}
        test = rows[rows["split"] == "test"]
        seeds, tested, per_seed = [], [], []
        for seed, part in test.groupby("seed", sort=True):
            part = part[part["patient_id"].isin(position)]
            row_of = np.full(len(patients), -1)  # patient -> its row in this seed's test split
            row_of[part["patient_id"].map(position).to_numpy()] = np.arange(len(part))
            arrays = tuple(part[c].to_numpy(dtype=float) for c in ("time", "event", "risk"))
            seeds.append(int(seed))
            tested.append(row_of >= 0)
            per_seed.append((row_of, *arrays))
        mask = np.array(tested, dtype=bool).reshape(len(seeds), len(patients))
        return cls(patients, tuple(seeds), mask, per_seed)


def harrell_per_seed(survival: Survival) -> Callable[[np.ndarray], np.ndarray]:
    """Each seed's Harrell's C (the prognosis task's own function) on the drawn test patients it
    tested: idx (..., n) -> (..., seeds). Not vectorised (one call per seed and resample)."""
    from pemma.metrics.survival import harrell_cindex

    def one(row_of, time, event, risk, idx) -> float:
        chosen = row_of[idx]
        chosen = chosen[chosen >= 0]
        if chosen.size < 2 or event[chosen].sum() == 0:
            return np.nan
        try:
            return harrell_cindex(time[chosen], event[chosen], risk[chosen])
        except (ValueError, ZeroDivisionError):  # no comparable pair in this draw
            return np.nan

    def statistic(idx: np.ndarray) -> np.ndarray:
        flat = idx.reshape(-1, idx.shape[-1])
        out = np.array([[one(*seed, row) for seed in survival.per_seed] for row in flat], dtype=float)
        return out.reshape(*idx.shape[:-1], len(survival.per_seed))

    return statistic
