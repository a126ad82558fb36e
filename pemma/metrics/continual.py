"""Continual-learning summaries of a result matrix R[i, j]: the score on centre j after stage i.

Stage j trains on centre j (columns in stage order), so R[j, j] is a centre's score just after its
own stage. With T the last stage: ACC = mean_j R[T, j]; BWT = mean_{j<T} (R[T, j] - R[j, j]);
forgetting = mean_{j<T} (max_{l<T} R[l, j] - R[T, j]). Negative BWT and positive forgetting mean
that later stages erased earlier skill.
"""

from __future__ import annotations

import warnings

import numpy as np


def continual_summary(r: np.ndarray) -> dict[str, float]:
    r = np.asarray(r, dtype=float)
    if r.ndim != 2 or r.shape[0] != r.shape[1]:
        raise ValueError(f"R must be square (stages x centres in stage order), got shape {r.shape}")
    last = r.shape[0] - 1
    # Cells of centres whose test split lacks a class are undefined; the summaries skip them and say
    # how many there were.
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"undefined_cells": float(np.isnan(r).sum()), **_summary(r, last)}


def _summary(r: np.ndarray, last: int) -> dict[str, float]:
    out = {"acc": float(np.nanmean(r[last]))}
    if last == 0:
        return out | {"bwt": float("nan"), "forgetting": float("nan")}
    earlier = range(last)
    out["bwt"] = float(np.nanmean([r[last, j] - r[j, j] for j in earlier]))
    out["forgetting"] = float(np.nanmean([np.nanmax(r[:last, j]) - r[last, j] for j in earlier]))
    return out
