"""Survival metrics with the sign convention pinned: in this harness a higher score means more risk.

lifelines' `concordance_index` expects the opposite (higher = longer survival), so risks are negated
there and only there. HECKTOR task 2 submissions (`PatientID, Prediction`) carry risk scores too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from lifelines.utils import concordance_index


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
        except ZeroDivisionError:  # lifelines: no comparable pair in this resample
            continue
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
