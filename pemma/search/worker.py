"""A search worker: asks the study for trials, trains their units through the runner, reports
validation metrics (pruning) and values; several workers in processes or on Ray."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from pemma.locks import Lock, locked
from pemma.search.space import SearchError, units
from pemma.search.study import (
    ACTIVE,
    ALL,
    Options,
    TrialFailed,
    _close_stale,
    _count,
    _is_rdb,
    _sampler,
    _trial_lock,
    open_study,
)
from pemma.search.tracking import _end, _finished_metrics, _metric_name, _value, study_run, summarise
from pemma.tasks.base import Monitor, UnitStopped

log = logging.getLogger(__name__)


def _heartbeat(study, trial, options: Options) -> Callable[[], None]:
    """Keep an RDB trial's heartbeat while it runs (ask/tell does not start Optuna's own thread)."""
    storage = study._storage  # Optuna's cache around the RDB storage passes heartbeats through
    if not _is_rdb(options.storage) or not getattr(storage, "get_heartbeat_interval", lambda: None)():
        return lambda: None
    stop = threading.Event()
    interval = storage.get_heartbeat_interval()

    def beat() -> None:
        while not stop.wait(0 if not beat.started else interval):
            beat.started = True
            storage.record_heartbeat(trial._trial_id)

    beat.started = False
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    return stop.set


def work(options: Options, reporter=None) -> dict[str, int]:
    """One worker: ask trials (under a lock, so the study ends with exactly --trials active ones),
    run them, tell the outcome, until the study holds enough. Returns counts by final state."""
    from optuna.trial import TrialState

    from pemma.orchestration.runner import Runner
    from pemma.tracking import Tracker

    tracker = Tracker(options.results)
    runner = Runner(options.results, tracker=tracker, reporter=reporter)
    with locked(options.results, f"search-{options.study}"):
        study = open_study(options)
    parent = study_run(tracker, options)
    counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "REUSED": 0}
    failures = 0
    while True:
        with locked(options.results, f"search-{options.study}"):
            _close_stale(study, options, tracker, runner)
            if _count(study, ACTIVE) >= options.trials:
                break
            # Trial n draws with the seed (space seed, n): reproducible from the study's history, and
            # no two workers (or a rerun continuing the study) replay each other's draws.
            study.sampler = _sampler(options.space, (_count(study, ALL),))
            trial = study.ask()
            trial_lock = Lock(options.results, _trial_lock(options.study, trial.number))
            trial_lock.acquire()
        stop_beat = _heartbeat(study, trial, options)
        try:
            state, values, reused = run_trial(study, trial, options, runner, tracker, parent)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: nothing stays RUNNING (the unit is KILLED)
            study.tell(trial, state=TrialState.FAIL)
            trial_lock.release()
            run_id = trial.user_attrs.get("mlflow_run_id")
            if run_id:
                tracker.log(run_id, {}, {"optuna_state": "FAIL", "error": "interrupted"})
                tracker.client.set_terminated(run_id, "KILLED")
            tracker.client.set_terminated(parent, "KILLED")  # a rerun reopens it
            raise
        finally:
            stop_beat()
        try:
            if state == "COMPLETE":
                study.tell(trial, values)
            else:
                study.tell(trial, state=TrialState[state])
        finally:
            trial_lock.release()
        counts[state] += 1
        counts["REUSED"] += reused
        if reporter is not None:
            shown = ", ".join(f"{v:.4g}" for v in values) if values else ""
            reporter.note(f"trial {trial.number} {state.lower()} {shown} {trial.params}".replace("  ", " "))
        failures = failures + 1 if state == "FAIL" else 0
        if failures >= max(3, options.trials):
            raise SearchError(
                f"study {options.study!r}: {failures} trials in a row failed; see their MLflow runs"
            )
    summarise(tracker, parent, study)
    return counts


def run_trial(study, trial, options: Options, runner, tracker, parent: str) -> tuple[str, list[float], int]:
    """Sample, run the trial's units (one per seed), and read the objectives from their validation
    metrics. Returns (state, values, units reused from finished runs)."""
    import optuna

    space = options.space
    values = {p.key: p.suggest(trial) for p in space.params}
    suite = f"search-{options.study}"
    run_id = tracker.create_run(
        suite,
        f"trial {trial.number}",
        {
            "search_study": options.study,
            "search_level": "trial",
            "optuna_trial": str(trial.number),
            "mlflow.parentRunId": parent,
            "worker": f"{socket.gethostname()}:{os.getpid()}",
        },
        values,
    )
    trial.set_user_attr("mlflow_run_id", run_id)
    cfgs = units(space, values, options.profile, options.study)
    steps = cfgs[0].train.steps
    wilcoxon = space.pruner["name"] == "wilcoxon"
    per_seed: list[list[float]] = []
    keys, reused = [], 0
    try:
        for index, cfg in enumerate(cfgs):
            key = runner.key(cfg)
            keys.append(key)

            def report(step: int, metrics: dict[str, float], index=index) -> None:
                if space.multi or wilcoxon:
                    return
                value = metrics.get(space.objectives[0].metric)
                if value is None or not np.isfinite(value):
                    return
                at = index * steps + step
                trial.report(value, at)
                tracker.log(run_id, {"intermediate": value}, step=at)
                if trial.should_prune():
                    raise UnitStopped(
                        f"pruned by Optuna at step {at} ({space.objectives[0].metric} {value:.4f})"
                    )

            monitor = Monitor(report, space.subsets(), space.validate_every)
            metrics = _finished_metrics(tracker, cfg.suite, key)
            if metrics is None:
                outcome = runner.claim_and_run(
                    cfg, key, index, len(cfgs), monitor=monitor, tags={"mlflow.parentRunId": run_id}
                )
                if outcome.status == "SKIPPED":  # another worker runs (or just ran) the same unit
                    with locked(options.results, key):
                        metrics = _finished_metrics(tracker, cfg.suite, key)
                    reused += 1
                elif outcome.status == "FINISHED":
                    metrics = outcome.metrics
                if metrics is None:
                    raise TrialFailed(f"unit {key}: {outcome.error or outcome.status}")
            else:
                reused += 1
            per_seed.append([_value(metrics, o.metric, key) for o in space.objectives])
            if wilcoxon:
                trial.report(per_seed[-1][0], index)
                if trial.should_prune():
                    raise UnitStopped(f"pruned by Optuna's Wilcoxon pruner after seed {cfg.seed}")
    except (UnitStopped, optuna.TrialPruned) as err:
        return _end(tracker, run_id, trial, "PRUNED", str(err), keys), [], reused
    except Exception as err:  # a crashing trial is FAIL; the study goes on
        log.warning("trial %d failed: %s", trial.number, err)
        return _end(tracker, run_id, trial, "FAIL", f"{type(err).__name__}: {err}", keys), [], reused
    result = [float(np.mean(v)) for v in zip(*per_seed, strict=True)]
    tracker.log(run_id, {_metric_name(o.metric): v for o, v in zip(space.objectives, result, strict=True)})
    _end(tracker, run_id, trial, "COMPLETE", "", keys)
    return "COMPLETE", result, reused


def search(options: Options, reporter=None) -> dict[str, int]:
    """Run `options.workers` workers on one study (local processes, or Ray tasks) until it holds
    `options.trials` finished or running trials; counts of this call's trials by final state."""
    if options.executor == "ray":
        from pemma.orchestration.executors import map_on_ray
        from pemma.tracking import Tracker

        uri = Tracker(options.results).uri
        arguments = [(replace(options, worker=w, executor="local"),) for w in range(options.workers)]
        return _total(map_on_ray(work, arguments, options.address, uri))
    if options.workers <= 1:
        return work(options, reporter)
    import concurrent.futures
    import multiprocessing

    from pemma.orchestration.executors import cpu_cores, limit_threads

    threads = max(1, cpu_cores() // options.workers)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        options.workers, mp_context=context, initializer=limit_threads, initargs=(threads,)
    ) as pool:
        futures = [pool.submit(work, replace(options, worker=w)) for w in range(options.workers)]
        return _total([future.result() for future in futures])


def _total(counts: list[dict[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for one in counts:
        for state, n in one.items():
            totals[state] = totals.get(state, 0) + n
    return totals
