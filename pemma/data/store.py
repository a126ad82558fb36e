"""The cohorts a results folder works on: the synthetic one written on first use, every cohort read,
checked once per fingerprint, split by its centre plan, with its preprocessing cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pemma.config import ConfigError, DataConfig, RunConfig
from pemma.data.check import check_cohort
from pemma.data.hecktor import Cohort, read_cohort
from pemma.data.splits import Plan, make_plan
from pemma.data.synth import GENERATOR_VERSION, write_cohort
from pemma.files import save_json
from pemma.locks import locked

if TYPE_CHECKING:  # MONAI's datasets load with the data, not with the store (a dry run reads no images)
    from pemma.data.datasets import CohortData

log = logging.getLogger(__name__)


def unused(cohort: Cohort, d: DataConfig) -> list[str]:
    """What the cohort holds that no unit will read: files named against the pattern, centres outside
    the plan (said once per cohort, never silently dropped)."""
    problems = []
    if cohort.ignored:
        problems.append(
            f"{cohort.root / 'imagesTr'}: {len(cohort.ignored)} file(s) match no <ID>__CT / <ID>__PT "
            f"name and are not read: {', '.join(cohort.ignored[:5])}"
        )
    planned = {*d.pretrain_centres, d.adapt_centre, *d.continual_centres}
    outside = {c: len(cases) for c, cases in cohort.centres().items() if c not in planned}
    if outside:
        listed = ", ".join(f"{c} ({n} patients)" for c, n in sorted(outside.items()))
        problems.append(f"{cohort.root}: centre(s) outside the plan, not used: {listed}")
    return problems


def check_classes(cfg: RunConfig, cohort: Cohort) -> None:
    """The network predicts the cohort's classes (suites.expand sets model.num_classes from the cohort
    unless a run sets it; a unit built another way is checked here)."""
    problem = cohort.classes.mismatch(cfg.model.num_classes, cohort.root)
    if problem:
        raise ConfigError(problem)


@dataclass
class LoadedData:
    cohort: Cohort
    plan: Plan
    data: CohortData


class DataStore:
    def __init__(self, results: Path) -> None:
        self.results = Path(results)
        self._loaded: dict[tuple[DataConfig, tuple[str, ...], int], LoadedData] = {}
        self._fingerprints: dict[str, str] = {}

    def synthetic_root(self, d: DataConfig) -> Path:
        return self.results / "data" / f"{GENERATOR_VERSION}-seed{d.synth_seed}-scale{d.synth_scale:g}"

    def fingerprint(self, d: DataConfig) -> str:
        """Cheap identity of the data a unit reads: the generator's recipe, or the files' fingerprint."""
        if d.root is None:
            return f"{GENERATOR_VERSION}-seed{d.synth_seed}-scale{d.synth_scale:g}"
        if d.root not in self._fingerprints:
            self._fingerprints[d.root] = read_cohort(d.root).fingerprint()
        return self._fingerprints[d.root]

    def load(self, cfg: RunConfig) -> LoadedData:
        from pemma.data.datasets import CohortData

        d = cfg.data
        order = tuple(sorted(cfg.continual.order))
        if (d, order, cfg.split_seed) not in self._loaded:
            root = Path(d.root) if d.root else self.synthetic_root(d)
            if d.root is None:
                with locked(self.results, f"data-{root.name}"):  # another process may be writing it
                    if not root.exists():
                        write_cohort(root, scale=d.synth_scale, seed=d.synth_seed)
            cohort = read_cohort(root)
            fingerprint = cohort.fingerprint()
            self.check_once(cohort, fingerprint)
            plan = make_plan(cohort, d.pretrain_centres, d.adapt_centre, d.split, cfg.split_seed, order)
            for problem in unused(cohort, d):
                log.warning("%s", problem)
            self._loaded[d, order, cfg.split_seed] = LoadedData(
                cohort, plan, CohortData(d, fingerprint, self.results / "cache", cohort.classes)
            )
        check_classes(cfg, self._loaded[d, order, cfg.split_seed].cohort)
        return self._loaded[d, order, cfg.split_seed]

    def check_once(self, cohort: Cohort, fingerprint: str) -> None:
        """Read every file once per cohort fingerprint; bad data fails here, before any run starts."""
        marker = self.results / "cache" / f"{fingerprint}-checked.json"
        if not marker.exists():
            report = check_cohort(cohort)
            save_json({"patients": len(report), "root": str(cohort.root)}, marker)
