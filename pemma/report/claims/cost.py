"""What a claims plan costs before it runs, so a user can budget CPU or GPU hours for it.

Counted exactly from the resolved configs: the units, the CT bases they need, and the training
samples each one draws (steps x batch: pretraining for a base, training, every continual stage,
the survival head). Turned into hours two ways, each labelled with where its rate comes from:

- measured here: the median wall seconds of the finished units of the same suite, method, profile
  and backbone in this results folder's store (evaluation and data included, at the thread layout
  they ran with);
- measured rates: training samples per second per device and profile from reports/rates/measured.yaml
  (training only; evaluation and data preparation not included, so a lower bound).

A segmentation unit's first stage is counted once per adaptation (the units that differ only in what
they evaluate or in their continual stages load the adaptation the first of them kept: the robustness
and continual units of a plan load the main units'); its continual stages always count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pemma.report.claims.plan import ClaimsPlan, units
from pemma.report.definition import ReportError
from pemma.resources import RATES, read_yaml


@dataclass(frozen=True)
class Rate:
    device: str
    profile: str
    backbone: str
    samples_per_s: float  # training samples per second, one unit on the whole device
    source: str


def load_rates(path: Path | None = None) -> list[Rate]:
    path = Path(path) if path else RATES.find("measured", ReportError)
    raw = read_yaml(path, "rates file", ReportError) or []
    rates = []
    for i, entry in enumerate(raw, 1):
        try:
            rates.append(
                Rate(
                    str(entry["device"]),
                    str(entry["profile"]),
                    str(entry["backbone"]),
                    float(entry["samples_per_s"]),
                    str(entry["source"]),
                )
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ReportError(
                f"{path}: entry {i} needs device, profile, backbone, samples_per_s, source ({err})"
            ) from err
    return rates


def training_samples(cfg, adapts: bool = True) -> int:
    """Samples one unit trains on (its CT base not included); without its first stage where it loads
    a kept adaptation (`adapts` False)."""
    if cfg.task == "prognosis":
        return cfg.prognosis.steps * cfg.prognosis.batch_size
    stages = len(cfg.continual.order) * cfg.continual.steps * cfg.train.batch_size
    return cfg.train.steps * cfg.train.batch_size * adapts + stages


def _adaptation(cfg, fingerprint: str, key: str) -> str:
    """What decides a unit's first stage: its config in the adaptation key's scope and the data (the
    training patients follow from both), where the unit may load a kept adaptation; else its run key."""
    from pemma.config import ADAPTATION_KEY, stable_hash
    from pemma.tasks.segmentation.adapted import reusable

    if cfg.task != "segmentation" or not reusable(cfg):
        return key
    return stable_hash({"config": cfg.identity(ADAPTATION_KEY), "data": fingerprint}, length=12)


def plan_work(plan: ClaimsPlan, runner) -> pd.DataFrame:
    """One row per unit: suite, method, seed, key, finished, its base key (or None), samples."""
    from pemma.methods import METHODS
    from pemma.tasks.segmentation.ct_base import base_key

    rows = []
    adapted: set[str] = set()
    for suite, configs in units(plan):
        finished = runner.tracker.finished_keys(suite)
        for cfg in configs:
            key = runner.key(cfg)
            needs = METHODS.get(cfg.method).needs_base and not cfg.pretrain.checkpoint
            adaptation = _adaptation(cfg, runner.store.fingerprint(cfg.data), key)
            adapts = adaptation not in adapted
            adapted.add(adaptation)
            rows.append(
                {
                    "suite": suite,
                    "method": cfg.method,
                    "seed": cfg.seed,
                    "key": key,
                    "finished": key in finished,
                    "base": base_key(cfg, runner.store.fingerprint(cfg.data)) if needs else None,
                    "base samples": cfg.pretrain.steps * cfg.pretrain.batch_size if needs else 0,
                    "samples": training_samples(cfg, adapts),
                }
            )
    return pd.DataFrame(rows)


def estimate(plan: ClaimsPlan, work: pd.DataFrame, runs: dict[str, pd.DataFrame], rates: list[Rate]):
    """(per suite and method table, lines of totals). `runs`: each suite's tracked runs."""
    todo = work[~work["finished"]]
    rows = []
    for (suite, method), part in work.groupby(["suite", "method"], sort=False):
        measured = _measured_seconds(runs.get(suite), plan, method)
        left = int((~part["finished"]).sum())
        rows.append(
            {
                "suite": suite,
                "method": method,
                "units": len(part),
                "to run": left,
                "samples / unit": int(part["samples"].median()),
                "measured s / unit": f"{measured:.0f}" if measured == measured else "—",
                "hours (measured here)": f"{left * measured / 3600:.2f}" if measured == measured else "—",
            }
        )
    bases = work.dropna(subset=["base"]).drop_duplicates("base")
    base_samples = int(bases["base samples"].sum())
    samples = int(todo["samples"].sum()) + base_samples
    lines = [
        f"{len(work)} units ({len(todo)} to run), {len(bases)} CT bases "
        f"({base_samples:,} pretraining samples, counted as if none were cached); "
        f"{samples:,} training samples in all",
    ]
    matching = [r for r in rates if r.profile == plan.profile and r.backbone == plan.backbone]
    for rate in matching:
        lines.append(
            f"at {rate.samples_per_s:g} samples/s on {rate.device} ({rate.source}): "
            f"{samples / rate.samples_per_s / 3600:,.1f} hours of training (evaluation not included)"
        )
    if not matching:
        lines.append(
            f"no measured rate for profile {plan.profile}, backbone {plan.backbone} in the rates file"
        )
    return pd.DataFrame(rows), lines


def _measured_seconds(runs: pd.DataFrame | None, plan: ClaimsPlan, method: str) -> float:
    if runs is None or runs.empty or "metrics.unit_seconds" not in runs:
        return float("nan")
    mine = runs[
        (runs["tags.method"] == method)
        & (runs.get("tags.profile", pd.Series("", index=runs.index)) == plan.profile)
        & (runs["tags.backbone"] == plan.backbone)
    ]
    values = mine["metrics.unit_seconds"].dropna()
    return float(values.median()) if not values.empty else float("nan")
