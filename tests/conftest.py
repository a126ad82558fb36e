from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PEMMA_DEVICE", "cpu")


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """The smallest synthetic cohort the ci profile uses (3-4 patients per centre)."""
    from pemma.data.synth import write_cohort

    return write_cohort(tmp_path_factory.mktemp("cohort") / "synth", scale=0.02, seed=0)


@pytest.fixture(scope="session")
def partial_endpoint_cohort(tiny_cohort, tmp_path_factory) -> Path:
    """The tiny cohort where, as in real HECKTOR, only some patients of a centre have an endpoint."""
    import shutil

    import pandas as pd

    from pemma.data.hecktor import ENDPOINT_CSV

    root = tmp_path_factory.mktemp("partial") / "synth"
    shutil.copytree(tiny_cohort, root)
    table = pd.read_csv(root / ENDPOINT_CSV)
    table[table.index % 3 != 0].to_csv(root / ENDPOINT_CSV, index=False)  # one patient in three loses it
    return root
