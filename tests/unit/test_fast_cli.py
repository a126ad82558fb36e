"""Issue 31, item 13: the usual slips on the command line fail before torch, MONAI or MLflow are
imported, --help never imports them, and the listing commands, `validate` and `run --dry-run` answer
without the libraries that build and train models (measured: 0.2-1.6 s against 6-8 s before; the
README gives the table). Which modules a command imports is what decides its time on a cold start,
so that is what the tests hold, not a wall-clock figure that depends on the machine."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from pemma.cli import app
try:
    app(sys.argv[1:], standalone_mode=True)
except SystemExit as exit:
    code = exit.code
libraries = ("torch", "monai", "mlflow", "peft", "optuna", "lifelines", "sksurv")
heavy = sorted(m for m in libraries if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def _heavy(args: list[str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120
    ).stdout
    assert "HEAVY=" in out, out[-800:]
    return out.rsplit("HEAVY=", 1)[1].strip()


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["run", "--help"],
        ["run", "--suite", "nosuch"],
        ["run", "--set", "train.steps"],
        ["run", "--data", "/nonexistent/cohort"],
        ["run", "--suite", "smoke", "--methods", "pemma-lorra"],
        ["run", "--suite", "smoke", "--set", "adapter.rank=0"],
    ],
)
def test_help_and_command_line_slips_import_nothing_heavy(args, tmp_path):
    if args[-1] != "--help":
        args = [*args, "--results", str(tmp_path)]
    assert _heavy(args) == ""


@pytest.mark.parametrize("command", ["methods", "tasks", "conditions", "suites", "validate"])
def test_listing_and_validate_import_nothing_heavy(command):
    """What they print comes from declarations (a method's inputs, a task's metrics, a condition's
    magnitudes, a suite's units): none of it needs a network, a tracker or a study."""
    assert _heavy([command]) == ""


def test_dry_run_reads_the_store_without_torch(tmp_path):
    """A dry run asks MLflow which units are finished; nothing builds a model or reads an image."""
    assert _heavy(
        ["run", "--suite", "smoke", "--profile", "ci", "--results", str(tmp_path), "--dry-run"]
    ) == ("mlflow")
