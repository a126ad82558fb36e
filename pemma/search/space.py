"""A search space: its YAML (objectives, parameters, sampler, pruner), checked against the suite it
searches, and the units a trial's values make."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pemma.config import ConfigError
from pemma.modalities import SUBSETS
from pemma.resources import SPACES, did_you_mean, read_yaml
from pemma.suites import expand, load_suite
from pemma.tasks.base import PARAMETER_METRICS

SEARCH_FOLDER = "search"
"""results/search/: the studies' journals and outputs."""

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


def find_space(name_or_path: str) -> Path:
    return SPACES.find(name_or_path, SearchError)


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
        hint = did_you_mean(str(spec["name"]), known)
        raise SearchError(f"{path}: unknown {what} {spec['name']!r}{hint} (known: {', '.join(known)})")
    return spec


def load_space(name_or_path: str) -> Space:
    path = find_space(name_or_path)
    raw = read_yaml(path, "search space", SearchError)
    if not isinstance(raw, dict):
        raise SearchError(f"{path}: a search space is a mapping (suite, method, objectives, params, ...)")
    for key in sorted(set(raw) - SPACE_KEYS):
        raise SearchError(f"{path}: unknown key {key!r}{did_you_mean(key, SPACE_KEYS)}")
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
            hint = did_you_mean(objective.metric, [m.key for m in known])
            hint = hint or f" (known: {', '.join(keys[:6])})"
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
