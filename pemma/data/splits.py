"""Centre phases and deterministic per-centre train / validation / test splits."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from pemma.data.hecktor import Case, Cohort, CohortError

SPLITS = ("train", "val", "test")


def split_centre(
    cases: list[Case], fractions: tuple[float, float, float], seed: int
) -> dict[str, list[Case]]:
    """Shuffle a centre's cases by (seed, centre) and cut them; test and train each get at least one."""
    cases = sorted(cases, key=lambda c: c.patient_id)
    n = len(cases)
    centre = cases[0].centre if cases else ""
    if n < 2:
        raise CohortError(f"centre {centre}: {n} usable patient(s); a split needs at least 2")
    rng = np.random.default_rng([seed, zlib.crc32(centre.encode())])
    order = [cases[i] for i in rng.permutation(n)]
    n_test = max(1, round(n * fractions[2]))
    n_val = min(round(n * fractions[1]), n - n_test - 1)
    return {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}


def require_validation(cases: list[Case], centre: str, split: tuple[float, float, float]) -> list[Case]:
    """The validation cases a search optimises on; an empty split is an error that says what to change."""
    if not cases:
        raise CohortError(
            f"centre {centre}: the validation split is empty (data.split {list(split)}); a search optimises "
            "on validation patients: raise the split's validation share or, for the synthetic cohort, "
            "data.synth_scale"
        )
    return cases


@dataclass(frozen=True)
class Plan:
    """Which patients serve CT pretraining and multi-modal adaptation, split per centre."""

    pretrain: dict[str, list[Case]]
    adapt: dict[str, list[Case]]
    continual: dict[str, dict[str, list[Case]]] = field(default_factory=dict)
    """Continual-learning centre -> its splits (patients with CT, PET and label)."""


def make_plan(
    cohort: Cohort,
    pretrain_centres: tuple[str, ...],
    adapt_centre: str,
    fractions: tuple[float, float, float],
    seed: int,
    continual_centres: tuple[str, ...] = (),
) -> Plan:
    by_centre = cohort.centres()
    for name in (*pretrain_centres, adapt_centre, *continual_centres):
        if name not in by_centre:
            raise CohortError(
                f"{cohort.root}: centre {name} is named in the plan but has no patients "
                f"(centres found: {', '.join(sorted(by_centre))})"
            )
    pretrain: dict[str, list[Case]] = {s: [] for s in SPLITS}
    for name in pretrain_centres:
        usable = [c for c in by_centre[name] if c.label is not None]
        for split, part in split_centre(usable, fractions, seed).items():
            pretrain[split].extend(part)

    def multimodal(name: str) -> dict[str, list[Case]]:
        usable = [c for c in by_centre[name] if c.label is not None and c.pet is not None]
        return split_centre(usable, fractions, seed)

    return Plan(pretrain, multimodal(adapt_centre), {name: multimodal(name) for name in continual_centres})
