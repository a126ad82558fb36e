"""Issue 31, item 13: the usual slips on the command line fail before torch, MONAI or MLflow are
imported (well under a second), and --help never imports them."""

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
heavy = sorted(m for m in ("torch", "monai", "mlflow", "peft") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["run", "--help"],
        ["run", "--suite", "nosuch"],
        ["run", "--set", "train.steps"],
        ["run", "--data", "/nonexistent/cohort"],
    ],
)
def test_help_and_command_line_slips_import_nothing_heavy(args, tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args, *(["--results", str(tmp_path)] if args[-1] != "--help" else [])],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "HEAVY=\n" in out, out[-500:]
