"""A wheel carries the suites: installed without the source tree, `pemma-bench suites` lists them all."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pemma.resources import SUITES

pytestmark = pytest.mark.slow  # end-to-end runs and services: `pytest -m 'not slow'` skips them

ROOT = Path(__file__).resolve().parents[2]


def test_a_wheel_install_lists_and_loads_every_shipped_suite(tmp_path):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True,
    )
    wheel = next((tmp_path / "dist").glob("pemma-*.whl"))
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("PEMMA_SUITE_PATH", None)
    code = (
        "import json, pemma, pemma.suites as s, pemma.resources as r; "
        "print(json.dumps({'package': pemma.__file__, "
        "'suites': {k: [str(p), len(s.expand(s.load_suite(k)))] for k, p in r.SUITES.available().items()}, "
        "'reports': {k: str(p) for k, p in r.REPORTS.available().items()}, "
        "'spaces': {k: str(p) for k, p in r.SPACES.available().items()}, "
        "'plan': str(r.CLAIMS_PLANS.find('pemma'))}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["package"].startswith(str(site)), "the installed copy, not the source tree, was imported"
    assert set(found["suites"]) == set(SUITES.available())
    assert all(path.startswith(str(site)) for path, _ in found["suites"].values())
    assert all(units > 0 for _, units in found["suites"].values())
    assert set(found["reports"]) == {"paper", "smoke"}, "report definitions ship in the wheel"
    assert all(path.startswith(str(site)) for path in [*found["reports"].values(), found["plan"]])
    assert Path(found["plan"]).is_file()
    assert set(found["spaces"]) == {"rank", "pareto"}, "search spaces ship in the wheel"
    assert all(path.startswith(str(site)) for path in found["spaces"].values())
    listed = subprocess.run(
        [sys.executable, "-c", "from pemma.cli import app; app()", "suites"],
        cwd=tmp_path,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stderr
    assert all(name in listed.stdout for name in SUITES.available())
