"""Uncertainty over patients and seeds, and paired tests between methods.

The resampling unit is the patient. A unit of several seeds is scored per seed and averaged, so a
bootstrap draws patients (with replacement) from the union of the seeds' test splits and recomputes
every seed's statistic on the drawn patients that seed tested: with one fixed split that is the plain
patient bootstrap of the mean over seeds; with a split per seed, a patient counts in the seeds that
tested it. Intervals are BCa (scipy.stats.bootstrap) with a fixed generator, so a report regenerates
byte for byte.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

RESAMPLES = 9999
SEED = 20240613  # any fixed value: intervals must not change between regenerations


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    @property
    def defined(self) -> bool:
        return bool(np.isfinite(self.estimate))


def bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n: int, resamples: int = RESAMPLES) -> Interval:
    """BCa 95% interval of `statistic(idx)`, where idx (..., k) indexes the n patients along the last axis.

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

    @classmethod
    def from_rows(cls, rows: pd.DataFrame, patients: list[str] | None = None) -> Counts:
        """`rows`: per-patient segmentation rows of one subset and grid, with a `seed` column."""
        classes = sorted(rows["class"].unique())
        seeds = sorted(rows["seed"].unique())
        patients = patients or sorted(rows["patient_id"].unique())
        index = pd.MultiIndex.from_product([seeds, patients, classes])
        table = rows.set_index(["seed", "patient_id", "class"])
        table = table[~table.index.duplicated(keep="last")].reindex(index)
        shape = (len(seeds), len(patients), len(classes))

        def values(column: str, fill: float) -> np.ndarray:
            return table[column].astype(float).fillna(fill).to_numpy().reshape(shape)

        return cls(
            patients,
            classes,
            values("intersection_voxels", 0.0),
            values("prediction_voxels", 0.0) + values("truth_voxels", 0.0),
            values("truth_voxels", 0.0),
            values("dice", np.nan),
        )


def aggregated_dice(counts: Counts, klass: str = "mean") -> Callable[[np.ndarray], np.ndarray]:
    """HECKTOR aggregated Dice of the drawn patients, per seed, averaged over seeds.

    'mean' is the mean of the classes' values and undefined when any class is (as in the table)."""
    chosen = range(len(counts.classes)) if klass == "mean" else [counts.classes.index(klass)]

    def statistic(idx: np.ndarray) -> np.ndarray:
        inter = counts.intersection[:, idx][..., chosen].sum(axis=-2)  # (seeds, ..., classes)
        size = counts.size[:, idx][..., chosen].sum(axis=-2)
        truth = counts.truth[:, idx][..., chosen].sum(axis=-2)
        with np.errstate(invalid="ignore", divide="ignore"):
            dice = np.where(truth > 0, 2.0 * inter / size, np.nan)
        return dice.mean(axis=-1).mean(axis=0)

    return statistic


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
    wilcoxon_p: float  # two-sided, per-patient Dice differences


def paired(method: Counts, reference: Counts, klass: str = "mean") -> Paired:
    """The method against the reference on the patients both tested, in the seeds both ran."""
    if method.patients != reference.patients:
        raise ValueError("paired counts must list the same patients in the same order")
    a, b = aggregated_dice(method, klass), aggregated_dice(reference, klass)
    n = len(method.patients)
    difference = bootstrap(lambda idx: a(idx) - b(idx), n)
    diffs = patient_dice(method) - patient_dice(reference)
    diffs = diffs[np.isfinite(diffs)]
    p = float("nan")
    if np.count_nonzero(diffs) > 0:
        p = float(stats.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue)
    return Paired(n, difference, p)


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
    """Mean over seeds with a 95% t interval (for figures with no per-patient rows, e.g. ACC / BWT)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Interval(np.nan, np.nan, np.nan)
    mean = float(values.mean())
    if values.size < 2:
        return Interval(mean, np.nan, np.nan)
    low, high = stats.t.interval(0.95, values.size - 1, loc=mean, scale=stats.sem(values))
    return Interval(mean, float(low), float(high))


def harrell(rows: pd.DataFrame, patients: list[str]) -> Callable[[np.ndarray], np.ndarray]:
    """Harrell's C (the prognosis task's own function) of each seed on the drawn test patients it
    tested, averaged over seeds. `rows`: per-patient prognosis rows (split, risk, time, event, seed).

    Not vectorised (one lifelines call per seed and resample): use a few thousand resamples."""
    from pemma.metrics.survival import harrell_cindex

    position = {p: i for i, p in enumerate(patients)}
    test = rows[rows["split"] == "test"]
    per_seed = []
    for _, part in test.groupby("seed", sort=True):
        part = part[part["patient_id"].isin(position)]
        row_of = np.full(len(patients), -1)  # patient -> its row in this seed's test split, -1 if untested
        row_of[part["patient_id"].map(position).to_numpy()] = np.arange(len(part))
        arrays = (part[c].to_numpy(dtype=float) for c in ("time", "event", "risk"))
        per_seed.append((row_of, *arrays))

    def one(idx: np.ndarray) -> float:
        scores = []
        for row_of, time, event, risk in per_seed:
            chosen = row_of[idx]
            chosen = chosen[chosen >= 0]
            if chosen.size < 2 or event[chosen].sum() == 0:
                return np.nan
            try:
                scores.append(harrell_cindex(time[chosen], event[chosen], risk[chosen]))
            except (ValueError, ZeroDivisionError):  # no comparable pair in this draw
                return np.nan
        return float(np.mean(scores)) if scores else np.nan

    def statistic(idx: np.ndarray) -> np.ndarray:
        flat = idx.reshape(-1, idx.shape[-1])
        out = np.array([one(row) for row in flat])
        return out.reshape(idx.shape[:-1]) if idx.ndim > 1 else out[0]

    return statistic
