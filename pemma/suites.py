"""Suites are data: a YAML file of defaults plus a grid, expanded here into units of work."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pemma.classes import HECKTOR, Classes, default_weights
from pemma.conditions import parse as parse_conditions
from pemma.config import ConfigError, RunConfig, deep_merge, parse_override, resolve
from pemma.methods import METHODS
from pemma.models.backbones import BACKBONES
from pemma.registry import RegistryError
from pemma.resources import SUITES, read_yaml
from pemma.tasks import TASKS

VARIANT = "variant"
"""A grid axis whose values are bundles of config keys, for one-at-a-time ablations."""


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    description: str
    defaults: dict[str, Any]
    grid: dict[str, list[Any]]


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ConfigError(f"{path}: include cycle through {' -> '.join(str(p) for p in seen)}")
    if not path.exists():
        raise ConfigError(f"suite file {path} does not exist")
    doc = read_yaml(path, "suite file", ConfigError) or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a suite file is a mapping (description, defaults, grid)")
    merged: dict[str, Any] = {}
    includes = doc.pop("include", [])
    for inc in [includes] if isinstance(includes, str) else includes:
        merged = deep_merge(merged, _read((path.parent / inc).resolve(), (*seen, path)))
    return deep_merge(merged, doc)


def load_suite(name_or_path: str) -> Suite:
    path = SUITES.find(name_or_path, ConfigError)
    doc = _read(path.resolve())
    unknown = set(doc) - {"description", "defaults", "grid", "name"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
            "expected description, include, defaults, grid"
        )
    grid = doc.get("grid") or {}
    if grid.get("method") == "all":
        grid["method"] = ["all"]
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list")
    return Suite(
        doc.get("name", path.stem), path, doc.get("description", ""), doc.get("defaults") or {}, grid
    )


def _culprit(message: str, overrides, profile: str | None, suite_path: Path) -> str:
    """Where the value a config error names came from: the --set that set its key (or a section above
    it), the --profile given on the command line, else the suite file."""
    quoted = re.match(r"unknown (?:config key|profile) '([^']+)'", message)
    key = quoted.group(1) if quoted else message.split(":", 1)[0].strip()
    for text in overrides:
        given = text.split("=", 1)[0].strip()
        if key == given or key.startswith(given + ".") or given.startswith(key + "."):
            return f"--set {text}"
    if profile and (message.startswith("unknown profile") or key == profile):
        return f"--profile {profile}"
    return str(suite_path)


def _nested(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _canonical(key: str, value: Any) -> Any:
    """Registry names for method and backbone values (aliases such as `lora` or `swin` allowed)."""
    if key == "method":
        return METHODS.canonical(value)
    if key == "backbone":
        return BACKBONES.canonical(value)
    if key == "task":
        return TASKS.canonical(value)
    return value


def classes_of(root: str | None) -> Classes:
    """The classes of the cohort at `root` (the built-in synthetic one: HECKTOR's), read from its
    description only (an nnU-Net dataset.json), no image."""
    if root is None:
        return HECKTOR
    from pemma.data.hecktor import CohortError
    from pemma.data.nnunet import classes_at

    try:
        return classes_at(Path(root))
    except CohortError as err:
        raise ConfigError(f"data.root: {err}") from err


def classes_layer(classes: Classes) -> dict[str, Any]:
    """The config a cohort's classes imply where a run sets neither: its output channels and the
    loss's weights (classes.default_weights); nothing for HECKTOR's, where the profiles' own hold."""
    if classes.count == HECKTOR.count:
        return {}
    return {
        "model": {"num_classes": classes.count + 1},
        "train": {"class_weights": list(default_weights(classes.count))},
    }


def expand(
    suite: Suite,
    *,
    profile: str | None = None,
    seeds: list[int] | None = None,
    methods: list[str] | None = None,
    backbones: list[str] | None = None,
    overrides: list[str] = (),
    data_root: str | None = None,
    minimal: bool = False,
) -> list[RunConfig]:
    """Units of a suite; `minimal` keeps every method but only the first value of every other axis."""
    grid = dict(suite.grid)
    if minimal:
        grid = {k: (v if k == "method" else v[:1]) for k, v in grid.items()}
    if grid.get("method") in (None, "all", ["all"]):
        grid["method"] = list(METHODS.names())  # every registered method: a new one joins the suite
    grid.setdefault("backbone", ["unetr"])
    grid.setdefault("seed", [0])
    if methods:
        grid["method"] = [METHODS.canonical(m) for m in methods]
    if backbones:
        grid["backbone"] = [BACKBONES.canonical(b) for b in backbones]
    if seeds:
        grid["seed"] = list(seeds)
    for m in grid["method"]:
        METHODS.canonical(m)
    for b in grid["backbone"]:
        BACKBONES.canonical(b)
    cli: dict[str, Any] = {}
    for text in overrides:
        cli = deep_merge(cli, parse_override(text))
    if profile:
        cli["profile"] = profile
    if data_root:
        cli = deep_merge(cli, {"data": {"root": str(data_root)}})
    keys = list(grid)
    units = []
    cohort_classes: dict[str | None, Classes] = {}
    for values in itertools.product(*(grid[k] for k in keys)):
        point: dict[str, Any] = {"suite": suite.name}
        for k, v in zip(keys, values, strict=True):
            if k == VARIANT:
                if not isinstance(v, dict):
                    raise ConfigError(f"{suite.path}: each grid.{VARIANT} value is a mapping of config keys")
                for vk, vv in v.items():
                    point = deep_merge(point, _nested(vk, vv))
            else:
                point = deep_merge(point, _nested(k, _canonical(k, v)))
        try:
            # the cohort's classes set the outputs and the loss's weights, below every layer that sets them
            merged = deep_merge(deep_merge(suite.defaults, point), cli)
            root = (merged.get("data") or {}).get("root")
            if root not in cohort_classes:
                cohort_classes[root] = classes_of(root)
            classes = cohort_classes[root]
            asked = (merged.get("model") or {}).get("num_classes")
            problem = classes.mismatch(asked, root or "the synthetic cohort") if asked is not None else None
            if problem:
                raise ConfigError(problem)
            cfg = resolve(classes_layer(classes), suite.defaults, point, cli)
            units.append(cfg)
        except ConfigError as err:
            raise ConfigError(f"{_culprit(str(err), overrides, profile, suite.path)}: {err}") from err
    units = [replace(cfg, task=TASKS.canonical(cfg.task)) for cfg in units]
    for cfg in units:
        BACKBONES.get(cfg.backbone).check(cfg.model)
    for conditions in dict.fromkeys(cfg.eval.conditions for cfg in units):
        try:  # a misspelled condition stops the suite before any unit
            parse_conditions(conditions)
        except RegistryError as err:
            raise ConfigError(f"eval.conditions: {err}") from err
    # A command-line override can collapse grid points into one config: run it once.
    unique: dict[str, RunConfig] = {}
    for cfg in units:
        unique.setdefault(repr(cfg), cfg)
    return list(unique.values())
