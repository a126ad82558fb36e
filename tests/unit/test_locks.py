"""Locks die with the process that took them, not with the children it forked (issue 29: a unit
killed while its data loader workers still live must be resumable at once)."""

from __future__ import annotations

import subprocess
import sys
import time

from pemma.locks import Lock

HOLDER = """
import os, sys, time
from pemma.locks import Lock
lock = Lock(sys.argv[1], "unit")
assert lock.acquire()
child = os.fork()
if child == 0:  # a data loader worker: lives on after its parent is killed
    os.close(1), os.close(2)  # (the test reads the parent's output to its end)
    time.sleep(30)
    os._exit(0)
print(child, flush=True)
os._exit(0)  # the parent dies without releasing, as under kill -9
"""


def test_a_lock_is_free_once_its_taker_dies_though_its_forked_child_lives(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", HOLDER, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    child = int(out.stdout.strip())
    try:
        time.sleep(0.2)
        assert subprocess.run(["kill", "-0", str(child)]).returncode == 0, "the child should still live"
        assert Lock(tmp_path, "unit").acquire(block=False), "the orphaned child kept its parent's lock"
    finally:
        subprocess.run(["kill", "-9", str(child)])
