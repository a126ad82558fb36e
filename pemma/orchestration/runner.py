"""Run units of work: key, skip if finished, provenance, the one preamble, the task, log, status.

The runner never branches on a method's, backbone's or task's name: it asks the task what a unit
does and the method what it builds, trains and accepts.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from pemma.config import RunConfig, stable_hash
from pemma.data.store import DataStore
from pemma.files import no_space
from pemma.locks import Lock
from pemma.methods import METHODS, Built, build_method, reference_method
from pemma.tasks import TASKS, Measured, Unit
from pemma.tasks.base import PARAMETER_METRICS, Monitor, Phases, UnitStopped, checkpoint_folder
from pemma.tracking import Finished, Tracker, provenance, run_key

if TYPE_CHECKING:  # torch and MONAI load when a unit runs: a dry run and a rerun with nothing to do skip them
    import torch

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    import torch

    name = os.environ.get("PEMMA_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    from monai.utils import set_determinism

    set_determinism(seed=seed)


RUN, EVALUATE, DONE = "run", "evaluate", "done"
"""What a unit needs (Runner.todo)."""


@dataclass
class UnitOutcome:
    key: str
    status: str  # FINISHED | EVALUATED (pending evaluations of a finished unit) | SKIPPED | FAILED
    seconds: float = 0.0
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    headline: str = ""
    """The unit's first logged table metric, as `title value`, for progress lines."""


class Reporter:
    """Progress hooks; the CLI passes one that draws progress bars or prints plain lines."""

    def stage(self, text: str, total: int) -> Callable[[int, float], None] | None:
        return None

    def note(self, text: str) -> None:
        pass

    def start(self, key: str, index: int, total: int) -> None:
        pass

    def done(self, outcome: UnitOutcome) -> None:
        pass


class Runner:
    def __init__(
        self,
        results: Path,
        *,
        device: torch.device | None = None,
        tracker: Tracker | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.results = Path(results)
        if device is not None:
            self.device = device
        self.tracker = tracker or Tracker(self.results)
        self.reporter = reporter or Reporter()
        self.store = DataStore(self.results)
        self._reference: dict[str, int] = {}
        self.spent: dict[str, float] = {}
        """Seconds by phase spent outside units (CT bases trained before them), for time_spent."""

    @cached_property
    def device(self) -> torch.device:
        """The device units run on (PEMMA_DEVICE, else CUDA where present); asked for when a unit runs."""
        return default_device()

    def prepare(self, units: list[RunConfig]) -> None:
        """Load (and on first use write) the data of every unit, so data errors stop the suite early."""
        for cfg in units:
            self.store.load(cfg)

    def key(self, cfg: RunConfig) -> str:
        return run_key(cfg, self.store.fingerprint(cfg.data), METHODS.get(cfg.method).revision(cfg.backbone))

    def base_of(self, cfg: RunConfig) -> str | None:
        """The cached CT base a unit loads or trains first (None: its method starts from scratch, or
        the user gave a base checkpoint)."""
        if not METHODS.get(cfg.method).needs_base or cfg.pretrain.checkpoint:
            return None
        from pemma.tasks.segmentation.ct_base import base_key

        return base_key(cfg, self.store.load(cfg).data.fingerprint)

    def base_cached(self, cfg: RunConfig) -> bool:
        """Whether the CT base of `cfg`'s unit is trained and cached (True where it needs none)."""
        if self.base_of(cfg) is None:
            return True
        from pemma.tasks.segmentation.ct_base import base_folder, is_cached

        return is_cached(base_folder(cfg, self.store.load(cfg).data.fingerprint, self.results / "bases"))

    def train_base(self, cfg: RunConfig) -> dict:
        """The CT base of `cfg`'s unit, trained (or loaded) and cached outside any unit, exactly as the
        unit's own preamble would; its info (key, validation Dice)."""
        seed_everything(cfg.seed)
        return self._base(cfg, self.store.load(cfg))[1]

    def _base(self, cfg: RunConfig, loaded) -> tuple[torch.nn.Module, dict]:
        from pemma.tasks.segmentation.ct_base import pretrained_base

        return pretrained_base(
            cfg,
            loaded.data,
            loaded.plan,
            self.results / "bases",
            self.device,
            self.reporter.stage,
            checkpoint_root=self.results / "checkpoints",
        )

    def todo(self, cfg: RunConfig, key: str, finished: dict[str, Finished]) -> str:
        """What unit `cfg` (run key `key`) needs, given the suite's `finished` runs: RUN (not
        finished), EVALUATE (finished, but asked for evaluations its run lacks, e.g. a test-time
        condition added since) or DONE."""
        run = finished.get(key)
        if run is None:
            return RUN
        return EVALUATE if TASKS.get(cfg.task)().pending(cfg, run.tags) else DONE

    def run(self, units: list[RunConfig]) -> list[UnitOutcome]:
        """Every unit not FINISHED (or FINISHED with evaluations pending) and not claimed by another
        live process (a lock per run key)."""
        outcomes = []
        finished: dict[str, dict[str, Finished]] = {}
        for suite in dict.fromkeys(cfg.suite for cfg in units):
            self.close_orphans(suite)
        for index, cfg in enumerate(units):
            if cfg.suite not in finished:
                finished[cfg.suite] = self.tracker.finished_runs(cfg.suite)
            key = self.key(cfg)
            if self.todo(cfg, key, finished[cfg.suite]) == DONE:
                outcome = UnitOutcome(key, "SKIPPED")
            else:
                outcome = self.claim_and_run(cfg, key, index, len(units))
            self.reporter.done(outcome)
            outcomes.append(outcome)
        return outcomes

    def claim_and_run(
        self,
        cfg: RunConfig,
        key: str,
        index: int,
        total: int,
        *,
        monitor: Monitor | None = None,
        tags: dict[str, str] | None = None,
    ) -> UnitOutcome:
        lock = Lock(self.results, key)
        if not lock.acquire(block=False):
            return UnitOutcome(key, "SKIPPED", error=f"being run by {lock.owner()}")
        try:
            finished = self.tracker.finished_runs(cfg.suite)  # another process may have run it meanwhile
            todo = self.todo(cfg, key, finished)
            if todo == DONE:
                return UnitOutcome(key, "SKIPPED")
            self.reporter.start(key, index, total)
            if todo == EVALUATE:
                return self.evaluate_unit(cfg, key, finished[key])
            return self.run_unit(cfg, key, monitor=monitor, tags=tags)
        finally:
            lock.release()

    def close_orphans(self, suite: str) -> None:
        """RUNNING runs whose owner is gone (nobody holds their key's lock) end as KILLED."""
        for key in self.tracker.keys(suite, "RUNNING"):
            if key and not Lock(self.results, key).held_elsewhere():
                self.tracker.close_stale(suite, key)

    def run_unit(
        self,
        cfg: RunConfig,
        key: str,
        *,
        monitor: Monitor | None = None,
        tags: dict[str, str] | None = None,
    ) -> UnitOutcome:
        """One unit, tracked; `monitor` and `tags` come from a search trial (validation metrics on the
        way, its parent run). A monitor that stops the unit ends its run KILLED and re-raises."""
        from pemma.training.loop import dtype_name

        t0 = time.perf_counter()
        tags = {
            **(tags or {}),
            **provenance(
                self.device, dtype_name(self.device, cfg.train.amp, cpu=cfg.train.frozen_bf16), cfg.profile
            ),
            "task": cfg.task,
            "method": cfg.method,
            "backbone": cfg.backbone,
            "seed": str(cfg.seed),
        }
        self.tracker.close_stale(cfg.suite, key)
        run_id = self.tracker.start(cfg.suite, key, cfg.flat(), tags)
        if monitor is not None:  # intermediate validation metrics go to the run's history too
            report = monitor.report

            def logged(step: int, metrics: dict[str, float]) -> None:
                self.tracker.log(run_id, metrics, step=step)
                report(step, metrics)

            monitor = replace(monitor, report=logged)
        phases = Phases()
        try:
            with self.tracker.system_metrics(run_id):
                measured = self.train_and_score(cfg, key, monitor, phases)
            metrics = {**measured.metrics, "unit_seconds": time.perf_counter() - t0}
            # The rest of the unit's wall time so far: starting its run and the system metrics sampler.
            metrics.update(phases.metrics())
            metrics["time/tracking_s"] = metrics["unit_seconds"] - sum(phases.seconds.values())
            self.tracker.log(run_id, metrics, measured.tags)
            for folder, path in measured.artifacts.items():
                self.tracker.log_artifact(run_id, path, folder)
            self.tracker.finish(run_id)
            shutil.rmtree(checkpoint_folder(self.results, key), ignore_errors=True)
            return UnitOutcome(
                key, "FINISHED", metrics["unit_seconds"], metrics=metrics, headline=headline(cfg, metrics)
            )
        except (KeyboardInterrupt, UnitStopped) as err:
            self.tracker.fail(run_id, err, status="KILLED")
            raise
        except Exception as err:
            full = no_space(err, self.tracker.uri)
            if full is not None:  # every later unit would fail the same way: stop the suite
                self.tracker.try_fail(run_id, full)
                raise full from err
            log.exception("unit %s failed", key)
            self.tracker.fail(run_id, err)
            return UnitOutcome(key, "FAILED", time.perf_counter() - t0, error=f"{type(err).__name__}: {err}")

    def evaluate_unit(self, cfg: RunConfig, key: str, run: Finished) -> UnitOutcome:
        """A FINISHED unit's pending evaluations (Task.pending), from its saved trained state, added
        to its run: no training. The run stays FINISHED whatever happens; what failed is reported and
        tried again at the next start (its tag listing what was evaluated is written last)."""
        t0 = time.perf_counter()
        phases = Phases()
        task = TASKS.get(cfg.task)()
        try:
            unit, built, _ = self.assemble(cfg, key, None, phases)
            measured = task.evaluate_more(unit, built, run.tags)
            self.tracker.log(run.run_id, measured.metrics)
            for folder, path in measured.artifacts.items():
                self.tracker.log_artifact(run.run_id, path, folder)
            self.tracker.log(run.run_id, {}, measured.tags)
        except KeyboardInterrupt:
            raise
        except Exception as err:
            log.exception("unit %s: evaluating %s failed", key, ", ".join(task.pending(cfg, run.tags)))
            return UnitOutcome(key, "FAILED", time.perf_counter() - t0, error=f"{type(err).__name__}: {err}")
        added = task.pending(cfg, run.tags)
        return UnitOutcome(
            key,
            "EVALUATED",
            time.perf_counter() - t0,
            metrics={**measured.metrics, **phases.metrics()},
            headline=f"{len(added)} more evaluation(s), no training: {', '.join(added)}",
        )

    def assemble(
        self, cfg: RunConfig, key: str, monitor: Monitor | None, phases: Phases
    ) -> tuple[Unit, Built, Measured]:
        """The one preamble every unit shares: its data, its CT base, its task's model (seeded as
        always, so a rebuilt model is the one trained); what it records of them."""
        task = TASKS.get(cfg.task)()
        seed_everything(cfg.seed)
        with phases("data"):
            loaded = self.store.load(cfg)
        method = METHODS.get(cfg.method)()
        out = Measured(
            tags={"data_fingerprint": loaded.data.fingerprint, "data_root": str(loaded.cohort.root)}
        )
        base = None
        if method.needs_base:
            with phases("ct_base"):
                base, info = self._base(cfg, loaded)
            out.tags["base_key"] = info.get("key", info.get("source", ""))
            out.metrics.update({f"base_dice_agg/ct/{k}": v for k, v in info.get("val_dice_agg", {}).items()})
        seed_everything(cfg.seed)
        unit = Unit(
            cfg,
            key,
            method,
            loaded,
            base,
            self.device,
            self.results,
            stage=self.reporter.stage,
            note=self.reporter.note,
            monitor=monitor,
            phases=phases,
        )
        with phases("build"):
            built = task.build(unit)
        return unit, built, out

    def train_and_score(
        self, cfg: RunConfig, key: str, monitor: Monitor | None = None, phases: Phases | None = None
    ) -> Measured:
        """The preamble (assemble), parameter counts, then the task; `phases` gathers where the time
        went."""
        from pemma.metrics.params import count_parameters

        phases = phases if phases is not None else Phases()
        task = TASKS.get(cfg.task)()
        unit, built, out = self.assemble(cfg, key, monitor, phases)
        with phases("build"):
            total, trainable = count_parameters(built.model)
            reference = self.reference_trainable(cfg, unit.base) if task.parameter_share else 0
        out.metrics.update({"params_total": total, "params_trainable": trainable})
        if task.parameter_share:
            out.metrics["params_trainable_pct_of_reference"] = 100.0 * trainable / reference
            out.tags["params_reference_method"] = reference_method("parameters")
        out.tags["adapted_modules"] = ",".join(built.adapted_modules) or "none"
        if built.adapted_modules:
            self.reporter.note(
                f"{cfg.method} on {cfg.backbone} adapts {len(built.adapted_modules)} modules: "
                + ", ".join(built.adapted_modules)
            )
        measured = task.run(unit, built)
        out.metrics.update(measured.metrics)
        out.tags.update(measured.tags)
        out.artifacts.update(measured.artifacts)
        return out

    def reference_trainable(self, cfg: RunConfig, base: torch.nn.Module | None) -> int:
        memo = stable_hash(
            {"backbone": cfg.backbone, "model": asdict(cfg.model), "adapter": asdict(cfg.adapter)}
        )
        if memo not in self._reference:
            import torch

            from pemma.metrics.params import count_parameters

            with torch.random.fork_rng():  # a unit's random stream must not depend on the units before it
                built = build_method(reference_method("parameters"), cfg, base)
            self._reference[memo] = count_parameters(built.model)[1]
        return self._reference[memo]


def headline(cfg: RunConfig, metrics: dict[str, float]) -> str:
    """The first of its task's table columns the unit logged, e.g. `Dice CT+PET 0.712`."""
    shared = {m.key for m in PARAMETER_METRICS}
    for metric in TASKS.get(cfg.task).metrics:
        if metric.column and metric.key not in shared and metric.key in metrics:
            return f"{metric.title} {metrics[metric.key]:.3f}"
    return ""


PHASE_ORDER = ("data", "ct_base", "build", "train", "evaluate", "continual", "save", "tracking")


def time_spent(
    outcomes: list[UnitOutcome], check_seconds: float | None = None, outside: dict[str, float] | None = None
) -> list[tuple[str, float]]:
    """Where a run's time went: the data check before the units (when given), then each phase summed
    over the units this process ran (their `time/<phase>_s` metrics) and the phases' seconds spent
    `outside` them (Runner.spent), in PHASE_ORDER."""
    totals: dict[str, float] = dict(outside or {})
    for outcome in outcomes:
        for name, value in outcome.metrics.items():
            if name.startswith("time/") and name.endswith("_s"):
                phase = name.removeprefix("time/").removesuffix("_s")
                totals[phase] = totals.get(phase, 0.0) + value
    rank = {name: i for i, name in enumerate(PHASE_ORDER)}
    rows = [("data check", check_seconds)] if check_seconds is not None else []
    return rows + sorted(totals.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0]))


def spread_by_base(bases: list[str | None]) -> list[int]:
    """An order for parallel workers: every CT base's first unit (the one that trains it), then the
    units without a base (they wait for nothing), then the other units of each base in turn (round
    robin over bases, in order of first use). Workers so train different bases first, and a suite
    with fewer bases than workers fills the rest with units that need none instead of waiting on a
    base's lock. Within a base the units keep their order."""
    groups: dict[str | None, list[int]] = {}
    for index, base in enumerate(bases):
        groups.setdefault(base, []).append(index)
    free = groups.pop(None, [])
    queues = list(groups.values())
    order = [queue.pop(0) for queue in queues] + free
    queues = [queue for queue in queues if queue]
    while queues:
        order += [queue.pop(0) for queue in queues]
        queues = [queue for queue in queues if queue]
    return order
