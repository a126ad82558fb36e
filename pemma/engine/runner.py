"""Run units of work: skip finished ones, train and evaluate the rest, log each to one MLflow run.

The runner never branches on a method's or backbone's name: it asks the method what it builds,
trains and accepts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from monai.utils import set_determinism

from pemma.config import DataConfig, RunConfig, stable_hash
from pemma.data.check import check_cohort
from pemma.data.datasets import CohortData
from pemma.data.hecktor import Cohort, read_cohort
from pemma.data.splits import Plan, make_plan
from pemma.data.synth import GENERATOR_VERSION, write_cohort
from pemma.engine.checkpoint import save_json
from pemma.engine.evaluate import SubsetResult, evaluate
from pemma.engine.pretrain import pretrained_base
from pemma.engine.prognosis import (
    KEYS as PROGNOSIS_KEYS,
)
from pemma.engine.prognosis import (
    baseline_scores,
    clinical_columns,
    fit_risk_model,
    image_forward,
    load_patients,
    predict,
    prognosis_split,
)
from pemma.engine.train import dtype_name, train
from pemma.methods import METHODS, set_trainable
from pemma.metrics.continual import continual_summary
from pemma.metrics.params import REFERENCE_METHOD, count_parameters
from pemma.metrics.survival import survival_scores, write_task2_submission
from pemma.modalities import CT, LABELS
from pemma.models.backbones import BACKBONES
from pemma.models.fusion import CTOnly
from pemma.models.portable import save_trained
from pemma.models.prognosis import PrognosisModel, TableEncoding
from pemma.tracking import Tracker, provenance, run_key

log = logging.getLogger(__name__)
ADAPT_KEYS = ("ct", "pet", "label")


def default_device() -> torch.device:
    name = os.environ.get("PEMMA_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    set_determinism(seed=seed)


@dataclass
class UnitOutcome:
    key: str
    status: str  # FINISHED | SKIPPED | FAILED
    seconds: float = 0.0
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LoadedData:
    cohort: Cohort
    plan: Plan
    data: CohortData


class Reporter:
    """Progress hooks; the CLI passes one that draws rich progress bars."""

    def stage(self, text: str, total: int) -> Callable[[int, float], None] | None:
        return None

    def note(self, text: str) -> None:
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
        self.device = device or default_device()
        self.tracker = tracker or Tracker(self.results)
        self.reporter = reporter or Reporter()
        self._data: dict[tuple[DataConfig, tuple[str, ...]], LoadedData] = {}
        self._fingerprints: dict[str, str] = {}
        self._reference: dict[str, int] = {}

    # -- data ---------------------------------------------------------------------------------------
    def synthetic_root(self, d: DataConfig) -> Path:
        return self.results / "data" / f"{GENERATOR_VERSION}-seed{d.synth_seed}-scale{d.synth_scale:g}"

    def data_fingerprint(self, cfg: RunConfig) -> str:
        """Cheap identity of the data a unit reads: the generator's recipe, or the files' fingerprint."""
        d = cfg.data
        if d.root is None:
            return f"{GENERATOR_VERSION}-seed{d.synth_seed}-scale{d.synth_scale:g}"
        if d.root not in self._fingerprints:
            self._fingerprints[d.root] = read_cohort(d.root).fingerprint()
        return self._fingerprints[d.root]

    def load_data(self, cfg: RunConfig) -> LoadedData:
        d = cfg.data
        order = tuple(sorted(cfg.continual.order))
        if (d, order) not in self._data:
            root = Path(d.root) if d.root else self.synthetic_root(d)
            if d.root is None and not root.exists():
                write_cohort(root, scale=d.synth_scale, seed=d.synth_seed)
            cohort = read_cohort(root)
            fingerprint = cohort.fingerprint()
            self.check_once(cohort, fingerprint)
            plan = make_plan(cohort, d.pretrain_centres, d.adapt_centre, d.split, d.split_seed, order)
            self._data[d, order] = LoadedData(
                cohort, plan, CohortData(d, fingerprint, self.results / "cache")
            )
        return self._data[d, order]

    def check_once(self, cohort: Cohort, fingerprint: str) -> None:
        """Read every file once per cohort fingerprint; bad data fails here, before any run starts."""
        marker = self.results / "cache" / f"{fingerprint}-checked.json"
        if not marker.exists():
            report = check_cohort(cohort)
            save_json({"patients": len(report), "root": str(cohort.root)}, marker)

    def prepare(self, units: list[RunConfig]) -> None:
        """Load (and on first use write) the data of every unit, so data errors stop the suite early."""
        for cfg in units:
            self.load_data(cfg)

    # -- units --------------------------------------------------------------------------------------
    def key(self, cfg: RunConfig) -> str:
        return run_key(cfg, self.data_fingerprint(cfg))

    def reference_trainable(self, cfg: RunConfig, base: torch.nn.Module | None) -> int:
        memo = stable_hash(
            {"backbone": cfg.backbone, "model": asdict(cfg.model), "adapter": asdict(cfg.adapter)}
        )
        if memo not in self._reference:
            reference = METHODS.get(REFERENCE_METHOD)()
            with torch.random.fork_rng():  # a unit's random stream must not depend on the units before it
                built = reference.create(base if reference.needs_base else None, cfg)
            self._reference[memo] = count_parameters(built.model)[1]
        return self._reference[memo]

    def run(self, units: list[RunConfig]) -> list[UnitOutcome]:
        outcomes = []
        finished: dict[str, set[str]] = {}
        for cfg in units:
            if cfg.suite not in finished:
                finished[cfg.suite] = self.tracker.finished_keys(cfg.suite)
            key = self.key(cfg)
            done = key in finished[cfg.suite]
            outcome = UnitOutcome(key, "SKIPPED") if done else self.run_unit(cfg, key)
            self.reporter.done(outcome)
            outcomes.append(outcome)
        return outcomes

    def run_unit(self, cfg: RunConfig, key: str) -> UnitOutcome:
        t0 = time.perf_counter()
        tags = {
            **provenance(self.device, dtype_name(self.device, cfg.train.amp), cfg.profile),
            "method": cfg.method,
            "backbone": cfg.backbone,
            "seed": str(cfg.seed),
        }
        self.tracker.close_stale(cfg.suite, key)
        run_id = self.tracker.start(cfg.suite, key, cfg.flat(), tags)
        try:
            metrics, extra_tags = self._train_and_evaluate(cfg)
            metrics["unit_seconds"] = time.perf_counter() - t0
            self.tracker.log(run_id, metrics, extra_tags)
            self.tracker.finish(run_id)
            return UnitOutcome(key, "FINISHED", metrics["unit_seconds"], metrics=metrics)
        except KeyboardInterrupt as err:
            self.tracker.fail(run_id, err, status="KILLED")
            raise
        except Exception as err:
            log.exception("unit %s failed", key)
            self.tracker.fail(run_id, err)
            return UnitOutcome(key, "FAILED", time.perf_counter() - t0, error=f"{type(err).__name__}: {err}")

    def _train_and_evaluate(self, cfg: RunConfig) -> tuple[dict[str, float], dict[str, str]]:
        if cfg.task == "prognosis":
            return self._prognosis(cfg)
        seed_everything(cfg.seed)
        loaded = self.load_data(cfg)
        method = METHODS.get(cfg.method)()
        metrics: dict[str, float] = {}
        tags = {"data_fingerprint": loaded.data.fingerprint, "data_root": str(loaded.cohort.root)}
        base = self._base_for(cfg, method, loaded, metrics, tags)
        seed_everything(cfg.seed)
        built = method.create(base, cfg)
        total, trainable = count_parameters(built.model)
        reference = self.reference_trainable(cfg, base)
        metrics.update(
            {
                "params_total": total,
                "params_trainable": trainable,
                "params_trainable_pct_of_reference": 100.0 * trainable / reference,
            }
        )
        tags["params_reference_method"] = REFERENCE_METHOD
        tags["adapted_modules"] = ",".join(built.adapted_modules) or "none"
        if built.adapted_modules:
            self.reporter.note(
                f"{cfg.method} on {cfg.backbone} adapts {len(built.adapted_modules)} modules: "
                + ", ".join(built.adapted_modules)
            )
        subsets, probabilities = method.train_schedule(cfg)
        tags["train_schedule"] = ", ".join(
            f"{s}={p:.2f}" for s, p in zip(subsets, probabilities, strict=True)
        )
        crops = loaded.data.crops(loaded.plan.adapt["train"], ADAPT_KEYS, cfg.model.roi, seed=cfg.seed)
        stats = train(
            built.model,
            crops,
            cfg.train,
            subsets=subsets,
            probabilities=probabilities,
            seed=cfg.seed,
            device=self.device,
            on_step=self.reporter.stage(f"training {cfg.method}", cfg.train.steps),
        )
        metrics.update(
            {
                "train_seconds": stats.seconds,
                "train_samples_per_s": stats.samples_per_s,
                "train_data_wait_share": stats.data_wait_share,
                "train_peak_memory_mb": stats.peak_memory_mb,
                "train_first_loss": stats.first_loss,
                "train_final_loss": stats.final_loss,
            }
        )
        volumes = loaded.data.volumes(loaded.plan.adapt["test"], ADAPT_KEYS)
        results = evaluate(
            built.model, volumes, method.inputs(), cfg.model.roi, cfg.eval, self.device, cfg.train.amp
        )
        for subset, result in results.items():
            metrics.update({f"dice_agg/{subset}/{k}": v for k, v in result.aggregated.items()})
            metrics.update({f"dice_case/{subset}/{k}": v for k, v in result.case_mean.items()})
            metrics[f"infer_volumes_per_s/{subset}"] = result.volumes_per_s
        metrics["test_cases"] = len(volumes)
        key = self.key(cfg)
        saved = self.results / cfg.suite / "trained" / f"{key}.safetensors"
        metrics["saved_bytes"] = save_trained(
            built.model,
            built.trained,
            saved,
            {"method": cfg.method, "backbone": cfg.backbone, "run_key": key},
        )
        tags["trained_file"] = str(saved.relative_to(self.results))
        if cfg.continual.order:
            metrics.update(self._continual(cfg, method, built.model, base, loaded, results))
        return metrics, tags

    def _base_for(self, cfg: RunConfig, method, loaded: LoadedData, metrics, tags):
        if not method.needs_base:
            return None
        base, info = pretrained_base(
            cfg,
            loaded.data,
            loaded.plan,
            self.results / "bases",
            self.device,
            self.reporter.stage("CT pretraining", cfg.pretrain.steps),
        )
        tags["base_key"] = info.get("key", info.get("source", ""))
        metrics.update({f"base_dice_agg/ct/{k}": v for k, v in info.get("val_dice_agg", {}).items()})
        return base

    def _prognosis(self, cfg: RunConfig) -> tuple[dict[str, float], dict[str, str]]:
        """A survival head on the method's model (its trainable set + the head train), Cox loss."""
        seed_everything(cfg.seed)
        loaded = self.load_data(cfg)
        method = METHODS.get(cfg.method)()
        backbone = BACKBONES.get(cfg.backbone)
        p = cfg.prognosis
        metrics: dict[str, float] = {}
        tags = {"data_fingerprint": loaded.data.fingerprint, "data_root": str(loaded.cohort.root)}
        splits = prognosis_split(loaded.cohort, cfg.data.split, cfg.data.split_seed)
        patients = {
            name: load_patients(
                cases,
                loaded.data.volumes(cases, PROGNOSIS_KEYS),
                loaded.cohort,
                cfg.model.roi,
                cfg.data.spacing,
            )
            for name, cases in splits.items()
        }
        train_p, test_p = patients["train"], patients["test"]
        base = self._base_for(cfg, method, loaded, metrics, tags)
        seed_everything(cfg.seed)
        built = method.create(base, cfg)
        encoding = None
        if p.ehr:
            encoding = TableEncoding.fit(train_p.clinical, clinical_columns(train_p.clinical))
        model = PrognosisModel(
            built.model,
            backbone.bottleneck,
            backbone.bottleneck_dim(cfg.model),
            len(encoding.columns) if encoding else 0,
            mix=p.mix,
        ).to(self.device)
        subset = method.inputs()[0]
        tags["prognosis_inputs"] = LABELS[subset] + ("+EHR" if p.ehr else "")
        total, trainable = count_parameters(model)
        metrics.update({"params_total": total, "params_trainable": trainable})
        t0 = time.perf_counter()
        losses = fit_risk_model(
            model,
            image_forward(model, train_p, subset, encoding, self.device),
            len(train_p.ids),
            train_p.time,
            train_p.event,
            p,
            cfg.seed,
            self.device,
        )
        metrics.update(
            {
                "train_seconds": time.perf_counter() - t0,
                "train_first_loss": losses[0],
                "train_final_loss": losses[-1],
            }
        )
        risks = {
            name: predict(
                model,
                image_forward(model, pts, subset, encoding, self.device),
                len(pts.ids),
                self.device,
                p.amp,
            )
            for name, pts in patients.items()
        }
        scores = survival_scores(
            (train_p.time.numpy(), train_p.event.numpy(), risks["train"]),
            (test_p.time.numpy(), test_p.event.numpy(), risks["test"]),
            p.horizons,
            n_boot=p.bootstrap,
            seed=cfg.seed,
        )
        metrics.update({f"surv/{k}": v for k, v in scores.items()})
        metrics.update(baseline_scores(train_p, test_p, p, cfg.seed))
        metrics["train_patients"] = len(train_p.ids)
        out = self.results / cfg.suite / "predictions" / f"{self.key(cfg)}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_task2_submission(test_p.ids, risks["test"], out)
        tags["predictions_file"] = str(out.relative_to(self.results))
        return metrics, tags

    def _continual(
        self,
        cfg: RunConfig,
        method,
        model: torch.nn.Module,
        base,
        loaded: LoadedData,
        adapted: dict[str, SubsetResult],
    ) -> dict[str, float]:
        """Train through the continual centres; after each stage score every centre (seen or not).

        `adapted` is the unit's own evaluation on the adaptation centre: stage 0's first column.
        """
        centres = (cfg.data.adapt_centre, *cfg.continual.order)
        splits = {cfg.data.adapt_centre: loaded.plan.adapt, **loaded.plan.continual}
        tests = {c: loaded.data.volumes(splits[c]["test"], ADAPT_KEYS) for c in centres}
        subsets = method.inputs()
        r = {s: np.full((len(centres), len(centres)), np.nan) for s in subsets}
        metrics: dict[str, float] = {}

        def score(stage: int) -> None:
            for j, centre in enumerate(centres):
                result = (
                    adapted
                    if stage == 0 and j == 0
                    else evaluate(
                        model, tests[centre], subsets, cfg.model.roi, cfg.eval, self.device, cfg.train.amp
                    )
                )
                for s in subsets:
                    r[s][stage, j] = result[s].aggregated["mean"]
                    metrics[f"cl/{s}/R/{stage}/{centre}"] = r[s][stage, j]

        if base is not None:  # the unwrapped CT base: the reference row a wrapped model is compared against
            for centre in centres:
                result = evaluate(CTOnly(base), tests[centre], (CT,), cfg.model.roi, cfg.eval, self.device)
                metrics[f"cl/ct/base/{centre}"] = result[CT].aggregated["mean"]
        score(0)
        set_trainable(model, method.continual_patterns(cfg))
        subset = method.stage_subset(cfg.continual.inputs)
        budget = replace(cfg.train, steps=cfg.continual.steps)
        for stage, centre in enumerate(cfg.continual.order, start=1):
            crops = loaded.data.crops(
                splits[centre]["train"], ADAPT_KEYS, cfg.model.roi, seed=cfg.seed + stage
            )
            train(
                model,
                crops,
                budget,
                subsets=(subset,),
                probabilities=(1.0,),
                seed=cfg.seed + stage,
                device=self.device,
                on_step=self.reporter.stage(f"continual stage {centre}", budget.steps),
            )
            score(stage)
        for s in subsets:
            metrics.update({f"cl/{s}/{k}": v for k, v in continual_summary(r[s]).items()})
        metrics["cl_stage_steps"] = budget.steps
        return metrics
