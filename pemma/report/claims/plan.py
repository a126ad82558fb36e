"""A claims plan: the units the claims need (shipped suites, filtered, at one profile and seed
list, with overrides), the margins, and the plan's tracked runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from pemma.config import ConfigError, flatten, key_scopes, parse_override
from pemma.methods import METHODS
from pemma.report.definition import ReportError, logged
from pemma.report.sources import Sources
from pemma.resources import SUITES, did_you_mean, read_yaml

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN = "supported", "contradicted", "inconclusive", "not run"


@dataclass(frozen=True)
class Runs:
    """Units of one shipped suite the claims read: methods x seeds at the plan's profile and overrides."""

    suite: str
    methods: tuple[str, ...]
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClaimsPlan:
    title: str
    profile: str
    seeds: tuple[int, ...]
    backbone: str
    overrides: tuple[str, ...]
    runs: tuple[Runs, ...]
    margin: float = 0.02  # claim 1: non-inferiority margin, relative to early fusion's Dice
    collapse: float = 0.5  # claim 2: largest relative drop from CT+PET that is not a collapse
    keep: float = 0.5  # claim 3: smallest share of PET-only Dice kept through a CT-only stage
    sizes: str = "paper"  # claim 1b: the profile whose model sizes the parameter share is counted at
    shift_mm: float = 8.0  # question 1: the PET misregistration (mm) at test time
    path: Path | None = None

    def suite_entries(self, suite: str) -> list[Runs]:
        """The plan's entries for one suite (several when methods need different overrides)."""
        return [r for r in self.runs if r.suite == suite]

    def suite_methods(self, suite: str) -> list[str]:
        """The methods the plan's entries for `suite` name, in order, each once."""
        return list(dict.fromkeys(m for r in self.suite_entries(suite) for m in r.methods))


PLAN_KEYS = {
    "title",
    "profile",
    "seeds",
    "backbone",
    "set",
    "runs",
    "margin",
    "collapse",
    "keep",
    "sizes",
    "shift_mm",
}


def load_plan(path: Path) -> ClaimsPlan:
    path = Path(path)
    raw = read_yaml(path, "claims plan", ReportError)
    if not isinstance(raw, dict):
        raise ReportError(f"{path}: a claims plan is a mapping ({', '.join(sorted(PLAN_KEYS))})")
    for key in raw:
        if key not in PLAN_KEYS:
            raise ReportError(f"{path}: unknown key {key!r}{did_you_mean(str(key), PLAN_KEYS)}")
    runs = []
    for i, entry in enumerate(raw.get("runs") or [], 1):
        if not isinstance(entry, dict) or set(entry) - {"suite", "methods", "set"} or "suite" not in entry:
            raise ReportError(f"{path}: runs entry {i} must be {{suite: NAME, methods: [...], set: [...]}}")
        try:
            methods = tuple(METHODS.canonical(m) for m in entry.get("methods") or ())
        except KeyError as err:
            raise ReportError(f"{path}: runs entry {i}: {err}") from err
        known = SUITES.available()
        if str(entry["suite"]) not in known:
            raise ReportError(
                f"{path}: runs entry {i}: unknown suite {entry['suite']!r}"
                f"{did_you_mean(str(entry['suite']), known)} (shipped, or on PEMMA_SUITE_PATH)"
            )
        runs.append(Runs(str(entry["suite"]), methods, tuple(str(s) for s in entry.get("set") or ())))
    plan = ClaimsPlan(
        title=str(raw.get("title", path.stem)),
        profile=str(raw.get("profile", "smoke")),
        seeds=tuple(int(s) for s in raw.get("seeds", (0, 1, 2))),
        backbone=str(raw.get("backbone", "unetr")),
        overrides=tuple(str(s) for s in raw.get("set") or ()),
        runs=tuple(runs),
        margin=float(raw.get("margin", 0.02)),
        collapse=float(raw.get("collapse", 0.5)),
        keep=float(raw.get("keep", 0.5)),
        sizes=str(raw.get("sizes", "paper")),
        shift_mm=float(raw.get("shift_mm", 8.0)),
        path=path,
    )
    for override in (*plan.overrides, *(o for r in plan.runs for o in r.overrides)):
        try:
            parse_override(override)
        except (ConfigError, yaml.YAMLError) as err:
            raise ReportError(f"{path}: override {override!r}: {err}") from err
    return plan


def select(plan: ClaimsPlan, sources: Sources, suite: str) -> pd.DataFrame:
    """The suite's FINISHED runs that are units of the plan (profile, backbone, seeds, methods, overrides)."""
    entries = plan.suite_entries(suite)
    runs = sources.suite(suite).runs
    if not entries or runs.empty:
        return pd.DataFrame()

    scopes = key_scopes()

    def matching(overrides) -> pd.Series:
        """Runs whose logged config has the overrides' values; values in no key (labels, the
        conditions a unit evaluates, which a finished run may have grown since it logged them) do not
        decide whether a run is the unit."""
        keep = pd.Series(True, index=runs.index)
        for override in overrides:
            for key, value in flatten(parse_override(override)).items():
                if not scopes.get(key, True):
                    continue
                column = runs.get(f"params.{key}", pd.Series(None, index=runs.index, dtype=object))
                keep &= column.astype(str) == logged(value)
        return keep

    keep = (
        (runs.get("tags.profile", pd.Series("", index=runs.index)) == plan.profile)
        & (runs["tags.backbone"] == plan.backbone)
        & runs["params.seed"].astype(int).isin(plan.seeds)
        & matching(plan.overrides)
    )
    in_entry = pd.Series(False, index=runs.index)
    for entry in entries:
        chosen = matching(entry.overrides)
        if entry.methods:
            chosen &= runs["tags.method"].isin(entry.methods)
        in_entry |= chosen
    return runs[keep & in_entry].reset_index(drop=True)


def units(plan: ClaimsPlan, data_root: str | None = None) -> list[tuple[str, list]]:
    """(suite, its units' configs) for every runs entry of the plan, as `run` would expand them; an
    entry that does not expand is a ConfigError naming its suite."""
    from pemma.suites import expand, load_suite

    out = []
    for entry in plan.runs:
        try:
            configs = expand(
                load_suite(entry.suite),
                profile=plan.profile,
                seeds=list(plan.seeds),
                methods=list(entry.methods) or None,
                backbones=[plan.backbone],
                overrides=[*plan.overrides, *entry.overrides],
                data_root=data_root,
            )
        except (ConfigError, KeyError, ValueError) as err:
            raise ConfigError(f"claims plan, suite {entry.suite}: {err}") from err
        out.append((entry.suite, configs))
    return out
