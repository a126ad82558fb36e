"""Where units run: one after another in this process (local, the default), or as Ray tasks (one GPU
each on a GPU cluster, CPUs otherwise). No home-made scheduler: the driver expands the suite, drops
finished run keys once, and submits what remains; each task runs its unit through the same Runner,
so run keys, locks, MLflow runs and metrics are the local executor's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pemma.config import ConfigError, RunConfig

EXECUTORS = ("local", "ray")
FORWARDED = ("MLFLOW_TRACKING_URI", "PEMMA_DEVICE", "PEMMA_SUITE_PATH", "PEMMA_SEARCH_PATH", "PEMMA_DEBUG")
"""Environment a Ray task needs from the driver."""


def check_executor(name: str) -> str:
    if name not in EXECUTORS:
        raise ConfigError(f"--executor {name!r}: known executors are {', '.join(EXECUTORS)}")
    return name


def ray_session(address: str | None, tracking_uri: str):
    """Connect to (or start) Ray. A cluster beyond this machine needs a tracking server: an SQLite
    store is one file that processes on other machines cannot share."""
    try:
        import ray
    except ImportError as err:
        raise ConfigError("--executor ray needs Ray: pip install 'pemma-bench[ray]'") from err
    if address and address != "local" and tracking_uri.startswith("sqlite"):
        raise ConfigError(
            f"--address {address}: units on other machines cannot share the SQLite store {tracking_uri}; "
            "set MLFLOW_TRACKING_URI to an MLflow server (README: 'Beyond one machine')"
        )
    env = {k: os.environ[k] for k in FORWARDED if k in os.environ}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    if not ray.is_initialized():
        ray.init(
            address=None if address in (None, "local") else address,
            runtime_env={"env_vars": env},
            include_dashboard=False,
            log_to_driver=True,
            logging_level="WARNING",
        )
    return ray


def _resources(ray) -> dict[str, float]:
    """One GPU per task where the cluster has GPUs; else one CPU per task."""
    gpus = ray.cluster_resources().get("GPU", 0)
    return {"num_gpus": 1} if gpus else {"num_cpus": 1}


def _run_unit(results: str, cfg: RunConfig, key: str, index: int, total: int):
    """A Ray task: one unit through the Runner (its lock, its MLflow run), in a worker process."""
    import torch

    from pemma.engine.runner import Runner

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    runner = Runner(Path(results))
    return runner.claim_and_run(cfg, key, index, total)


def run_on_ray(runner, units: list[RunConfig], address: str | None = None) -> list:
    """Every unfinished unit as a Ray task (retried once if its worker or node dies); outcomes in
    the units' order. Finished keys are dropped here, once, before anything is submitted."""
    from pemma.engine.runner import UnitOutcome, spread_by_base

    ray = ray_session(address, runner.tracker.uri)
    for suite in dict.fromkeys(cfg.suite for cfg in units):
        runner.close_orphans(suite)
    finished = {s: runner.tracker.finished_keys(s) for s in dict.fromkeys(cfg.suite for cfg in units)}
    task = ray.remote(max_retries=1, **_resources(ray))(_run_unit)
    keys = [runner.key(cfg) for cfg in units]
    pending: dict[Any, int] = {}
    outcomes: list[Any] = [None] * len(units)
    todo = []
    for index, (cfg, key) in enumerate(zip(units, keys, strict=True)):
        if key in finished[cfg.suite]:
            outcomes[index] = UnitOutcome(key, "SKIPPED")
            runner.reporter.done(outcomes[index])
        else:
            todo.append(index)
    for i in spread_by_base([runner.base_of(units[index]) for index in todo]):
        index = todo[i]
        runner.reporter.start(keys[index], index, len(units))
        pending[task.remote(str(runner.results), units[index], keys[index], index, len(units))] = index
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            try:
                outcomes[index] = ray.get(done[0])
            except Exception as err:  # the task died twice (worker or node lost)
                outcomes[index] = UnitOutcome(keys[index], "FAILED", error=f"Ray task lost: {err}")
            runner.reporter.done(outcomes[index])
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return outcomes


def map_on_ray(function: Callable, arguments: list[tuple], address: str | None, tracking_uri: str) -> list:
    """`function(*args)` for every args as Ray tasks (a search's trial workers); results in order."""
    ray = ray_session(address, tracking_uri)
    task = ray.remote(max_retries=1, **_resources(ray))(function)
    return ray.get([task.remote(*args) for args in arguments])
