"""The prepared GPU check (benchmarks/gpu-check.sh, issue 29) runs end to end at the ci profile on CPU,
so the script a GPU session runs cannot rot: every table is written, the unit with loader workers
finishes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_script_writes_every_table(tmp_path):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PROFILE": "ci",
        "STEPS": "4",
        "WORKERS": "0,1",
        "PEMMA_DEVICE": "cpu",
    }
    out = tmp_path / "check"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu-check.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    expected = {
        "overhead.txt": "per-step overhead",
        "throughput.txt": "public",
        "memory.txt": "peak",
        "data.txt": "data wait share",
        "unit.txt": "finished",
    }
    for name, text in expected.items():
        assert text in (out / name).read_text(), f"{name}: {(out / name).read_text()[-1500:]}"
