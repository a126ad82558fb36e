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


def ci_args(results, *extra, data=None, suite="smoke"):
    """`run --suite SUITE --profile ci --results RESULTS [--data DATA] EXTRA...` as CLI arguments."""
    args = ["run", "--suite", suite, "--profile", "ci", "--results", str(results)]
    if data is not None:
        args += ["--data", str(data)]
    return [*args, *extra]


def ci_run(results, *extra, data=None, suite="smoke"):
    """`pemma-bench run` at the ci profile (see ci_args), in this process."""
    from typer.testing import CliRunner

    from pemma.cli import app

    return CliRunner().invoke(app, ci_args(results, *extra, data=data, suite=suite))


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


def sigterm_once(command: list[str], marker: str) -> tuple[int, str]:
    """Start `command`, wait (up to 5 min) for an output line holding `marker`, then 2 s more, send
    SIGTERM; its exit code and whole output."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, deadline = [], time.time() + 300
    for line in proc.stdout:
        seen.append(line)
        if marker in line or time.time() > deadline:
            break
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    return proc.returncode, out
