"""Where units run: one after another in this process (local, the default), in worker processes on
this machine (local with `workers` > 1: the CPU threads shared out among them), or as Ray tasks (one
GPU each on a GPU cluster, CPUs otherwise). No home-made scheduler: the driver expands the suite,
drops finished run keys once, and submits what remains to a process pool or to Ray; each task runs
its unit through the same Runner, so run keys, locks, MLflow runs and metrics are the local
executor's.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pemma.config import ConfigError, RunConfig

EXECUTORS = ("local", "ray")
FORWARDED = ("MLFLOW_TRACKING_URI", "PEMMA_DEVICE", "PEMMA_SUITE_PATH", "PEMMA_SEARCH_PATH", "PEMMA_DEBUG")
"""Environment a Ray task needs from the driver."""


def check_executor(name: str, workers: int = 1) -> str:
    if name not in EXECUTORS:
        raise ConfigError(f"--executor {name!r}: known executors are {', '.join(EXECUTORS)}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and name != "local":
        raise ConfigError(f"--workers {workers}: worker processes are for --executor local only")
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


def limit_threads(threads: int) -> None:
    """A worker process's share of the CPU: `threads` intra-op threads for torch."""
    import torch

    torch.set_num_threads(threads)


def _run_unit(results: str, cfg: RunConfig, key: str, index: int, total: int):
    """A task: one unit through the Runner (its lock, its MLflow run), in a worker process."""
    from pemma.engine.runner import Runner

    return Runner(Path(results)).claim_and_run(cfg, key, index, total)


def _ray_unit(results: str, cfg: RunConfig, key: str, index: int, total: int):
    """A Ray task: one thread unless the worker's OMP_NUM_THREADS (Ray sets it) says more."""
    limit_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    return _run_unit(results, cfg, key, index, total)


def _queue(runner, units: list[RunConfig]) -> tuple[list[str], list[Any], list[int]]:
    """The units' run keys, their outcomes so far (SKIPPED for finished keys, reported; None for the
    rest) and the order to submit the rest in (spread over their CT bases)."""
    from pemma.engine.runner import UnitOutcome, spread_by_base

    for suite in dict.fromkeys(cfg.suite for cfg in units):
        runner.close_orphans(suite)
    finished = {s: runner.tracker.finished_keys(s) for s in dict.fromkeys(cfg.suite for cfg in units)}
    keys = [runner.key(cfg) for cfg in units]
    outcomes: list[Any] = [None] * len(units)
    todo = []
    for index, (cfg, key) in enumerate(zip(units, keys, strict=True)):
        if key in finished[cfg.suite]:
            outcomes[index] = UnitOutcome(key, "SKIPPED")
            runner.reporter.done(outcomes[index])
        else:
            todo.append(index)
    order = [todo[i] for i in spread_by_base([runner.base_of(units[index]) for index in todo])]
    return keys, outcomes, order


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def worker_pool(workers: int):
    """`workers` spawned processes (None for one: the units run in this process), started at once so
    that they import what a unit needs while the driver checks the data; stopped on the way out."""
    if workers <= 1:
        yield None
        return
    import concurrent.futures
    import multiprocessing

    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker
    )
    for _ in range(workers):  # spawn with a free worker pending only: one process per job here
        pool.submit(_warm)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _warm() -> None:
    import pemma.engine.runner  # noqa: F401  (torch, MONAI, MLflow, the methods and tasks)


def run_in_processes(runner, units: list[RunConfig], pool, workers: int) -> list:
    """Every unfinished unit in `pool` (worker_pool(`workers`): spawned processes on this machine);
    outcomes in the units' order. First the CT bases the units need and the cache lacks, as many at
    a time as there are workers, the CPU threads shared among them (one base on 2 cores trains on
    both instead of beside a worker waiting for it); then the units, each worker with its share of
    the threads (on a GPU they share the device). A unit goes to the pool when a worker is free, so
    its start is reported when it starts. A worker that dies fails its unit; Ctrl-C or SIGTERM stops
    every worker (its running unit ends KILLED)."""
    import multiprocessing

    from pemma.engine.runner import UnitOutcome

    keys, outcomes, order = _queue(runner, units)
    if not order:
        return outcomes
    workers = min(workers, len(order))
    first: dict[str, int] = {}  # each CT base's first unit
    for index in order:
        base = runner.base_of(units[index])
        if base is not None and base not in first:
            first[base] = index
    bases = [index for index in first.values() if not runner.base_cached(units[index])]
    results = str(runner.results)
    try:
        if bases:
            at_once = min(workers, len(bases))
            threads = max(1, cpu_cores() // at_once)
            runner.reporter.note(
                f"training {len(bases)} CT base(s) first, {at_once} at a time, {threads} thread(s) each"
            )
            jobs = [(_pool_base, (results, units[index], threads), index) for index in bases]
            for index, done in _in_pool(pool, jobs, at_once):
                try:
                    info, seconds = done.result()
                    runner.spent["ct_base"] = runner.spent.get("ct_base", 0.0) + seconds
                    runner.reporter.note(f"CT base {info.get('key', '')} ready in {seconds:.0f}s")
                except Exception as err:  # the units that need it try again and fail with the reason
                    runner.reporter.note(f"CT base for {keys[index]} failed: {err!r}")
        threads = max(1, cpu_cores() // workers)
        jobs = [(_pool_unit, (results, units[i], keys[i], i, len(units), threads), i) for i in order]

        def started(i: int) -> None:
            runner.reporter.start(keys[i], i, len(units))

        for index, done in _in_pool(pool, jobs, workers, started):
            try:
                outcomes[index] = done.result()
            except Exception as err:  # its worker process died (killed, out of memory)
                lost = f"worker process lost: {err!r}"
                outcomes[index] = UnitOutcome(keys[index], "FAILED", error=lost)
            runner.reporter.done(outcomes[index])
    except KeyboardInterrupt:
        for process in multiprocessing.active_children():
            process.terminate()  # SIGTERM: the worker's running unit ends KILLED, then it exits
        raise
    return outcomes


def _in_pool(pool, jobs: list[tuple[Callable, tuple, int]], at_once: int, started: Callable | None = None):
    """Run `jobs` (function, arguments, index) in `pool`, at most `at_once` at a time, in order; yield
    (index, future) as each ends. `started(index)` is told when a job goes to the pool."""
    import concurrent.futures.process

    jobs = list(jobs)
    pending: dict[concurrent.futures.Future, int] = {}
    while jobs or pending:
        while jobs and len(pending) < at_once:
            function, args, index = jobs.pop(0)
            if started:
                started(index)
            try:
                future = pool.submit(function, *args)
            except concurrent.futures.process.BrokenProcessPool as err:  # a worker died: the pool is gone
                future = concurrent.futures.Future()
                future.set_exception(err)
            pending[future] = index
        done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            yield pending.pop(future), future


def _start_worker() -> None:
    """A pool worker: Ctrl-C is the driver's to handle (it sends SIGTERM to every worker); SIGTERM
    stops the running unit like Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the unit's cleanup runs undisturbed
    raise KeyboardInterrupt()


def _pool_unit(results: str, cfg: RunConfig, key: str, index: int, total: int, threads: int):
    limit_threads(threads)
    try:
        return _run_unit(results, cfg, key, index, total)
    except KeyboardInterrupt:  # stopped: the unit's run is marked KILLED and its lock released
        os._exit(130)


def _pool_base(results: str, cfg: RunConfig, threads: int) -> tuple[dict, float]:
    """A pool job: the CT base of `cfg`'s unit trained and cached; its info and wall seconds."""
    import time

    from pemma.engine.runner import Runner

    limit_threads(threads)
    t0 = time.perf_counter()
    try:
        info = Runner(Path(results)).train_base(cfg)
    except KeyboardInterrupt:  # stopped: its checkpoint stays, the next run resumes it
        os._exit(130)
    return info, time.perf_counter() - t0


def run_on_ray(runner, units: list[RunConfig], address: str | None = None) -> list:
    """Every unfinished unit as a Ray task (retried once if its worker or node dies); outcomes in
    the units' order. Finished keys are dropped here, once, before anything is submitted."""
    from pemma.engine.runner import UnitOutcome

    ray = ray_session(address, runner.tracker.uri)
    task = ray.remote(max_retries=1, **_resources(ray))(_ray_unit)
    keys, outcomes, order = _queue(runner, units)
    pending: dict[Any, int] = {}
    for index in order:
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
