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
