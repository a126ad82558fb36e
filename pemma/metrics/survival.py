"""Survival metrics with the sign convention pinned: in this harness a higher score means more risk.

lifelines' `concordance_index` expects the opposite (higher = longer survival), so risks are negated
there and only there; scikit-survival takes risks as they are. HECKTOR task 2 submissions
(`PatientID, Prediction`) carry risk scores too.

- Harrell's C (lifelines), Uno's IPCW C (censoring weights from the training split), time-dependent
  cumulative/dynamic AUC at fixed horizons and the integrated Brier score of Breslow survival curves
  (scikit-survival); percentile bootstrap CIs over test patients.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from lifelines.utils import concordance_index
from sksurv.linear_model.coxph import BreslowEstimator
from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score
from sksurv.util import Surv


def harrell_cindex(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C: the share of comparable pairs whose higher risk failed first (ties in risk count 1/2)."""
    time, event, risk = (np.asarray(a, dtype=float) for a in (time, event, risk))
    if not (len(time) == len(event) == len(risk)):
        raise ValueError(f"time, event and risk differ in length: {len(time)}, {len(event)}, {len(risk)}")
    if not np.isfinite(risk).all():
        raise ValueError("risk scores must be finite")
    return float(concordance_index(time, -risk, event))


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: np.ndarray,
    n: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, low, high): percentile bootstrap over patients, resamples without events skipped."""
    arrays = tuple(np.asarray(a) for a in arrays)
    estimate = metric(*arrays)
    rng = np.random.default_rng(seed)
    size = len(arrays[0])
    values = []
    for _ in range(n):
        idx = rng.integers(0, size, size)
        try:
            values.append(metric(*(a[idx] for a in arrays)))
        except (ZeroDivisionError, ValueError):  # no comparable pair / no event in this resample
            continue
    if not values:
        return float(estimate), float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(estimate), float(low), float(high)


def write_task2_submission(patient_ids: list[str], risk: np.ndarray, path: Path) -> Path:
    """HECKTOR task 2 format: one row per patient, `PatientID, Prediction` (higher = more risk)."""
    frame = pd.DataFrame({"PatientID": list(patient_ids), "Prediction": np.asarray(risk, dtype=float)})
    duplicated = frame["PatientID"][frame["PatientID"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"duplicate PatientID in the submission: {duplicated[:5]}")
    frame.to_csv(path, index=False)
    return Path(path)


def _surv(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    return Surv.from_arrays(np.asarray(event).astype(bool), np.asarray(time, dtype=float))


def uno_cindex(
    train_time: np.ndarray, train_event: np.ndarray, time: np.ndarray, event: np.ndarray, risk: np.ndarray
) -> float:
    """Uno's C: concordance weighted by the inverse probability of censoring (estimated on train),
    truncated at the 90th percentile of the training follow-up so the weights stay bounded."""
    tau = float(np.quantile(np.asarray(train_time, dtype=float), 0.9))
    train, test = _surv(train_time, train_event), _surv(time, event)
    return float(concordance_index_ipcw(train, test, np.asarray(risk), tau=tau)[0])


def valid_horizons(horizons: tuple[float, ...], train_time, time) -> list[float]:
    """Horizons inside the test follow-up and before the training follow-up ends (where AUC exists)."""
    time, train_time = np.asarray(time, dtype=float), np.asarray(train_time, dtype=float)
    low, high = time.min(), min(time.max(), train_time.max())
    return [h for h in horizons if low <= h < high]


def survival_scores(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    horizons: tuple[float, ...] = (365.0, 730.0, 1095.0),
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """Every survival metric of one model: train and test are (time, event, risk) arrays.

    Keys: cindex_harrell[_low|_high], cindex_uno[_low|_high], auc_<days>d, ibs (Breslow curves from the
    training risks), events (in the test split). Horizons outside the follow-up are left out.
    """
    train_time, train_event, train_risk = (np.asarray(a, dtype=float) for a in train)
    time, event, risk = (np.asarray(a, dtype=float) for a in test)
    out: dict[str, float] = {"test_patients": float(len(time)), "test_events": float(event.sum())}
    if event.sum() == 0:
        return out
    h, lo, hi = bootstrap_ci(harrell_cindex, time, event, risk, n=n_boot, seed=seed)
    out.update({"cindex_harrell": h, "cindex_harrell_low": lo, "cindex_harrell_high": hi})

    def uno(t, e, r):
        return uno_cindex(train_time, train_event, t, e, r)

    u, lo, hi = bootstrap_ci(uno, time, event, risk, n=n_boot, seed=seed)
    out.update({"cindex_uno": u, "cindex_uno_low": lo, "cindex_uno_high": hi})
    # Censoring weights come from the training follow-up: test patients past its end cannot be
    # weighted, so time-dependent AUC and the Brier score use those inside it.
    inside = time < train_time.max()
    t_in, e_in, r_in = time[inside], event[inside], risk[inside]
    times = valid_horizons(horizons, train_time, t_in) if inside.any() else []
    if times and e_in.any():
        auc, _ = cumulative_dynamic_auc(_surv(train_time, train_event), _surv(t_in, e_in), r_in, times)
        out.update({f"auc_{int(t)}d": float(a) for t, a in zip(times, auc, strict=True)})
    if inside.sum() >= 2:
        low, high = np.quantile(t_in, [0.1, 0.9])
        grid = np.linspace(low, high, 20)
        if grid[-1] > grid[0]:
            shift = train_risk.mean()  # Breslow's curves do not change with a shift; exp() stays finite
            breslow = BreslowEstimator().fit(train_risk - shift, train_event.astype(bool), train_time)
            curves = np.vstack([fn(grid) for fn in breslow.get_survival_function(r_in - shift)])
            train_surv = _surv(train_time, train_event)
            out["ibs"] = float(integrated_brier_score(train_surv, _surv(t_in, e_in), curves, grid))
    return out
