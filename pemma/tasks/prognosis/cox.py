"""Prognosis units: recurrence-free survival from CT, CT+PET and CT+PET+EHR, Cox loss (torchsurv).

Data: every patient with CT, PET, label and endpoint, split per centre by seed (train + val train,
test scores). Each patient is one crop of `model.roi` centred on the ground-truth tumour's bounding
box (as HECKTOR task 2 baselines do); risks come from the segmentation encoder's bottleneck features,
optionally with clinical tokens. Every unit also fits two lifelines Cox baselines on the same split:
clinical variables, and image features (GTV volume, PET maximum in the GTV). The PET maximum is taken
after preprocessing, i.e. of the per-patient z-scored PET, not an SUV.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai import transforms as T
from torchsurv.loss.cox import neg_partial_log_likelihood

from pemma.config import PrognosisConfig
from pemma.data.hecktor import Case, Cohort
from pemma.data.splits import Plan, split_centre
from pemma.modalities import split_inputs
from pemma.models.prognosis import CLINICAL_VARIABLES, SurvivalHead, TableEncoding
from pemma.tasks.base import IMAGE_KEYS as KEYS
from pemma.training.loop import Checkpoint, autocast, plain, random_state, restore_random_state


@dataclass
class Patients:
    """One split's patients as tensors: tumour-centred crops, clinical values, endpoints."""

    ids: list[str]
    ct: torch.Tensor
    pet: torch.Tensor
    time: torch.Tensor
    event: torch.Tensor
    clinical: pd.DataFrame
    volume_ml: np.ndarray
    pet_max: np.ndarray


def prognosis_split(cohort: Cohort, plan: Plan, fractions, seed: int) -> dict[str, list[Case]]:
    """Patients with CT, PET, label and an endpoint, split so that no test patient was seen by any
    trained component: in a centre of the centre plan, the test patients are those of the plan's
    test split (never used to train the CT base or to adapt) that have an endpoint; a centre outside
    the plan is split by seed. Every other patient with an endpoint trains (train absorbs val).
    """
    if cohort.endpoints is None:
        raise ValueError(f"{cohort.root}: no endpoint CSV, so no prognosis")
    known = set(cohort.endpoints["PatientID"])
    phases = (plan.pretrain, plan.adapt, *plan.continual.values())
    held_out = {c.patient_id for phase in phases for c in phase["test"]}
    planned = {c.centre for phase in phases for cases in phase.values() for c in cases}
    out: dict[str, list[Case]] = {"train": [], "test": []}
    usable = 0
    for centre, cases in sorted(cohort.centres().items()):
        cases = [c for c in cases if c.pet is not None and c.label is not None and c.patient_id in known]
        usable += len(cases)
        if centre in planned:
            out["test"] += [c for c in cases if c.patient_id in held_out]
            out["train"] += [c for c in cases if c.patient_id not in held_out]
        elif len(cases) >= 2:
            parts = split_centre(cases, fractions, seed)
            out["train"] += parts["train"] + parts["val"]
            out["test"] += parts["test"]
    if len(out["train"]) < 4 or not out["test"]:
        raise ValueError(f"{cohort.root}: too few patients with an endpoint for prognosis ({usable})")
    return out


def load_patients(cases: list[Case], volumes, cohort: Cohort, roi, spacing) -> Patients:
    """Tumour-centred crops of the preprocessed volumes, with endpoints and clinical rows."""
    crop = T.Compose(
        [
            T.CropForegroundd(keys=list(KEYS), source_key="label", select_fn=lambda x: x > 0, margin=0),
            T.ResizeWithPadOrCropd(keys=list(KEYS), spatial_size=roi),
        ]
    )
    ct, pet, volume, pet_max = [], [], [], []
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for i in range(len(cases)):
        item = volumes[i]
        label = torch.as_tensor(item["label"])
        tumour = label > 0
        volume.append(float(tumour.sum()) * voxel_ml)
        pet_max.append(float(torch.as_tensor(item["pet"])[tumour].max()) if tumour.any() else 0.0)
        cropped = crop({k: torch.as_tensor(item[k]) for k in KEYS})
        ct.append(torch.as_tensor(cropped["ct"]).float())
        pet.append(torch.as_tensor(cropped["pet"]).float())
    ids = [c.patient_id for c in cases]
    endpoints = cohort.endpoints.set_index("PatientID").loc[ids]
    clinical = (
        cohort.clinical.set_index("PatientID").reindex(ids)
        if cohort.clinical is not None
        else pd.DataFrame(index=ids)
    )
    return Patients(
        ids,
        torch.stack(ct),
        torch.stack(pet),
        torch.as_tensor(endpoints["RFS"].to_numpy(dtype=float), dtype=torch.float32),
        torch.as_tensor(endpoints["Relapse"].to_numpy(dtype=int)).bool(),
        clinical,
        np.array(volume),
        np.array(pet_max),
    )


def clinical_columns(table: pd.DataFrame) -> tuple[str, ...]:
    missing = [c for c in CLINICAL_VARIABLES if c not in table.columns]
    if missing:
        raise ValueError(f"clinical CSV lacks {missing}: prognosis with EHR needs HECKTOR's clinical columns")
    return CLINICAL_VARIABLES


def fit_risk_model(
    model: torch.nn.Module,
    forward,
    n: int,
    time: torch.Tensor,
    event: torch.Tensor,
    cfg: PrognosisConfig,
    seed: int,
    device: torch.device,
    *,
    checkpoint: Path | None = None,
    checkpoint_every: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train `model` (its trainable parameters) with the Cox partial likelihood on minibatches.

    `forward(indices)` returns log-hazards for those patients. Batches are drawn without replacement
    per epoch and always hold at least one event (the partial likelihood is undefined otherwise).
    Resumable like segmentation's loop: with `checkpoint`, it continues from the saved step (weights,
    optimiser, the batch draw and every random stream) and saves every `checkpoint_every` steps and
    at the end, so a stopped unit ends with the same losses and weights as an uninterrupted one.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(seed)
    events = torch.nonzero(event).flatten()
    if len(events) == 0:
        raise ValueError("no event among the training patients: the Cox loss is undefined")
    identity = {"task": "prognosis", "steps": cfg.steps, "batch_size": cfg.batch_size, "seed": seed, "n": n}
    stage = Checkpoint(checkpoint, identity, model, optimiser)
    losses: list[float] = []
    start = 0
    saved = stage.load()
    if saved is not None:
        g.set_state(saved["draw"])
        restore_random_state(saved["random"])
        losses, start = list(saved["losses"]), saved["step"]

    def save(step: int) -> None:
        stage.save(step, draw=g.get_state(), random=random_state(), losses=losses)

    model.train()
    for step in range(start, cfg.steps):
        idx = torch.randperm(n, generator=g)[: min(cfg.batch_size, n)]
        if not event[idx].any():
            idx[0] = events[torch.randint(len(events), (1,), generator=g)]
        with autocast(device, cfg.amp):
            log_hz = forward(idx).float()
        with warnings.catch_warnings():  # tied times are expected (days); Efron's method handles them
            warnings.filterwarnings("ignore", message="Ties in `time`")
            loss = neg_partial_log_likelihood(log_hz, event[idx].to(device), time[idx].to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if on_step:
            on_step(step, losses[-1])
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < cfg.steps:
            save(step + 1)
    if start < cfg.steps:
        save(cfg.steps)
    return losses


@torch.no_grad()
def predict(
    model: torch.nn.Module, forward, n: int, device: torch.device, amp: bool, batch: int = 4
) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, n, batch):
        idx = torch.arange(start, min(n, start + batch))
        with autocast(device, amp):
            out.append(forward(idx).float().cpu())
    return torch.cat(out).numpy()


def image_forward(model, patients: Patients, subset: str, encoding: TableEncoding | None, device):
    """A `forward(indices)` for a PrognosisModel on `patients` with inputs `subset` (+ EHR)."""
    values = present = None
    if encoding is not None:
        values, present = encoding.transform(patients.clinical)

    def forward(idx: torch.Tensor) -> torch.Tensor:
        ct, pet = split_inputs({"ct": patients.ct[idx], "pet": patients.pet[idx]}, subset)
        ct, pet = plain(ct, device), plain(pet, device)
        v = values[idx].to(device) if values is not None else None
        m = present[idx].to(device) if present is not None else None
        return model(ct, pet, v, m)

    return forward


def fit_tabular(
    table: pd.DataFrame, columns: tuple[str, ...], time, event, cfg: PrognosisConfig, seed: int
) -> tuple[SurvivalHead, TableEncoding]:
    """The tabular path alone: EHR tokens (learned missing embedding) + the survival head."""
    torch.manual_seed(seed)
    encoding = TableEncoding.fit(table, columns)
    head = SurvivalHead(None, len(columns), mix=cfg.mix)
    values, present = encoding.transform(table)
    time = torch.as_tensor(np.asarray(time, dtype=float), dtype=torch.float32)
    event = torch.as_tensor(np.asarray(event).astype(bool))
    fit_risk_model(
        head,
        lambda idx: head(None, values[idx], present[idx]),
        len(table),
        time,
        event,
        cfg,
        seed,
        torch.device("cpu"),
    )
    return head.eval(), encoding


def predict_tabular(head: SurvivalHead, encoding: TableEncoding, table: pd.DataFrame) -> np.ndarray:
    values, present = encoding.transform(table)
    with torch.no_grad():
        return head(None, values, present).numpy()


def cox_baseline(
    train: pd.DataFrame, test: pd.DataFrame, columns: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """lifelines Cox PH (penalizer 0.1) on `columns`, missing values filled with training means.

    Returns (train risks, test risks): log partial hazards, higher = more risk.
    """
    from lifelines import CoxPHFitter

    means = train[columns].mean()
    fill = means.where(means.notna(), 0.0)
    tr = train[columns + ["time", "event"]].fillna(fill)
    te = test[columns].fillna(fill)
    keep = [c for c in columns if tr[c].std() > 0]
    cox = CoxPHFitter(penalizer=0.1).fit(tr[keep + ["time", "event"]], "time", "event")
    return (
        np.log(cox.predict_partial_hazard(tr[keep]).to_numpy()),
        np.log(cox.predict_partial_hazard(te[keep]).to_numpy()),
    )


def baseline_scores(train: Patients, test: Patients, cfg: PrognosisConfig, seed: int) -> dict[str, float]:
    """Cox on clinical variables and Cox on image features, scored like the models."""
    from pemma.metrics.survival import survival_scores
    from pemma.models.prognosis import numeric

    out: dict[str, float] = {}

    def frame(p: Patients, clinical: bool) -> pd.DataFrame:
        if clinical:
            cols = clinical_columns(p.clinical)
            df = pd.DataFrame(numeric(p.clinical, cols), columns=list(cols))
        else:
            df = pd.DataFrame({"log_volume_ml": np.log1p(p.volume_ml), "pet_max": p.pet_max})
        return df.assign(time=p.time.numpy(), event=p.event.numpy().astype(int))

    for name, clinical in (("cox_clinical", True), ("cox_image", False)):
        try:
            tr, te = frame(train, clinical), frame(test, clinical)
        except ValueError:
            continue
        cols = [c for c in tr.columns if c not in ("time", "event")]
        train_risk, test_risk = cox_baseline(tr, te, cols)
        scores = survival_scores(
            (tr["time"], tr["event"], train_risk),
            (te["time"], te["event"], test_risk),
            cfg.horizons,
            n_boot=cfg.bootstrap,
            seed=seed,
        )
        out.update({f"{name}/{k}": v for k, v in scores.items()})
    return out
