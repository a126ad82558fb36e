"""Input modality subsets: the names every model, method and metric agree on."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are made: listing commands never load it
    import torch

CTPET, CT, PET = "ctpet", "ct", "pet"
SUBSETS: tuple[str, ...] = (CTPET, CT, PET)
LABELS = {CTPET: "CT+PET", CT: "CT", PET: "PET"}
MODALITIES = {CTPET: frozenset({"ct", "pet"}), CT: frozenset({"ct"}), PET: frozenset({"pet"})}


class UnsupportedModalityError(ValueError):
    """A model or method was asked to work on an input subset it does not accept."""


def check_subset(subset: str) -> str:
    if subset not in SUBSETS:
        raise UnsupportedModalityError(
            f"unknown input subset {subset!r}; expected one of {', '.join(SUBSETS)}"
        )
    return subset


def subset_of(ct: torch.Tensor | None, pet: torch.Tensor | None) -> str:
    if ct is not None and pet is not None:
        return CTPET
    if ct is not None:
        return CT
    if pet is not None:
        return PET
    raise UnsupportedModalityError("no input given: at least one of CT and PET is required")


def split_inputs(
    batch: dict[str, torch.Tensor], subset: str
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The (ct, pet) pair a model sees for `subset`; the absent modality is None."""
    check_subset(subset)
    ct = batch.get("ct") if subset in (CTPET, CT) else None
    pet = batch.get("pet") if subset in (CTPET, PET) else None
    if (subset in (CTPET, CT) and ct is None) or (subset in (CTPET, PET) and pet is None):
        raise UnsupportedModalityError(
            f"{LABELS[subset]} input asked for, but the data holds only "
            f"{', '.join(k for k in ('ct', 'pet') if k in batch)}"
        )
    return ct, pet


def stack(ct: torch.Tensor | None, pet: torch.Tensor | None) -> torch.Tensor:
    """Join the present modalities as channels (CT first), for sliding-window inference."""
    import torch

    return torch.cat([t for t in (ct, pet) if t is not None], dim=1)


def unstack(x: torch.Tensor, subset: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if subset == CTPET:
        return x[:, :1], x[:, 1:2]
    if subset == CT:
        return x, None
    return None, x
