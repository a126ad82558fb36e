"""The task protocol: what a task reads, how it builds its model from a method, how it trains and
evaluates a unit, and the metrics it logs (with direction and meaning).

The runner and the report only talk to this protocol; neither ever names a task. A task that needs
more grows an optional hook here with a no-op default.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pemma.config import RunConfig
from pemma.methods import Built, Method
from pemma.modalities import LABELS, SUBSETS
from pemma.registry import Registry

if TYPE_CHECKING:  # a task's declaration loads without torch: listing and suite checks stay fast
    import pandas as pd
    import torch
    from torch import nn

    from pemma.data.store import LoadedData


@dataclass(frozen=True)
class Metric:
    """One logged metric (or a family: `<name>` segments stand for any value, e.g. a stage)."""

    key: str
    title: str
    higher_is_better: bool | None
    """True / False: which direction is better; None: neither (a count, an interval bound)."""
    meaning: str
    digits: int = 3
    column: bool = True
    """Shown in the suite table when some run logged it."""
    reference: str | None = None
    """A reference role (methods.REFERENCE_ROLES); `{reference}` in the title names its method."""
    derived_from: str | None = None
    """Computed by the report, not logged: 100 x (this run's `derived_from` / the reference run's - 1),
    the reference run matched by backbone and seed (and `reference_params`)."""
    reference_params: tuple[tuple[str, str], ...] = ()

    def title_for(self, reference_name: Callable[[str], str]) -> str:
        return self.title.format(reference=reference_name(self.reference)) if self.reference else self.title

    def matches(self, name: str) -> bool:
        parts = re.split(r"<[^>]+>", self.key)  # literal text between the `<name>` segments
        return re.fullmatch("[^/]+".join(map(re.escape, parts)), name) is not None


def per_subset(key: str, title: str, higher: bool | None, meaning: str, **kw) -> tuple[Metric, ...]:
    """`key` and `title` with `{subset}` filled for every input subset (CT+PET, CT, PET)."""
    return tuple(
        Metric(key.format(subset=s), title.format(subset=LABELS[s]), higher, meaning, **kw) for s in SUBSETS
    )


IMAGE_KEYS = ("ct", "pet", "label")
"""The item keys the image tasks read: the two modalities and the label map."""

PARAMETER_METRICS = (
    Metric("params_total", "total params", None, "parameters of the unit's model", 0, column=False),
    Metric("params_trainable", "trainable", None, "parameters the unit trains", 0),
    Metric(
        "params_trainable_pct_of_reference",
        "% of {reference}",
        False,
        "trainable parameters as a percentage of the reference method's (same backbone and sizes)",
        1,
        reference="parameters",
    ),
)
"""Logged by the runner for every unit; a task lists them where its table should show them."""

LOSS_METRICS = (
    Metric(
        "train_seconds", "train s", False, "training time (first warm-up steps excluded)", 0, column=False
    ),
    Metric("train_first_loss", "first loss", None, "loss of the first training step", column=False),
    Metric(
        "train_final_loss", "final loss", None, "mean loss over the last tenth of the steps", column=False
    ),
)

UNIT_METRICS = (
    *PARAMETER_METRICS,
    Metric("unit_seconds", "unit s", False, "wall time of the whole unit", 0, column=False),
    Metric(
        "system/<metric>",
        "system",
        None,
        "MLflow's system metrics, sampled over the unit (a history: one step per sample)",
        column=False,
    ),
    Metric(
        "system_gpu_utilization_pct",
        "GPU util %",
        True,
        "mean GPU utilisation over the unit (MLflow system metrics, nvidia-ml-py)",
        0,
    ),
    Metric(
        "system_gpu_memory_peak_mb",
        "GPU MB",
        False,
        "peak GPU memory in use over the unit, whole device (MLflow system metrics)",
        0,
        column=False,
    ),
    Metric(
        "system_cpu_utilization_pct",
        "CPU %",
        None,
        "mean CPU utilisation of the machine over the unit (MLflow system metrics, psutil)",
        0,
        column=False,
    ),
    Metric(
        "system_memory_peak_mb",
        "system MB",
        False,
        "peak memory in use on the machine over the unit (MLflow system metrics, psutil)",
        0,
        column=False,
    ),
    Metric(
        "time/<phase>_s",
        "phase s",
        False,
        "wall seconds of one phase of the unit (data, ct_base, build, train, evaluate, save, continual, "
        "tracking; `pemma-bench run` sums them into where the suite's time went)",
        0,
        column=False,
    ),
    Metric(
        "base_dice_agg/ct/<class>",
        "CT base Dice",
        True,
        "the CT base's aggregated Dice on its pretraining validation cases",
        column=False,
    ),
)
"""Metrics the runner logs for every unit, whatever its task."""


class UnitStopped(Exception):
    """Raised by a monitor to stop a unit early (a search pruning its trial); the run ends KILLED."""


@dataclass(frozen=True)
class Monitor:
    """A search trial's view of its unit: validation metrics every `every` training steps (0: only
    at the end) on `subsets`, passed to `report(step, metrics)`, which may raise UnitStopped."""

    report: Callable[[int, dict[str, float]], None]
    subsets: tuple[str, ...]
    every: int = 0


class Phases:
    """Wall seconds per named phase of a unit (`with phases("train"): ...`), summed over repeats."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return {f"time/{name}_s": s for name, s in self.seconds.items()}


@dataclass
class Unit:
    """Everything a task needs to train and evaluate one unit; built once by the runner."""

    cfg: RunConfig
    key: str
    method: Method
    data: LoadedData
    base: nn.Module | None
    device: torch.device
    results: Path
    stage: Callable[[str, int], Callable[[int, float], None] | None] = field(default=lambda text, total: None)
    """Progress hook: `stage(text, steps)` returns a per-step callback (or None)."""
    note: Callable[[str], None] = field(default=lambda text: None)
    monitor: Monitor | None = None
    """Set for a search trial: the task validates as it asks (Task.validate)."""
    phases: Phases = field(default_factory=Phases)
    """Where the unit's time goes; a task times its phases with `unit.phases("train")`."""

    def output(self, kind: str, suffix: str) -> Path:
        """Where the unit writes an output of `kind`: results/<suite>/<kind>/<run key><suffix>."""
        return self.results / self.cfg.suite / kind / f"{self.key}{suffix}"

    def checkpoint(self, name: str) -> Path:
        """A resumable training stage's checkpoint, removed when the unit finishes."""
        return checkpoint_folder(self.results, self.key) / f"{name}.pt"


def checkpoint_folder(results: Path, key: str) -> Path:
    return Path(results) / "checkpoints" / key


@dataclass
class Measured:
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    """MLflow artifact folder -> a file the unit wrote (e.g. its per-patient table)."""


class Task:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    data_keys: ClassVar[tuple[str, ...]]
    """The images each patient must have (of ct, pet, label)."""
    metrics: ClassVar[tuple[Metric, ...]]
    """What the task logs, in the order its table shows them."""
    note: ClassVar[str] = ""
    """What the task's table columns mean, printed under a table that shows them."""
    parameter_share: ClassVar[bool] = True
    """Log trainable parameters as a share of the parameters-reference method's model."""

    def build(self, unit: Unit) -> Built:
        """The unit's model from its method (by default the method's own model)."""
        return unit.method.create(unit.base, unit.cfg)

    def run(self, unit: Unit, built: Built) -> Measured:
        raise NotImplementedError

    def pending(self, cfg: RunConfig, tags: dict[str, str]) -> tuple[str, ...]:
        """What `cfg` asks a unit to evaluate that its FINISHED run (these tags) has not: evaluations
        outside the run key (segmentation: test-time conditions), done by `evaluate_more` from the
        saved trained state, without training. None by default."""
        return ()

    def evaluate_more(self, unit: Unit, built: Built, tags: dict[str, str]) -> Measured:
        """The `pending` evaluations of a FINISHED unit (its run's `tags`), on `built` with the unit's
        trained state loaded here; metrics, tags and artifacts to add to the same run."""
        raise NotImplementedError(f"task {self.name!r} has nothing to evaluate after training")

    def validate(self, unit: Unit, model: nn.Module, subsets: tuple[str, ...]) -> dict[str, float]:
        """Metrics on the validation split (named `val_...`): what a search optimises. Never the test
        split. A task without one cannot be searched."""
        raise NotImplementedError(f"task {self.name!r} has no validation metrics, so it cannot be searched")

    def appendix(self, runs: pd.DataFrame) -> str:
        """Markdown the report adds under the suite table for these runs (e.g. matrices)."""
        return ""


TASKS: Registry[type[Task]] = Registry("task")


def register_task(name: str, *, aliases: tuple[str, ...] = ()):
    def decorator(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS.add(name, cls, aliases=aliases)
        return cls

    return decorator


def all_metrics() -> list[Metric]:
    """Every task's metrics in registry order, then the runner's, each key once."""
    seen: dict[str, Metric] = {}
    for metric in (*(m for _, task in TASKS.items() for m in task.metrics), *UNIT_METRICS):
        seen.setdefault(metric.key, metric)
    return list(seen.values())
