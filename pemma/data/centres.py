"""HECKTOR 2022 centres, with their Task 1 case counts (see REFERENCE.md)."""

from __future__ import annotations

HECKTOR_CENTRES: dict[str, int] = {
    "CHUM": 56,
    "CHUP": 72,
    "CHUS": 72,
    "CHUV": 53,
    "MDA": 198,
    "HGJ": 55,
    "HMR": 18,
}


def centre_of(patient_id: str) -> str:
    """The centre is the part of the ID before the dash: ``CHUM-001`` -> ``CHUM``."""
    return patient_id.split("-", 1)[0]
