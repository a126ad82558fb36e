import math

import numpy as np
import pandas as pd
import pytest

from pemma.metrics.survival import bootstrap_ci, harrell_cindex, write_task2_submission


def test_cindex_against_a_hand_count_and_the_sign_convention():
    # Four patients; (time, event): A (1, 1), B (2, 1), C (3, 0), D (4, 1).
    time = np.array([1, 2, 3, 4])
    event = np.array([1, 1, 0, 1])
    # Comparable pairs (the earlier time is an event): A-B, A-C, A-D, B-C, B-D = 5 pairs.
    perfect = np.array([4.0, 3.0, 2.0, 1.0])  # higher risk fails first
    assert harrell_cindex(time, event, perfect) == 1.0
    assert harrell_cindex(time, event, -perfect) == 0.0  # the sign is pinned: risk, not survival time
    # Swap A and B's risks: A-B discordant, the other four concordant -> 4/5.
    assert math.isclose(harrell_cindex(time, event, np.array([3.0, 4.0, 2.0, 1.0])), 4 / 5)
    # Risks A 4, B 2, C 3, D 2: A-B, A-C, A-D concordant; B-C discordant (B failed first with the lower
    # risk); B-D tied in risk, counting one half -> (3 + 0 + 0.5) / 5.
    assert math.isclose(harrell_cindex(time, event, np.array([4.0, 2.0, 3.0, 2.0])), 3.5 / 5)


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    risk = rng.normal(size=200)
    time = np.exp(-risk + rng.normal(scale=0.5, size=200))
    event = (rng.random(200) < 0.7).astype(int)
    est, low, high = bootstrap_ci(harrell_cindex, time, event, risk, n=200)
    assert low < est < high and est > 0.7


def test_task2_submission_format(tmp_path):
    path = write_task2_submission(["CHUM-001", "MDA-002"], np.array([0.3, 1.2]), tmp_path / "sub.csv")
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["PatientID", "Prediction"] and frame["Prediction"].tolist() == [0.3, 1.2]
    with pytest.raises(ValueError, match="duplicate PatientID"):
        write_task2_submission(["A-1", "A-1"], np.array([0.1, 0.2]), tmp_path / "dup.csv")
