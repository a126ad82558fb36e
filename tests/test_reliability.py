"""One results folder shared by several processes; orphaned runs closed; SIGTERM ends a unit KILLED."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from conftest import ci_args

from pemma.engine.runner import Runner
from pemma.locks import Lock
from pemma.tracking import Tracker

CLI = [sys.executable, "-c", "from pemma.cli import app; app()"]


def _together(results, methods: str) -> list[str]:
    """Two `pemma-bench run` processes started at once on one results folder; their outputs."""
    command = [*CLI, *ci_args(results, "--methods", methods)]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
    return outputs


def _statuses(results) -> dict[str, list[str]]:
    runs = Tracker(results).runs("smoke", status=None)
    return runs.groupby("tags.run_key")["status"].apply(sorted).to_dict()


def test_two_processes_on_a_fresh_and_on_a_used_results_folder_train_every_unit_once(tmp_path):
    results = tmp_path / "results"  # fresh: both write the synthetic cohort, the store, the CT base
    outputs = _together(results, "early-fusion,pemma-lora,ct-only")
    statuses = _statuses(results)
    assert len(statuses) == 3 and all(s == ["FINISHED"] for s in statuses.values()), statuses
    outputs = _together(results, "early-fusion,pemma-lora,ct-only,pemma-dora")  # used: one unit to do
    statuses = _statuses(results)
    assert len(statuses) == 4 and all(s == ["FINISHED"] for s in statuses.values()), statuses
    assert sum("finished" in out and "pemma-dora" in out for out in outputs) >= 1


def test_a_running_run_whose_owner_is_gone_is_closed_whatever_its_key(tmp_path):
    tracker = Tracker(tmp_path)
    orphan = tracker.start("smoke", "smoke__x__unetr__s0__00000000", {}, {})
    alive = tracker.start("smoke", "smoke__y__unetr__s0__00000000", {}, {})
    holder = Lock(tmp_path, "smoke__y__unetr__s0__00000000")  # a live owner holds this key's lock
    assert holder.acquire(block=False)
    try:
        Runner(tmp_path, tracker=tracker).close_orphans("smoke")
    finally:
        holder.release()
    assert tracker.client.get_run(orphan).info.status == "KILLED"
    assert tracker.client.get_run(alive).info.status == "RUNNING"


def test_sigterm_ends_the_running_unit_killed_with_exit_code_143(tmp_path, tiny_cohort):
    command = [
        *CLI,
        *ci_args(tmp_path, "--methods", "early-fusion", "--set", "train.steps=100000", data=tiny_cohort),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    deadline = time.time() + 300
    for line in proc.stdout:  # wait until the unit trains
        seen.append(line)
        if "training early-fusion" in line or time.time() > deadline:
            break
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out[-3000:]
    assert "stopped by SIGTERM" in out and "Traceback" not in out
    runs = Tracker(tmp_path).runs("smoke", status=None)
    assert list(runs["status"]) == ["KILLED"]
