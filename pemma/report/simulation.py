"""Simulated per-patient voxel counts with a known method-level truth: the test of an interval method.

Model (per class c, method m, seed s, patient i): truth volume G ~ lognormal, a prediction of the same
volume, overlap share q = base[m, c] + a[i, c] + e[m, s, i, c] + u[m, s], so the patient's Dice is q and
the population's aggregated Dice is base[m, c] exactly (q is independent of G). a: patient difficulty
shared by methods (SD 0.08), e: patient noise (SD 0.05), u: the seed effect, training randomness (SD
`seed_sd` Dice per method, so a paired difference moves by sqrt(2) times that between seeds). Each seed
tests its own split (as the claims plan's suites do), or every seed the same split (`shared`).

`python -m pemma.report.simulation` prints the coverage and mean width of the shipped method-level
interval and of the fixed-network patient bootstrap the claims used before, over the grid the tests
check.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pemma.report import stats
from pemma.report.markdown import markdown_table

SIMULATIONS = 500
BASE = {"method": np.array([0.70, 0.45]), "reference": np.array([0.72, 0.50])}  # GTVp, GTVn
ALONE = np.array([0.40, 0.20])  # the method tested on one modality (claim 2's drop)
TRUE_DIFFERENCE = float(np.mean(BASE["method"] - BASE["reference"]))
TRUE_DROP = float(1 - ALONE.mean() / BASE["method"].mean())


def simulate(rng, seeds: int, patients: int, seed_sd: float, shared: bool):
    """Counts of the method, the reference and the method on one modality; (seeds, union, classes)."""
    union = patients if shared else seeds * patients
    volume = rng.lognormal(6.0, 0.5, size=(union, 2))
    difficulty = rng.normal(0.0, 0.08, size=(union, 2))
    tested = np.zeros((seeds, union), dtype=bool)
    for s in range(seeds):
        tested[s, slice(None) if shared else slice(s * patients, (s + 1) * patients)] = True
    counts = {}
    for name, base in (("method", BASE["method"]), ("reference", BASE["reference"]), ("alone", ALONE)):
        quality = (
            base
            + difficulty
            + rng.normal(0.0, 0.05, size=(seeds, union, 2))
            + rng.normal(0.0, seed_sd, size=(seeds, 1, 1))
        )
        inter = np.where(tested[..., None], quality * volume, 0.0)
        size = np.where(tested[..., None], 2.0 * volume, 0.0)
        truth = np.where(tested[..., None], volume, 0.0)
        counts[name] = stats.Counts(
            [f"P{i}" for i in range(union)],
            ["gtvn", "gtvp"],
            inter,
            size,
            truth,
            np.where(tested[..., None], quality, np.nan),
            tuple(range(seeds)),
            tested,
        )
    return counts


def relative_drop(counts):
    full = stats.aggregated_dice_per_seed(counts["method"])
    alone = stats.aggregated_dice_per_seed(counts["alone"])
    return lambda idx: 1.0 - alone(idx) / full(idx)


def coverage(seeds, patients, seed_sd, shared=False, simulations=SIMULATIONS, old=False):
    rng = np.random.default_rng([seeds, patients, int(seed_sd * 1000), shared])
    hits = {"difference": 0, "drop": 0}
    widths = {"difference": [], "drop": []}
    for _ in range(simulations):
        counts = simulate(rng, seeds, patients, seed_sd, shared)
        n = len(counts["method"].patients)
        a = stats.aggregated_dice_per_seed(counts["method"])
        b = stats.aggregated_dice_per_seed(counts["reference"])
        drop = relative_drop(counts)
        if old:  # the claims' interval before: patients resampled, the trained networks fixed
            difference = stats.bootstrap(lambda idx, a=a, b=b: (a(idx) - b(idx)).mean(axis=-1), n, 999)
            relative = stats.bootstrap(lambda idx, drop=drop: drop(idx).mean(axis=-1), n, 999)
        else:
            difference = stats.paired(counts["method"], counts["reference"]).difference
            relative = stats.method_interval(drop, counts["method"].tested)
        for key, interval, truth in (
            ("difference", difference, TRUE_DIFFERENCE),
            ("drop", relative, TRUE_DROP),
        ):
            hits[key] += interval.low <= truth <= interval.high
            widths[key].append(interval.high - interval.low)
    return {k: hits[k] / simulations for k in hits}, {k: float(np.mean(v)) for k, v in widths.items()}


def table(grid, simulations: int = SIMULATIONS, old_simulations: int = 200) -> pd.DataFrame:
    """Coverage and mean width of both intervals over `grid` of (seeds, patients, seed_sd)."""
    rows = []
    for seeds, patients, seed_sd in grid:
        new, new_width = coverage(seeds, patients, seed_sd, simulations=simulations)
        old, old_width = coverage(seeds, patients, seed_sd, simulations=old_simulations, old=True)
        rows.append(
            {
                "seeds": seeds,
                "patients/seed": patients,
                "seed SD": seed_sd,
                "ΔDice coverage": new["difference"],
                "ΔDice width": new_width["difference"],
                "drop coverage": new["drop"],
                "drop width": new_width["drop"],
                "old ΔDice coverage": old["difference"],
                "old drop coverage": old["drop"],
            }
        )
    return pd.DataFrame(rows)


GRID = [(k, n, sd) for k in (3, 5, 10) for n in (8, 20) for sd in (0.0, 0.02, 0.05)]


def markdown(frame: pd.DataFrame) -> str:
    return markdown_table(frame, left=(), cell=lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))


if __name__ == "__main__":  # pragma: no cover
    print(markdown(table(GRID)), flush=True)
