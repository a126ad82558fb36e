"""Opening an Optuna study: storage several processes or machines share (journal file, PostgreSQL),
sampler and pruner, run options, and closing the trials a dead worker left running."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pemma.locks import Lock, locked
from pemma.search.space import SEARCH_FOLDER, SearchError, Space

log = logging.getLogger(__name__)


def storage_for(url: str | None, results: Path, workers: int):
    """Optuna storage: a journal file under the results folder by default (safe for several local
    processes), an RDB URL for several machines (heartbeats fail a killed worker's trials); SQLite is
    refused for more than one worker."""
    import optuna

    if not url or "://" not in url:
        path = Path(url) if url else Path(results) / SEARCH_FOLDER / "studies.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        return journal(path)
    if url.startswith("sqlite") and workers > 1:
        raise SearchError(
            f"--storage {url}: SQLite cannot be shared by {workers} workers (Optuna advises against it: "
            "locking); leave --storage out (a journal file under the results folder, safe for local "
            "workers) or give a PostgreSQL URL (several machines)"
        )
    import time
    import warnings

    for attempt in range(3):
        try:
            # Two processes creating the schema at once collide (duplicate key): a lock on this
            # machine, and a retry for workers on other machines, which then find the tables made.
            with locked(results, "search-storage"), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
                return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=90)
        except Exception as err:  # SQLAlchemy raises many kinds
            if attempt < 2 and "duplicate" in str(err).lower():
                time.sleep(1 + attempt)
                continue
            reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise SearchError(f"--storage {url}: cannot open the study storage: {reason}") from err
    raise AssertionError("unreachable")


def journal(path: Path):
    """Optuna's journal storage on `path`, after a check of its end: a last record cut off by a crash
    or a full disk (no newline after it, or not a whole record) is removed, under the journal's own
    lock, kept in `<journal>.torn` and named in a warning (Optuna skips such a tail when it reads,
    but the next record appended would fuse with it, or follow it, and the journal would no longer
    read). A record damaged inside the file stops with a SearchError
    naming the journal, its line and what to do."""
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage

    path = Path(path)
    if path.is_file() and path.stat().st_size:
        lock = JournalFileSymlinkLock(str(path))
        lock.acquire()
        try:
            data = path.read_bytes()
            keep = data.rfind(b"\n", 0, len(data) - 1) + 1  # where the last record starts
            if not data.endswith(b"\n") or not _is_record(data[keep:]):
                with path.with_name(path.name + ".torn").open("ab") as torn:
                    torn.write(data[keep:] + b"\n")
                with path.open("r+b") as f:
                    f.truncate(keep)
                cut = len(data) - keep
                log.warning(
                    "%s: its last record was cut off (%d bytes, kept in %s.torn); removed",
                    path,
                    cut,
                    path.name,
                )
        finally:
            lock.release()
    try:
        storage = JournalStorage(JournalFileBackend(str(path)))
        storage.get_all_studies()  # reads the whole journal now, not in the middle of a trial
        return storage
    except ValueError as err:  # json.JSONDecodeError, or Optuna's "Invalid log format."
        raise SearchError(
            f"{path}: the Optuna journal is damaged at line {_bad_line(path)} (a record was cut off and "
            f"others were written after it: {err}); move the file aside to start its studies anew (their "
            "units stay tracked in MLflow and are reused, not trained again), or delete that line"
        ) from err


def _is_record(line: bytes) -> bool:
    import json

    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return False


def _bad_line(path: Path) -> int:
    with Path(path).open("rb") as f:
        return next((number for number, line in enumerate(f, 1) if not _is_record(line)), 0)


def _sampler(space: Space, salt: tuple[int, ...]):
    """The space's sampler, seeded by (its seed, *salt)."""
    import optuna

    spec = dict(space.sampler)
    seed = int(np.random.SeedSequence([int(spec.pop("seed", 0)), *salt]).generate_state(1)[0])
    kinds = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "gp": optuna.samplers.GPSampler,
    }
    return _construct(space, "sampler", kinds, {**spec, "seed": seed})


def _pruner(space: Space):
    import optuna

    kinds = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "wilcoxon": optuna.pruners.WilcoxonPruner,
    }
    return _construct(space, "pruner", kinds, dict(space.pruner))


def _construct(space: Space, what: str, kinds: dict[str, Callable], spec: dict[str, Any]):
    """kinds[spec's name](**the rest); an option the class does not take names the file."""
    name = spec.pop("name")
    try:
        return kinds[name](**spec)
    except TypeError as err:
        raise SearchError(f"{space.path}: {what} {name!r}: {err}") from err


@dataclass
class Options:
    space: Space
    study: str
    trials: int
    results: Path
    storage: str | None = None
    profile: str | None = None
    worker: int = 0
    workers: int = 1
    executor: str = "local"
    address: str | None = None


class TrialFailed(RuntimeError):
    """A unit of the trial failed; the trial ends FAIL and the study goes on."""


ALL = ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")


ACTIVE = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")


def open_study(options: Options):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = options.space
    storage = storage_for(options.storage, options.results, options.workers)
    directions = [o.direction for o in space.objectives]
    try:
        study = optuna.create_study(
            study_name=options.study,
            storage=storage,
            directions=directions,
            sampler=_sampler(space, (0,)),
            pruner=_pruner(space),
            load_if_exists=True,
        )
    except ValueError as err:  # e.g. directions that differ from the stored study's
        raise SearchError(f"study {options.study!r}: {err}") from err
    if [d.name.lower() for d in study.directions] != directions:
        raise SearchError(
            f"study {options.study!r} exists with directions {[d.name.lower() for d in study.directions]}; "
            f"{space.path} asks for {directions}: choose another --study name"
        )
    study.set_user_attr("space", str(space.path))
    study.set_user_attr("objectives", [o.metric for o in space.objectives])
    return study


def _count(study, states: tuple[str, ...]) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=tuple(TrialState[s] for s in states)))


def _trial_lock(study: str, number: int) -> str:
    return f"search-{study}-trial-{number}"


def _is_rdb(storage: str | None) -> bool:
    return bool(storage) and "://" in storage


def _close_stale(study, options: Options, tracker, runner) -> None:
    """RUNNING trials whose worker is gone end FAIL (heartbeats on RDB storage; on a journal file,
    one machine, a trial whose lock no live process holds), and their MLflow runs KILLED; unit runs
    left RUNNING by a dead worker are closed as `run` closes them."""
    import optuna
    from optuna.trial import TrialState

    runner.close_orphans(f"search-{options.study}")
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if _is_rdb(options.storage):
        optuna.storages.fail_stale_trials(study)
    else:
        for number in before:
            if not Lock(options.results, _trial_lock(options.study, number)).held_elsewhere():
                study.tell(number, state=TrialState.FAIL)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if trial.number in before and run_id:
            tracker.log(
                run_id, {}, {"optuna_state": "FAIL", "error": "its worker ended without finishing it"}
            )
            tracker.client.set_terminated(run_id, "KILLED")
            log.warning(
                "trial %d of study %s: its worker ended without finishing it: FAIL",
                trial.number,
                options.study,
            )
