"""Prognosis units: a survival head on the method's model (its trainable set + the head train), Cox
loss, scored by Harrell's and Uno's C, time-dependent AUC and the integrated Brier score, beside two
lifelines Cox baselines on the same split."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pemma.data.centres import centre_of
from pemma.methods import Built
from pemma.metrics.patients import write_patient_table
from pemma.modalities import LABELS
from pemma.models.backbones import BACKBONES
from pemma.tasks.base import (
    IMAGE_KEYS,
    LOSS_METRICS,
    PARAMETER_METRICS,
    Measured,
    Metric,
    Task,
    Unit,
    register_task,
)

if TYPE_CHECKING:  # the task's declaration loads without torch, lifelines or scikit-survival
    from pemma.models.prognosis import TableEncoding
    from pemma.tasks.prognosis.cox import Patients

log = logging.getLogger(__name__)

_SCORES = "on the test split of every centre (higher risk = earlier relapse)"


def _scores(prefix: str) -> tuple[Metric, ...]:
    """The keys survival_scores returns, under `prefix`."""
    return (
        Metric(f"{prefix}/cindex_harrell", "C-index", True, f"Harrell's C {_SCORES}"),
        Metric(
            f"{prefix}/cindex_harrell_low", "C 95% CI low", None, "percentile bootstrap over test patients"
        ),
        Metric(
            f"{prefix}/cindex_harrell_high", "C 95% CI high", None, "percentile bootstrap over test patients"
        ),
        Metric(f"{prefix}/cindex_uno", "Uno C", True, "Uno's IPCW C, truncated at the 90th percentile"),
        Metric(f"{prefix}/cindex_uno_low", "Uno C low", None, "percentile bootstrap", column=False),
        Metric(f"{prefix}/cindex_uno_high", "Uno C high", None, "percentile bootstrap", column=False),
        Metric(f"{prefix}/auc_<days>d", "AUC", True, "cumulative/dynamic AUC at a horizon", column=False),
        Metric(f"{prefix}/ibs", "IBS", False, "integrated Brier score of Breslow curves"),
        Metric(
            f"{prefix}/test_patients", "test patients", None, "patients in the test split", 0, column=False
        ),
        Metric(f"{prefix}/test_events", "test events", None, "relapses in the test split", 0, column=False),
    )


def _columns() -> tuple[Metric, ...]:
    model = {m.key: m for m in _scores("surv")}
    shown = (
        model["surv/cindex_harrell"],
        Metric(
            "surv/cindex_harrell_rel_ref_pct",
            "ΔC vs {reference} %",
            True,
            "relative change of the C-index from this reference's, on images only (same backbone and seed)",
            1,
            reference="modalities",
            derived_from="surv/cindex_harrell",
            reference_params=(("prognosis.ehr", "False"),),
        ),
        model["surv/cindex_uno"],
        Metric("surv/auc_730d", "AUC 2y", True, "cumulative/dynamic AUC at 730 days"),
        model["surv/ibs"],
        Metric(
            "cox_clinical/cindex_harrell", "Cox clinical C", True, "lifelines Cox PH on clinical variables"
        ),
        Metric(
            "cox_image/cindex_harrell",
            "Cox volume+PET max C",
            True,
            "lifelines Cox PH on GTV volume and PET maximum",
        ),
    )
    keys = {m.key for m in shown}
    every = (*_scores("surv"), *_scores("cox_clinical"), *_scores("cox_image"))
    hidden = tuple(replace(m, column=False) for m in every if m.key not in keys)
    return shown + hidden


@dataclass
class PrognosisBuilt(Built):
    """The method's model inside a PrognosisModel, with the patients and EHR encoding it was built for."""

    patients: dict[str, Patients] | None = None
    encoding: TableEncoding | None = None
    subset: str = ""


@register_task("prognosis", aliases=("survival",))
class Prognosis(Task):
    summary = "recurrence-free survival: C-index from CT, CT+PET, CT+PET+EHR"
    data_keys = IMAGE_KEYS
    metrics = (
        *PARAMETER_METRICS,
        *_columns(),
        *LOSS_METRICS,
        Metric(
            "train_patients", "train patients", None, "patients the risk model trains on", 0, column=False
        ),
    )
    note = (
        "C-index: Harrell's on the test split of every centre (higher risk = earlier relapse); each run "
        "logs its own percentile bootstrap CI (surv/cindex_harrell_low, _high), and `pemma-bench report` "
        "gives BCa intervals over the test patients of all seeds. Uno C: IPCW, truncated at the 90th "
        "percentile of training follow-up. AUC 2y: cumulative/dynamic AUC at 730 days. IBS: "
        "integrated Brier score of Breslow curves. Cox columns: lifelines Cox PH on the same split."
    )
    parameter_share = False

    def build(self, unit: Unit) -> PrognosisBuilt:
        from pemma.models.prognosis import PrognosisModel, TableEncoding
        from pemma.tasks.prognosis.cox import clinical_columns, load_patients, prognosis_split

        cfg, loaded = unit.cfg, unit.data
        splits = prognosis_split(loaded.cohort, loaded.plan, cfg.data.split, cfg.split_seed)
        patients = {
            name: load_patients(
                cases, loaded.data.volumes(cases, IMAGE_KEYS), loaded.cohort, cfg.model.roi, cfg.data.spacing
            )
            for name, cases in splits.items()
        }
        built = unit.method.create(unit.base, cfg)
        encoding = None
        if cfg.prognosis.ehr:
            train = patients["train"].clinical
            encoding = TableEncoding.fit(train, clinical_columns(train))
        backbone = BACKBONES.get(cfg.backbone)
        model = PrognosisModel(
            built.model,
            backbone.bottleneck,
            backbone.bottleneck_dim(cfg.model),
            len(encoding.columns) if encoding else 0,
            mix=cfg.prognosis.mix,
        ).to(unit.device)
        return PrognosisBuilt(
            model, built.adapted_modules, built.trained, patients, encoding, unit.method.inputs()[0]
        )

    def run(self, unit: Unit, built: PrognosisBuilt) -> Measured:
        from pemma.metrics.survival import survival_scores, write_task2_submission
        from pemma.tasks.prognosis.cox import baseline_scores, fit_risk_model, image_forward, predict

        cfg, p, device = unit.cfg, unit.cfg.prognosis, unit.device
        model, encoding, subset = built.model, built.encoding, built.subset
        patients = built.patients
        train_p, test_p = patients["train"], patients["test"]
        out = Measured(tags={"prognosis_inputs": LABELS[subset] + ("+EHR" if p.ehr else "")})
        if p.ehr:  # a patient without a clinical row gets the learned missing token for every variable
            lacking = sum(int(pts.clinical.isna().all(axis=1).sum()) for pts in patients.values())
            out.tags["clinical_rows_missing"] = str(lacking)
            if lacking:
                log.warning("%d of this unit's patients have no clinical row", lacking)
        phase = unit.phases
        t0 = time.perf_counter()
        with phase("train"):
            losses = fit_risk_model(
                model,
                image_forward(model, train_p, subset, encoding, device),
                len(train_p.ids),
                train_p.time,
                train_p.event,
                p,
                cfg.seed,
                device,
                checkpoint=unit.checkpoint("prognosis"),
                checkpoint_every=cfg.train.checkpoint_every,
            )
        out.metrics.update(
            {
                "train_seconds": time.perf_counter() - t0,
                "train_first_loss": losses[0],
                "train_final_loss": losses[-1],
            }
        )
        with phase("evaluate"):
            risks = {
                name: predict(
                    model, image_forward(model, pts, subset, encoding, device), len(pts.ids), device, p.amp
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
            out.metrics.update({f"surv/{k}": v for k, v in scores.items()})
            out.metrics.update(baseline_scores(train_p, test_p, p, cfg.seed))
        out.metrics["train_patients"] = len(train_p.ids)
        predictions = unit.output("predictions", ".csv")
        predictions.parent.mkdir(parents=True, exist_ok=True)
        write_task2_submission(test_p.ids, risks["test"], predictions)
        out.tags["predictions_file"] = str(predictions.relative_to(unit.results))
        rows = [
            {
                "kind": "prognosis",
                "patient_id": pid,
                "centre": centre_of(pid),
                "split": name,
                "subset": subset + ("+ehr" if p.ehr else ""),
                "risk": float(risk),
                "time": float(t),
                "event": int(e),
            }
            for name, pts in patients.items()
            for pid, risk, t, e in zip(
                pts.ids, risks[name], pts.time.tolist(), pts.event.tolist(), strict=True
            )
        ]
        table = write_patient_table(rows, unit.key, unit.output("patients", ".csv"))
        out.artifacts["patients"] = table
        out.tags["patients_file"] = str(table.relative_to(unit.results))
        return out
