"""Optuna studies over a suite's units: a search space YAML, a validation-split objective, storage that
several processes (or machines) share, one MLflow run per study with a nested run per trial.

A trial is a set of units (one per seed) that the runner trains like any other, with a monitor that
hands it validation metrics on the way (for pruning) and at the end (the objective). The sampler
never sees a test metric: the objectives may name only validation metrics (`val_...`) and parameter
counts, and the trial's value is read from those alone.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pemma.config import ConfigError, deep_merge, parse_override
from pemma.locks import Lock, locked
from pemma.modalities import SUBSETS
from pemma.suites import PACKAGE, SHIPPED, Suite, _nested, expand, load_suite
from pemma.tasks.base import PARAMETER_METRICS, Monitor, UnitStopped

log = logging.getLogger(__name__)

SEARCH_FOLDER = "search"
"""Search spaces live in ablations/search/ (and any PEMMA_SEARCH_PATH folder)."""
SAMPLERS = ("tpe", "random", "nsga2", "gp")
PRUNERS = ("none", "median", "percentile", "wilcoxon")
DIRECTIONS = ("maximize", "minimize")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SPACE_KEYS = {
    "description",
    "suite",
    "method",
    "backbone",
    "profile",
    "seeds",
    "set",
    "objectives",
    "params",
    "sampler",
    "pruner",
    "trials",
    "validate_every",
}


class SearchError(ConfigError):
    """A search space, storage or study that cannot be used; the message names the file or option."""


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str

    @property
    def subset(self) -> str | None:
        """The input subset a validation Dice objective is measured on (val_dice/<subset>/...)."""
        parts = self.metric.split("/")
        return parts[1] if len(parts) == 3 and parts[1] in SUBSETS else None


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # int | float | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class Space:
    name: str
    path: Path
    description: str
    suite: str
    method: str
    backbone: str
    objectives: tuple[Objective, ...]
    params: tuple[Param, ...]
    profile: str | None = None
    seeds: tuple[int, ...] = (0,)
    set: tuple[str, ...] = ()
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    trials: int = 20
    validate_every: int = 0

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    def subsets(self) -> tuple[str, ...]:
        """Input subsets the objectives validate on (CT+PET when none is named)."""
        named = [o.subset for o in self.objectives if o.subset]
        return tuple(dict.fromkeys(named)) or (SUBSETS[0],)


# ---------------------------------------------------------------------------------------------- files


def space_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("PEMMA_SEARCH_PATH", "").split(os.pathsep) if p]
    shipped = SHIPPED / "ablations" / SEARCH_FOLDER if SHIPPED.is_dir() else None
    return [*extra, shipped or PACKAGE.parent / "ablations" / SEARCH_FOLDER]


def available_spaces() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in space_dirs():
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            found.setdefault(path.stem, path)
    return found


def find_space(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    known = available_spaces()
    if name_or_path in known:
        return known[name_or_path]
    close = difflib.get_close_matches(name_or_path, list(known), n=2)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise SearchError(
        f"unknown search space {name_or_path!r}{hint} (known: {', '.join(known) or 'none'}; a file "
        "path ending in .yaml also works)"
    )


def _objective(path: Path, raw: Any) -> Objective:
    if not isinstance(raw, dict) or set(raw) - {"metric", "direction"} or "metric" not in raw:
        raise SearchError(f"{path}: each objective is a mapping with 'metric' and 'direction'")
    metric, direction = str(raw["metric"]), str(raw.get("direction", "maximize"))
    allowed = {m.key for m in PARAMETER_METRICS if m.key != "params_trainable_pct_of_reference"}
    if not metric.startswith("val_") and metric not in allowed:
        raise SearchError(
            f"{path}: objective {metric!r} is not a validation metric: a search optimises on the "
            f"validation split only (val_..., e.g. val_dice/ctpet/mean) or on {', '.join(sorted(allowed))}; "
            "test metrics are for reporting"
        )
    if direction not in DIRECTIONS:
        raise SearchError(f"{path}: objective {metric!r}: direction must be maximize or minimize")
    return Objective(metric, direction)


def _param(path: Path, key: str, raw: Any) -> Param:
    where = f"{path}: params.{key}"
    if isinstance(raw, list):
        raw = {"choices": raw}
    if not isinstance(raw, dict):
        raise SearchError(f"{where}: a list of choices or a mapping (low, high, log, step | choices)")
    unknown = set(raw) - {"low", "high", "log", "step", "choices", "type"}
    if unknown:
        raise SearchError(f"{where}: unknown option(s) {', '.join(sorted(unknown))}")
    if "choices" in raw:
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise SearchError(f"{where}: choices must be a non-empty list")
        return Param(key, "categorical", choices=tuple(choices))
    if "low" not in raw or "high" not in raw:
        raise SearchError(f"{where}: needs low and high (or choices)")
    low, high = raw["low"], raw["high"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) or low >= high:
        raise SearchError(f"{where}: low and high must be numbers with low < high, got {low!r}, {high!r}")
    kind = raw.get("type") or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise SearchError(f"{where}: type must be int or float, got {kind!r}")
    log_scale = bool(raw.get("log", False))
    if log_scale and low <= 0:
        raise SearchError(f"{where}: a log scale needs low > 0")
    if log_scale and raw.get("step") is not None:
        raise SearchError(f"{where}: step and log cannot be combined (Optuna)")
    return Param(key, kind, float(low), float(high), log_scale, raw.get("step"))


def _choice(path: Path, what: str, raw: Any, known: tuple[str, ...], default: str) -> dict[str, Any]:
    spec = {"name": raw} if isinstance(raw, str) else dict(raw or {"name": default})
    spec.setdefault("name", default)
    if spec["name"] not in known:
        close = difflib.get_close_matches(str(spec["name"]), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SearchError(f"{path}: unknown {what} {spec['name']!r}{hint} (known: {', '.join(known)})")
    return spec


def load_space(name_or_path: str) -> Space:
    from pemma.report.definition import ReportError, read_yaml

    path = find_space(name_or_path)
    try:
        raw = read_yaml(path, "search space")
    except ReportError as err:
        raise SearchError(str(err)) from err
    if not isinstance(raw, dict):
        raise SearchError(f"{path}: a search space is a mapping (suite, method, objectives, params, ...)")
    for key in sorted(set(raw) - SPACE_KEYS):
        close = difflib.get_close_matches(key, sorted(SPACE_KEYS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SearchError(f"{path}: unknown key {key!r}{hint}")
    objectives = raw.get("objectives") or [{"metric": "val_dice/ctpet/mean", "direction": "maximize"}]
    params = raw.get("params")
    if not isinstance(params, dict) or not params:
        raise SearchError(f"{path}: 'params' must map config keys to their ranges or choices")
    sampler = _choice(path, "sampler", raw.get("sampler"), SAMPLERS, "tpe")
    pruner = _choice(path, "pruner", raw.get("pruner"), PRUNERS, "none")
    space = Space(
        name=path.stem,
        path=path,
        description=str(raw.get("description", "")).strip(),
        suite=str(raw.get("suite", "main")),
        method=str(raw.get("method", "pemma-lora")),
        backbone=str(raw.get("backbone", "unetr")),
        objectives=tuple(_objective(path, o) for o in objectives),
        params=tuple(_param(path, str(k), v) for k, v in params.items()),
        profile=raw.get("profile"),
        seeds=tuple(int(s) for s in raw.get("seeds", [0])),
        set=tuple(str(s) for s in raw.get("set", [])),
        sampler=sampler,
        pruner=pruner,
        trials=int(raw.get("trials", 20)),
        validate_every=int(raw.get("validate_every", 0)),
    )
    if space.multi and pruner["name"] != "none":
        raise SearchError(
            f"{path}: pruner {pruner['name']!r} with {len(space.objectives)} objectives: Optuna cannot prune "
            "multi-objective trials (Trial.report is single-objective); use pruner: none"
        )
    if pruner["name"] in ("median", "percentile") and not space.validate_every:
        raise SearchError(f"{path}: pruner {pruner['name']!r} needs validate_every > 0 (intermediate values)")
    if space.trials < 1 or space.validate_every < 0 or not space.seeds:
        raise SearchError(f"{path}: trials must be >= 1, validate_every >= 0 and seeds non-empty")
    return space


def with_options(
    space: Space, *, method: str | None = None, backbone: str | None = None, overrides: tuple[str, ...] = ()
) -> Space:
    """The space with the command line's method, backbone and extra `--set` overrides."""
    return replace(
        space,
        method=method or space.method,
        backbone=backbone or space.backbone,
        set=(*space.set, *overrides),
    )


def check_space(space: Space, profile: str | None = None) -> list[Any]:
    """Resolve the units at the space's lowest and highest values, so a bad key or value fails here."""
    cfgs = []
    corners = [{p.key: p.choices[0] if p.kind == "categorical" else p.low for p in space.params}]
    corners.append({p.key: p.choices[-1] if p.kind == "categorical" else p.high for p in space.params})
    for corner in corners:
        values = {
            k: int(v) if p.kind == "int" else v
            for (k, v), p in zip(corner.items(), space.params, strict=True)
        }
        try:
            cfgs += units(space, values, profile)
        except ConfigError as err:
            raise SearchError(f"{space.path}: {err}") from err
    _check_task(space, cfgs[0].task)
    return cfgs


def _check_task(space: Space, name: str) -> None:
    """The suite's task validates (it has a `validate` hook) and logs every objective's metric."""
    from pemma.tasks import TASKS
    from pemma.tasks.base import UNIT_METRICS, Task

    task = TASKS.get(name)
    if task.validate is Task.validate:
        raise SearchError(
            f"{space.path}: task {name!r} (suite {space.suite}) has no validation metrics to search on"
        )
    known = [*task.metrics, *UNIT_METRICS]
    for objective in space.objectives:
        if not any(m.matches(objective.metric) for m in known):
            keys = [m.key for m in known if m.key.startswith(objective.metric.split("/")[0])]
            close = difflib.get_close_matches(objective.metric, [m.key for m in known], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(keys[:6])})"
            raise SearchError(f"{space.path}: task {name!r} logs no metric {objective.metric!r}{hint}")


def units(space: Space, values: dict[str, Any], profile: str | None = None, study: str | None = None):
    """The trial's units (one per seed) for these sampled values, in the study's own suite."""
    suite = load_suite(space.suite)
    overrides = [*space.set, *(f"{k}={json.dumps(v)}" for k, v in values.items())]
    cfgs = expand(
        suite,
        profile=profile or space.profile,
        seeds=list(space.seeds),
        methods=[space.method],
        backbones=[space.backbone],
        overrides=overrides,
    )
    return [replace(cfg, suite=f"search-{study or space.name}") for cfg in cfgs]


# ------------------------------------------------------------------------------------------- storage


def storage_for(url: str | None, results: Path, workers: int):
    """Optuna storage: a journal file under the results folder by default (safe for several local
    processes), an RDB URL for several machines (heartbeats fail a killed worker's trials); SQLite is
    refused for more than one worker."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if not url:
        folder = Path(results) / SEARCH_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(folder / "studies.journal")))
    if "://" not in url:
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
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


# -------------------------------------------------------------------------------------------- worker


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
"""Trial states that count towards --trials (FAIL does not: a crashed trial is replaced)."""


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


def _trial_lock(study: str, number: int) -> str:
    return f"search-{study}-trial-{number}"


def _is_rdb(storage: str | None) -> bool:
    return bool(storage) and "://" in storage


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


def study_run(tracker, options: Options) -> str:
    """The study's MLflow parent run (one per study; reopened by a rerun or another worker)."""
    suite = f"search-{options.study}"
    found = tracker.find_run(suite, {"search_study": options.study, "search_level": "study"})
    if found:
        tracker.client.update_run(found, status="RUNNING")
        return found
    space = options.space
    params = {
        "space": str(space.path.name),
        "method": space.method,
        "backbone": space.backbone,
        "seeds": ",".join(map(str, space.seeds)),
        "sampler": json.dumps(space.sampler),
        "pruner": json.dumps(space.pruner),
        "objectives": ", ".join(f"{o.metric} ({o.direction})" for o in space.objectives),
        **{f"space.{p.key}": _describe(p) for p in space.params},
    }
    return tracker.create_run(
        suite, f"study {options.study}", {"search_study": options.study, "search_level": "study"}, params
    )


def _describe(p: Param) -> str:
    if p.kind == "categorical":
        return f"choices {list(p.choices)}"
    return f"{p.kind} [{p.low:g}, {p.high:g}]{' log' if p.log else ''}"


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


def _metric_name(metric: str) -> str:
    return f"objective/{metric}"


def _end(tracker, run_id: str, trial, state: str, why: str, keys: list[str]) -> str:
    tags = {"optuna_state": state, "run_keys": ",".join(keys)}
    if why:
        tags["error" if state == "FAIL" else "pruned"] = why
    tracker.log(run_id, {}, tags)
    tracker.client.set_terminated(run_id, {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED"))
    trial.set_user_attr("run_keys", keys)
    return state


def _value(metrics: dict[str, float], metric: str, key: str) -> float:
    if metric not in metrics:
        raise TrialFailed(f"unit {key} logged no {metric!r} (a validation metric of its task?)")
    value = float(metrics[metric])
    if not np.isfinite(value):
        raise TrialFailed(f"unit {key}: {metric} is {value} (no class present in the validation split?)")
    return value


def _finished_metrics(tracker, suite: str, key: str) -> dict[str, float] | None:
    """A unit another trial already ran with the same configuration: reuse its metrics."""
    runs = tracker.runs(suite)
    if runs.empty or "tags.run_key" not in runs:
        return None
    mine = runs[runs["tags.run_key"] == key]
    if mine.empty:
        return None
    row = mine.sort_values("end_time").iloc[-1]
    return {c.removeprefix("metrics."): row[c] for c in mine if c.startswith("metrics.") and row[c] == row[c]}


def summarise(tracker, parent: str, study) -> None:
    """Counts and the best trial(s) on the study's parent run; it ends FINISHED."""
    from optuna.trial import TrialState

    metrics = {f"trials_{s.name.lower()}": float(_count(study, (s.name,))) for s in TrialState}
    tags = {}
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if done:
        if len(study.directions) == 1:
            best = study.best_trial
            metrics["best_value"] = best.value
            tags["best_trial"] = str(best.number)
            tags["best_params"] = json.dumps(best.params)
        else:
            tags["pareto_trials"] = ",".join(str(t.number) for t in study.best_trials)
    tracker.log(parent, metrics, tags)
    tracker.client.set_terminated(parent, "FINISHED")


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


# -------------------------------------------------------------------------------------- best / plots


def best_trials(study) -> list:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise SearchError(f"study {study.study_name!r} has no complete trial yet")
    return (
        [study.best_trial]
        if len(study.directions) == 1
        else sorted(study.best_trials, key=lambda t: t.number)
    )


def export_best(study, space: Space, path: Path, profile: str | None = None, seeds=(0, 1, 2)) -> Path:
    """The best configuration (or the Pareto set, as a `variant` axis) as a suite file that
    `pemma-bench run --suite FILE` runs with seeds on the test split."""
    from pemma.files import write_atomic

    suite: Suite = load_suite(space.suite)
    defaults = dict(suite.defaults)
    for text in space.set:
        defaults = deep_merge(defaults, parse_override(text))
    if profile or space.profile:
        defaults["profile"] = profile or space.profile
    best = best_trials(study)
    grid: dict[str, Any] = {"method": [space.method], "backbone": [space.backbone], "seed": list(seeds)}
    if len(best) == 1:
        for key, value in best[0].params.items():
            defaults = deep_merge(defaults, _nested(key, value))
    else:
        grid["variant"] = [dict(t.params) for t in best]

    def scored(t) -> str:
        pairs = zip(space.objectives, t.values, strict=True)
        return f"trial {t.number}: " + ", ".join(f"{o.metric} {v:.4g}" for o, v in pairs)

    values = "; ".join(scored(t) for t in best)
    doc = {
        "description": (
            f"Best of Optuna study {study.study_name!r} ({space.path.name}, objectives on the validation "
            f"split): {values}. Rerun with seeds; its test-split numbers are the ones to report."
        ),
        "defaults": defaults,
        "grid": grid,
    }
    text = yaml.safe_dump(doc, sort_keys=False)
    write_atomic(Path(path), lambda tmp: Path(tmp).write_text(text))
    return Path(path)


def plots(study, folder: Path) -> list[Path]:
    """Optimisation history, parameter importances (when 2+ trials completed) and, for several
    objectives, the Pareto front, as PNG files (Optuna's matplotlib plots)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = study.user_attrs.get("objectives") or [f"objective {i}" for i in range(len(study.directions))]
    drawn = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        jobs: list[tuple[str, Callable]] = []
        if len(study.directions) == 1:
            jobs.append(("history", lambda: ovm.plot_optimization_history(study, target_name=names[0])))
            if len(complete) >= 2 and len(study.best_trial.params) >= 1:
                jobs.append(("importances", lambda: ovm.plot_param_importances(study)))
        else:
            jobs.append(("pareto", lambda: ovm.plot_pareto_front(study, target_names=names)))
            for i, name in enumerate(names):
                jobs.append(
                    (
                        f"history-{i}",
                        lambda i=i, name=name: ovm.plot_optimization_history(
                            study, target=lambda t: t.values[i], target_name=name
                        ),
                    )
                )
        for stem, draw in jobs:
            if not complete:
                break
            try:
                ax = draw()
            except (ValueError, RuntimeError) as err:  # e.g. importances of a constant objective
                log.info("study %s: no %s plot (%s)", study.study_name, stem, err)
                continue
            figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            figure.set_size_inches(7, 4.5)
            figure.tight_layout()
            path = folder / f"{stem}.png"
            figure.savefig(path, dpi=110)
            plt.close(figure)
            drawn.append(path)
    return drawn


def trials_table(study):
    """One row per trial: number, state, params, values, run keys."""
    import pandas as pd

    names = study.user_attrs.get("objectives") or []
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"trial": t.number, "state": t.state.name}
        row.update(t.params)
        # Optuna stores a pruned trial's last intermediate value as its value: not an objective
        for i, v in enumerate(t.values or [] if t.state.name == "COMPLETE" else []):
            row[names[i] if i < len(names) else f"value {i}"] = v
        if t.state.name == "PRUNED" and t.intermediate_values:
            step = max(t.intermediate_values)
            row["pruned at"] = f"step {step}: {t.intermediate_values[step]:.4g}"
        row["run keys"] = ", ".join(t.user_attrs.get("run_keys", []))
        rows.append(row)
    return pd.DataFrame(rows)


def trials_markdown(study) -> str:
    """The trials table as GitHub Markdown (numbers to 4 significant digits)."""
    table = trials_table(study)
    if table.empty:
        return "(no trials)\n"

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if v != v else f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
