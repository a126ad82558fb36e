"""The documentation site builds with strict warnings (no broken link, no page left out of the nav),
and its CLI reference is generated from the app: every command is on it."""

import subprocess
import sys
from pathlib import Path

import pytest

from pemma.cli import app

pytestmark = pytest.mark.slow  # end-to-end runs and services: `pytest -m 'not slow'` skips them

ROOT = Path(__file__).resolve().parents[2]


def test_the_site_builds_strictly_and_lists_every_command(tmp_path):
    site = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    reference = (site / "cli" / "index.html").read_text()
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    groups = [g.name for g in app.registered_groups]
    assert commands and all(f"pemma-bench {name}" in reference for name in [*commands, *groups])
    assert (site / "extending" / "index.html").is_file()
    assert not (site / "_hooks").exists(), "the hook is not published"
