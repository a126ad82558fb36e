"""Segmentation units: train the method's model on the adaptation centre, score every input subset
it accepts by sliding-window inference, save what it trained, then run continual stages if asked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pemma.conditions import Applied
from pemma.conditions import parse as parse_conditions
from pemma.config import RunConfig
from pemma.data.centres import centre_of
from pemma.data.splits import require_validation
from pemma.files import write_atomic
from pemma.methods import METHODS, Built
from pemma.metrics.patients import extend_patient_table, write_patient_table
from pemma.modalities import CTPET
from pemma.tasks.base import (
    IMAGE_KEYS,
    LOSS_METRICS,
    PARAMETER_METRICS,
    Measured,
    Metric,
    Task,
    Unit,
    per_subset,
    register_task,
)
from pemma.tasks.segmentation import continual
from pemma.tasks.segmentation.pictures import Example, Panel, draw, patient_dice, pick

if TYPE_CHECKING:  # the task's declaration loads without torch: its work imports what it runs
    from pemma.tasks.segmentation.evaluation import SubsetResult

KEYS = IMAGE_KEYS
EVALUATED = "conditions_evaluated"
"""The tag listing the test-time condition keys a unit has scored (e.g. `pet-shift-0mm,pet-shift-8mm`)."""

_DICE = (
    "HECKTOR aggregated Dice on the adaptation centre's test split, on each patient's original CT grid "
    "(intersections and volumes pooled over patients)"
)
_WORKING = "aggregated Dice on the working grid (data.spacing), where preprocessing resampled the data"
_HD95 = (
    "median over the test patients of the 95th-percentile symmetric surface distance (mm), original CT "
    "grid; a structure missed or invented counts as the image's diagonal, none in either is left out"
)
_NSD = (
    "median over the test patients of the normalised surface Dice at eval.nsd_tolerance_mm, original "
    "CT grid; a structure missed or invented counts 0, none in either is left out"
)


def _dice_columns() -> tuple[Metric, ...]:
    """Headline: original CT grid (dice_hecktor); the working grid's figures keep their old names."""
    means = per_subset("dice_hecktor/{subset}/mean", "Dice {subset}", True, _DICE + ", mean of the classes")
    classes = per_subset(
        "dice_hecktor/{subset}/<class>", "Dice of a class {subset}", True, _DICE, column=False
    )
    working = per_subset(
        "dice_agg/{subset}/<class>", "working-grid Dice {subset}", True, _WORKING, column=False
    )
    cases = per_subset(
        "dice_case_hecktor/{subset}/<class>",
        "case Dice {subset}",
        True,
        "mean of per-patient Dice on the original grid (patients with neither truth nor prediction of a "
        "class left out)",
        column=False,
    )
    boundary = per_subset(
        "hd95/{subset}/<class>", "HD95 mm {subset}", False, _HD95, digits=1, column=False
    ) + per_subset("nsd/{subset}/<class>", "NSD {subset}", True, _NSD, column=False)
    return means + classes + working + cases + boundary


@register_task("segmentation", aliases=("seg",))
class Segmentation(Task):
    summary = "GTVp / GTVn (or the cohort's classes) segmentation: Dice per input subset, continual stages"
    data_keys = KEYS
    metrics = (
        *_dice_columns(),
        *PARAMETER_METRICS,
        Metric("train_samples_per_s", "train samples/s", True, "training crops per second", 2),
        *(
            Metric(m.key, "infer vol/s", True, m.meaning, 2, column=m.key.endswith(CTPET))
            for m in per_subset(
                "infer_volumes_per_s/{subset}", "", True, "whole test volumes inferred per second"
            )
        ),
        Metric("train_peak_memory_mb", "peak MB", False, "peak memory while training (MiB)", 0),
        *per_subset(
            "dice_case/{subset}/<class>",
            "case Dice {subset}",
            True,
            "mean of per-patient Dice (patients with neither truth nor prediction of a class left out)",
            column=False,
        ),
        *LOSS_METRICS,
        Metric(
            "train_data_wait_share", "data wait", False, "share of a step spent waiting for data", 2, False
        ),
        Metric("test_cases", "test cases", None, "patients in the test split", 0, column=False),
        *per_subset(
            "val_dice/{subset}/<class>",
            "validation Dice {subset}",
            True,
            "aggregated Dice on the adaptation centre's validation split (working grid; `mean` over the "
            "classes present there), logged by search trials: what a search optimises",
            column=False,
        ),
        Metric("val_cases", "validation cases", None, "patients in the validation split", 0, column=False),
        Metric("saved_bytes", "saved bytes", False, "size of the saved trained state", 0, column=False),
        *continual.METRICS,
        *(
            Metric(key, title, key.split("/")[0] != "hd95", meaning, column=False)
            for key, title, meaning in (
                ("dice_hecktor/<condition>/<class>", "Dice under a condition", _DICE),
                ("dice_case_hecktor/<condition>/<class>", "case Dice under a condition", _DICE),
                ("dice_agg/<condition>/<class>", "working-grid Dice under a condition", _WORKING),
                ("dice_case/<condition>/<class>", "working-grid case Dice under a condition", _WORKING),
                ("hd95/<condition>/<class>", "HD95 mm under a condition", _HD95),
                ("nsd/<condition>/<class>", "NSD under a condition", _NSD),
                ("infer_volumes_per_s/<condition>", "infer vol/s", "whole test volumes inferred per second"),
            )
        ),
    )
    note = (
        "Dice: HECKTOR aggregated Dice on the adaptation centre's test split, on each patient's "
        "original CT grid (probabilities resampled back from the working grid, then argmax), mean of "
        "the cohort's classes (GTVp and GTVn on HECKTOR), each class's own on the CT+PET input; empty "
        "where a class is absent from the split; '—': input subset the method does not accept."
    )

    def run(self, unit: Unit, built: Built) -> Measured:
        from pemma.models.portable import save_trained
        from pemma.tasks.segmentation.adapted import Adaptations, adaptation_key, reusable
        from pemma.training.loop import train

        cfg, method, loaded = unit.cfg, unit.method, unit.data
        conditions = self.conditions(cfg)  # a bad name fails before training
        out = Measured()
        subsets, probabilities = method.train_schedule(cfg)
        out.tags["train_schedule"] = ", ".join(
            f"{s}={p:.2f}" for s, p in zip(subsets, probabilities, strict=True)
        )
        phase = unit.phases
        on_step = unit.stage(f"training {cfg.method}", cfg.train.steps)
        monitor = unit.monitor
        if monitor is not None:
            self.validation_volumes(unit)  # an empty validation split fails before training
        if monitor is not None and monitor.every:
            progress = on_step

            def on_step(step: int, loss: float) -> None:
                if progress:
                    progress(step, loss)
                if (step + 1) % monitor.every == 0 and step + 1 < cfg.train.steps:
                    monitor.report(step + 1, self.validate(unit, built.model, monitor.subsets))

        # A search trial validates as it trains, so it always trains; other units load the same
        # adaptation if a unit that differs only in its continual stages kept it.
        kept = Adaptations(unit.results) if monitor is None and reusable(cfg) else None
        cases = loaded.plan.adapt["train"]
        adaptation = adaptation_key(
            cfg, loaded.data.fingerprint, [c.patient_id for c in cases], method.revision(cfg.backbone)
        )
        with phase("train"):
            stats = kept.load(adaptation, built) if kept else None
        if stats is not None:
            out.tags["adaptation_reused"] = adaptation
            unit.note(f"{cfg.method}: the adaptation {adaptation} is kept; loaded, not trained")
        else:
            with phase("data"):
                crops = loaded.data.crops(
                    cases,
                    KEYS,
                    cfg.model.roi,
                    seed=cfg.seed,
                    pet_shift=(cfg.train.pet_shift_mm, cfg.train.pet_shift_prob),
                )
            with phase("train"):
                stats = train(
                    built.model,
                    crops,
                    cfg.train,
                    subsets=subsets,
                    probabilities=probabilities,
                    seed=cfg.seed,
                    device=unit.device,
                    on_step=on_step,
                    checkpoint=unit.checkpoint("train"),
                )
        if monitor is not None:
            out.metrics.update(self.validate(unit, built.model, monitor.subsets))
        out.metrics.update(
            {
                "train_seconds": stats.seconds,
                "train_samples_per_s": stats.samples_per_s,
                "train_data_wait_share": stats.data_wait_share,
                "train_peak_memory_mb": stats.peak_memory_mb,
                "train_first_loss": stats.first_loss,
                "train_final_loss": stats.final_loss,
            }
        )
        results, cases, written = self.score_test(unit, built, method.inputs(), conditions)
        out.metrics.update(_scores(results))
        out.metrics["test_cases"] = cases
        out.tags[EVALUATED] = ",".join(c.key for c in conditions)
        out.artifacts.update(_prediction_artifacts(written))
        rows = _rows(cfg, results)
        if written:
            with phase("save"):
                picture = self.picture(unit, rows, written)
            if picture is not None:
                out.artifacts["examples"] = picture
        with phase("save"):
            table = write_patient_table(rows, unit.key, unit.output("patients", ".csv"))
            saved = unit.output("trained", ".safetensors")
            out.metrics["saved_bytes"] = save_trained(
                built.model,
                built.trained,
                saved,
                {"method": cfg.method, "backbone": cfg.backbone, "run_key": unit.key},
            )
            if kept and "adaptation_reused" not in out.tags:
                kept.keep(adaptation, saved, stats)
        out.artifacts["patients"] = table
        out.tags["patients_file"] = str(table.relative_to(unit.results))
        out.tags["trained_file"] = str(saved.relative_to(unit.results))
        if cfg.continual.order:
            with phase("continual"):
                out.metrics.update(continual.run_stages(unit, built.model, results))
        return out

    def conditions(self, cfg: RunConfig) -> list[Applied]:
        """The test-time conditions `cfg` asks for whose input subset the method accepts."""
        accepts = METHODS.get(cfg.method).inputs()
        return [c for c in parse_conditions(cfg.eval.conditions) if c.subset in accepts]

    def pending(self, cfg: RunConfig, tags: dict[str, str]) -> tuple[str, ...]:
        """The conditions `cfg` asks for that the finished run's `conditions_evaluated` tag lacks."""
        done = set(tags.get(EVALUATED, "").split(","))
        return tuple(c.key for c in self.conditions(cfg) if c.key not in done)

    def evaluate_more(self, unit: Unit, built: Built, tags: dict[str, str]) -> Measured:
        """The pending conditions of a finished unit, from its saved trained state: one inference pass
        each over its test split (the same passes, the same numbers as had the unit evaluated them
        when it trained), appended to its per-patient table."""
        from pemma.tasks.segmentation.adapted import restore

        cfg, phase = unit.cfg, unit.phases
        pending = set(self.pending(cfg, tags))
        todo = [c for c in self.conditions(cfg) if c.key in pending]
        with phase("build"):
            restore(built, cfg, unit.results / tags["trained_file"])
        results, _, written = self.score_test(unit, built, (), todo)
        with phase("save"):
            table = extend_patient_table(unit.results / tags["patients_file"], _rows(cfg, results), unit.key)
        evaluated = [k for k in tags.get(EVALUATED, "").split(",") if k] + [c.key for c in todo]
        artifacts = {"patients": table, **_prediction_artifacts(written)}
        return Measured(_scores(results), {EVALUATED: ",".join(evaluated)}, artifacts)

    def score_test(
        self, unit: Unit, built: Built, subsets: tuple[str, ...], conditions: list[Applied]
    ) -> tuple[dict[str, SubsetResult], int, dict[str, Path]]:
        """The adaptation centre's test split scored on `subsets` and under `conditions`, on each
        patient's original CT grid; the results by pass, how many patients, and the folder of each
        pass's predictions (written where `eval.predictions` asks)."""
        from pemma.tasks.segmentation.evaluation import evaluate
        from pemma.tasks.segmentation.predictions import PredictionWriter

        cfg, loaded = unit.cfg, unit.data
        writer = PredictionWriter(unit.output("predictions", "")) if cfg.eval.predictions else None
        with unit.phases("data"):
            volumes = loaded.data.volumes(loaded.plan.adapt["test"], KEYS)
        with unit.phases("evaluate"):
            results = evaluate(
                built.model,
                volumes,
                subsets,
                cfg.model.roi,
                cfg.eval,
                unit.device,
                cfg.train.amp,
                original_grid=True,
                conditions=conditions,
                seed=cfg.seed,
                write=writer,
                classes=loaded.data.classes,
            )
        return results, len(volumes), writer.written if writer else {}

    def picture(self, unit: Unit, rows: list[dict], written: dict[str, Path]) -> Path | None:
        """The unit's best, median and worst test patient on its first evaluation pass, drawn from
        its prediction files (pictures.py), as results/<suite>/pictures/<run key>.png (None: no
        patient has a Dice)."""
        import matplotlib.pyplot as plt

        from pemma.tasks.segmentation.predictions import SUFFIX

        table = pd.DataFrame(rows)
        key = next(iter(written))
        dice = patient_dice(table[(table["grid"] == "original") & (table["condition"] == key)])
        picks = pick(dice)
        if not picks:  # no patient with a truth or a prediction: nothing to look at
            return None
        cases = {c.patient_id: c for c in unit.data.plan.adapt["test"]}
        examples = [
            Example(
                f"{name}: {patient}",
                str(cases[patient].ct),
                str(cases[patient].pet) if cases[patient].pet else None,
                str(cases[patient].label) if cases[patient].label else None,
                [
                    Panel(
                        str(written[key] / f"{patient}{SUFFIX}"),
                        f"{unit.cfg.method} {key}  Dice {dice[patient]:.2f}",
                    )
                ],
            )
            for name, patient in picks
        ]
        path = unit.output("pictures", ".png")
        figure = draw(examples)
        try:
            write_atomic(
                path, lambda tmp: figure.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
            )
        finally:
            plt.close(figure)
        return path

    def validation_volumes(self, unit: Unit):
        cfg = unit.cfg
        cases = require_validation(unit.data.plan.adapt["val"], cfg.data.adapt_centre, cfg.data.split)
        return unit.data.data.volumes(cases, KEYS)

    def validate(self, unit: Unit, model, subsets: tuple[str, ...]) -> dict[str, float]:
        """Aggregated Dice on the adaptation centre's validation split (working grid, for speed);
        `mean` is over the classes present there. The model goes back to training mode."""
        from pemma.tasks.segmentation.evaluation import evaluate

        volumes = self.validation_volumes(unit)
        cfg = unit.cfg
        results = evaluate(
            model, volumes, subsets, cfg.model.roi, cfg.eval, unit.device, cfg.train.amp,
            classes=unit.data.data.classes,
        )  # fmt: skip
        model.train()
        metrics: dict[str, float] = {"val_cases": float(len(volumes))}
        for subset, result in results.items():
            per_class = {k: v for k, v in result.aggregated.items() if k != "mean"}
            present = [v for v in per_class.values() if not np.isnan(v)]
            metrics.update({f"val_dice/{subset}/{k}": v for k, v in per_class.items()})
            metrics[f"val_dice/{subset}/mean"] = float(np.mean(present)) if present else float("nan")
        return metrics

    def appendix(self, runs) -> str:
        matrices = continual.matrices_markdown(runs)
        return "## Continual learning: R[stage, centre], aggregated Dice\n\n" + matrices if matrices else ""


def _prediction_artifacts(written: dict[str, Path]) -> dict[str, Path]:
    """Each pass's prediction folder as the MLflow artifact folder `predictions/<pass>`."""
    return {f"predictions/{key}": folder for key, folder in written.items()}


def _scores(results: dict[str, SubsetResult]) -> dict[str, float]:
    """Metrics of every evaluation pass (an input subset or a condition key)."""
    out: dict[str, float] = {}
    for key, result in results.items():
        out.update({f"dice_hecktor/{key}/{k}": v for k, v in result.original.items()})
        out.update({f"dice_case_hecktor/{key}/{k}": v for k, v in result.original_case_mean.items()})
        out.update({f"dice_agg/{key}/{k}": v for k, v in result.aggregated.items()})
        out.update({f"dice_case/{key}/{k}": v for k, v in result.case_mean.items()})
        out.update({f"hd95/{key}/{k}": v for k, v in result.hd95.items()})
        out.update({f"nsd/{key}/{k}": v for k, v in result.nsd.items()})
        out[f"infer_volumes_per_s/{key}"] = result.volumes_per_s
    return out


def _rows(cfg: RunConfig, results: dict[str, SubsetResult]) -> list[dict]:
    """The per-patient table's rows of every evaluation pass, volumes in ml."""
    voxel_ml = float(np.prod(cfg.data.spacing)) / 1000.0
    return [
        {
            **row,
            "kind": "segmentation",
            "centre": centre_of(row["patient_id"]),
            "split": "test",
            "prediction_ml": row["prediction_voxels"] * voxel_ml,
            "truth_ml": row["truth_voxels"] * voxel_ml,
        }
        for result in results.values()
        for row in result.patients
    ]
