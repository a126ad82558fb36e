"""Where units run: one after another in this process (local, the default), in worker processes on
this machine (local with `workers` > 1: the CPU threads shared out among them), or as Ray tasks (one
GPU each on a GPU cluster, CPUs otherwise). The driver expands the suite, drops finished run keys
once, and submits what remains to Ray or to a stdlib process pool (for the pool it decides only
when a job may start: after its CT base, within the cores); each task runs its unit through the
same Runner, so run keys, locks, MLflow runs and metrics are the local executor's.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
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
    from pemma.orchestration.runner import Runner

    return Runner(Path(results)).claim_and_run(cfg, key, index, total)


def _ray_unit(results: str, cfg: RunConfig, key: str, index: int, total: int):
    """A Ray task: one thread unless the worker's OMP_NUM_THREADS (Ray sets it) says more."""
    limit_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    return _run_unit(results, cfg, key, index, total)


def _queue(runner, units: list[RunConfig]) -> tuple[list[str], list[Any], dict[int, str | None]]:
    """The units' run keys, their outcomes so far (SKIPPED for finished keys with nothing left to
    evaluate, reported; None for the rest) and the rest in the order to submit them (spread over
    their CT bases), each with its base."""
    from pemma.orchestration.runner import DONE, UnitOutcome, spread_by_base

    for suite in dict.fromkeys(cfg.suite for cfg in units):
        runner.close_orphans(suite)
    finished = {s: runner.tracker.finished_runs(s) for s in dict.fromkeys(cfg.suite for cfg in units)}
    keys = [runner.key(cfg) for cfg in units]
    outcomes: list[Any] = [None] * len(units)
    todo = []
    for index, (cfg, key) in enumerate(zip(units, keys, strict=True)):
        if runner.todo(cfg, key, finished[cfg.suite]) == DONE:
            outcomes[index] = UnitOutcome(key, "SKIPPED")
            runner.reporter.done(outcomes[index])
        else:
            todo.append(index)
    bases = [runner.base_of(units[index]) for index in todo]
    return keys, outcomes, {todo[i]: bases[i] for i in spread_by_base(bases)}


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
    import pemma.orchestration.runner  # noqa: F401  (torch, MONAI, MLflow, the methods and tasks)


@dataclass
class _Job:
    """Work for a pool worker: a unit (by its index), or the CT base `base` it is the first to need."""

    index: int
    base: str | None
    """The CT base this job trains (trains_base) or its unit needs (None: none)."""
    trains_base: bool
    threads: int


def run_in_processes(runner, units: list[RunConfig], pool, workers: int) -> list:
    """Every unfinished unit in `pool` (worker_pool(`workers`): spawned processes on this machine);
    outcomes in the units' order.

    The CT bases the units need and the cache lacks go first, as many at a time as there are workers,
    the CPU threads shared among them: the smoke suite's single base trains on both cores instead of
    beside a worker waiting for it. Units follow in order, each on its share of the threads (cores /
    workers; on a GPU they share the device), as soon as their base is ready and threads are free: a
    unit never holds a worker while it waits on a base's lock, and a core freed while another base
    trains takes a unit whose base is ready. A unit's start is reported when it starts. A worker that dies
    fails its unit; Ctrl-C or SIGTERM stops every worker (its running unit ends KILLED)."""
    import multiprocessing

    keys, outcomes, needs = _queue(runner, units)
    if not needs:
        return outcomes
    cores, workers = cpu_cores(), min(workers, len(needs))
    untrained: dict[str, int] = {}  # each missing base, by its first unit
    for index, base in needs.items():
        if base is not None and base not in untrained and not runner.base_cached(units[index]):
            untrained[base] = index
    at_once = max(1, min(workers, len(untrained)))
    jobs = [_Job(index, base, True, max(1, cores // at_once)) for base, index in untrained.items()]
    jobs += [_Job(index, base, False, max(1, cores // workers)) for index, base in needs.items()]
    if untrained:
        runner.reporter.note(
            f"training {len(untrained)} CT base(s) first, {at_once} at a time, "
            f"{jobs[0].threads} thread(s) each"
        )
    results = str(runner.results)

    def submit(job: _Job):
        if job.trains_base:
            return _submit(pool, _pool_base, results, units[job.index], job.threads)
        runner.reporter.start(keys[job.index], job.index, len(units))
        args = (results, units[job.index], keys[job.index], job.index, len(units), job.threads)
        return _submit(pool, _pool_unit, *args)

    try:
        for job, done in _dispatch(jobs, set(untrained), workers, cores, submit):
            if job.trains_base:
                _base_done(runner, done, keys[job.index])
            else:
                outcomes[job.index] = _unit_done(done, keys[job.index])
                runner.reporter.done(outcomes[job.index])
    except KeyboardInterrupt:
        for process in multiprocessing.active_children():
            process.terminate()  # SIGTERM: the worker's running unit ends KILLED, then it exits
        raise
    return outcomes


def _dispatch(jobs: list[_Job], pending_bases: set[str], workers: int, cores: int, submit: Callable):
    """Start, in queue order, every job that may start: at most `workers` at once, their threads
    within `cores` (a job alone may take more), a unit only once its base is trained (or failed to
    train); yield (job, future) as each ends."""
    import concurrent.futures

    running: dict[concurrent.futures.Future, _Job] = {}
    while jobs or running:
        used = sum(job.threads for job in running.values())
        for job in list(jobs):
            if len(running) >= workers:
                break
            waits = not job.trains_base and job.base in pending_bases
            if waits or (running and used + job.threads > cores):
                continue
            jobs.remove(job)
            used += job.threads
            running[submit(job)] = job
        done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            job = running.pop(future)
            if job.trains_base:
                pending_bases.discard(job.base)  # trained or failed: its units go (and fail with the reason)
            yield job, future


def _submit(pool, function: Callable, *args):
    """pool.submit, or a future holding the error where a worker died and took the pool with it."""
    import concurrent.futures.process

    try:
        return pool.submit(function, *args)
    except concurrent.futures.process.BrokenProcessPool as err:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_exception(err)
        return future


def _base_done(runner, done, first_unit: str) -> None:
    try:
        info, seconds = done.result()
    except Exception as err:  # the units that need it try again and fail with the reason
        runner.reporter.note(f"CT base for {first_unit} failed: {err!r}")
        return
    runner.spent["ct_base"] = runner.spent.get("ct_base", 0.0) + seconds
    runner.reporter.note(f"CT base {info.get('key', '')} ready in {seconds:.0f}s")


def _unit_done(done, key: str):
    from pemma.files import NoSpace
    from pemma.orchestration.runner import UnitOutcome

    try:
        return done.result()
    except NoSpace:  # the disk is full: the suite stops
        raise
    except Exception as err:  # its worker process died (killed, out of memory)
        return UnitOutcome(key, "FAILED", error=f"worker process lost: {err!r}")


_BUSY = {"job": False}
"""Whether this pool worker is running a job (a stopped idle worker just exits)."""


def _start_worker() -> None:
    """A pool worker: Ctrl-C is the driver's to handle (it sends SIGTERM to every worker); SIGTERM
    stops the running job like Ctrl-C, or ends an idle worker quietly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    if not _BUSY["job"]:
        os._exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the unit's cleanup runs undisturbed
    raise KeyboardInterrupt()


@contextlib.contextmanager
def _job(threads: int):
    """A pool job's frame: its share of the threads; stopped, the worker exits once the job has
    cleaned up (a unit's run marked KILLED and its lock released; a base's checkpoint kept)."""
    limit_threads(threads)
    _BUSY["job"] = True
    try:
        yield
    except KeyboardInterrupt:
        os._exit(130)
    finally:
        _BUSY["job"] = False


def _pool_unit(results: str, cfg: RunConfig, key: str, index: int, total: int, threads: int):
    with _job(threads):
        return _run_unit(results, cfg, key, index, total)


def _pool_base(results: str, cfg: RunConfig, threads: int) -> tuple[dict, float]:
    """A pool job: the CT base of `cfg`'s unit trained and cached; its info and wall seconds."""
    import time

    from pemma.orchestration.runner import Runner

    with _job(threads):
        t0 = time.perf_counter()
        info = Runner(Path(results)).train_base(cfg)
        return info, time.perf_counter() - t0


def run_on_ray(runner, units: list[RunConfig], address: str | None = None) -> list:
    """Every unfinished unit as a Ray task (retried once if its worker or node dies); outcomes in
    the units' order. Finished keys are dropped here, once, before anything is submitted."""
    from pemma.orchestration.runner import UnitOutcome

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
