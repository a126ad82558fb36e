"""Per-patient results: one documented, versioned CSV table per unit, the input of paired tests and
bootstrap intervals over patients (which read it and never re-run inference).

Segmentation rows (`kind` = segmentation): one per patient x input subset x class, with the
patient's Dice (empty if truth and prediction are both empty), the voxel counts |P ∩ G|, |P|, |G| and
the volumes in ml, on the grid named in `grid` (`working`: the resampled grid at data.spacing), and on
the original grid the boundary metrics HD95 (mm) and NSD (metrics/segmentation.py: empty cases).
Prognosis rows (`kind` = prognosis): one per patient, with its split, predicted risk (higher = earlier
relapse), follow-up time in days and event (1 = relapse). Columns a kind does not use are empty.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pemma.files import record_digest, write_atomic

SCHEMA_VERSION = 3
"""2: `condition` and `magnitude` (the test-time condition a row was scored under); 3: `hd95_mm` and
`nsd` (boundary metrics, original grid). Versions 1 and 2 are still read (their missing columns
empty)."""
READABLE = (1, 2, 3)
COLUMNS = (
    "schema_version",
    "run_key",
    "kind",
    "patient_id",
    "centre",
    "split",
    "subset",
    "condition",
    "magnitude",
    "class",
    "grid",
    "dice",
    "intersection_voxels",
    "prediction_voxels",
    "truth_voxels",
    "hd95_mm",
    "nsd",
    "prediction_ml",
    "truth_ml",
    "risk",
    "time",
    "event",
)


def patient_table(rows: list[dict], run_key: str) -> pd.DataFrame:
    """Rows as the versioned table: every column present, in order; unknown columns refused."""
    table = pd.DataFrame(rows)
    unknown = set(table.columns) - set(COLUMNS)
    if unknown:
        raise ValueError(f"per-patient rows hold columns outside the schema: {sorted(unknown)}")
    table = table.assign(schema_version=SCHEMA_VERSION, run_key=run_key).reindex(columns=list(COLUMNS))
    table["condition"] = table["condition"].astype(object)
    plain = (table["kind"] == "segmentation") & table["condition"].isna()
    table.loc[plain, "condition"] = table.loc[plain, "subset"]  # no condition: the plain input subset
    return table


def write_patient_table(rows: list[dict], run_key: str, path: Path) -> Path:
    """The rows as the unit's table, written atomically with its sha256 beside it (as every saved file:
    a report checks it before trusting a number)."""
    table = patient_table(rows, run_key)
    write_atomic(Path(path), lambda tmp: table.to_csv(tmp, index=False))
    record_digest(Path(path))
    return Path(path)


def extend_patient_table(path: Path, rows: list[dict], run_key: str) -> Path:
    """The table at `path` with `rows` appended (a finished unit scored under more conditions), written
    atomically in the current schema."""
    table = pd.concat([read_patient_table(path), patient_table(rows, run_key)], ignore_index=True)
    table = table.assign(schema_version=SCHEMA_VERSION).reindex(columns=list(COLUMNS))
    write_atomic(Path(path), lambda tmp: table.to_csv(tmp, index=False))
    record_digest(Path(path))
    return Path(path)


REQUIRED = ("schema_version", "run_key", "kind", "patient_id")
SEGMENTATION = ("subset", "class", "grid", "intersection_voxels", "prediction_voxels", "truth_voxels")
"""What a segmentation table's readers count with: a table without them is refused, naming it."""


def read_patient_table(path: Path) -> pd.DataFrame:
    """A unit's table, any readable version, as the current schema's columns; a ValueError naming the
    file for one that is not (unreadable, truncated, columns or values missing)."""
    try:
        table = pd.read_csv(path, dtype={"patient_id": str, "centre": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable per-patient table ({str(err).splitlines()[0]})") from err
    missing = [c for c in REQUIRED if c not in table]
    if not missing and (table["kind"] == "segmentation").any():
        missing = [c for c in SEGMENTATION if c not in table]
    if missing:
        raise ValueError(f"{path}: not a per-patient table (no {', '.join(missing)} column)")
    segmentation = table[table["kind"] == "segmentation"]
    counts = (
        segmentation[["intersection_voxels", "prediction_voxels", "truth_voxels"]]
        if len(segmentation)
        else None
    )
    if counts is not None and (counts.isna().any().any() or (counts < 0).any().any()):
        raise ValueError(f"{path}: voxel counts missing or negative (a truncated or edited table)")
    versions = set(table["schema_version"].unique())
    if not versions <= set(READABLE):
        raise ValueError(
            f"{path}: per-patient table of schema version(s) {versions}, expected one of {READABLE}"
        )
    if "condition" not in table:  # version 1: segmentation rows are the plain input subsets
        segmentation = table["kind"] == "segmentation"
        table.insert(table.columns.get_loc("subset") + 1, "condition", table["subset"].where(segmentation))
        table.insert(table.columns.get_loc("condition") + 1, "magnitude", float("nan"))
    for column in ("hd95_mm", "nsd"):  # versions 1 and 2: no boundary metrics
        if column not in table:
            table.insert(table.columns.get_loc("truth_voxels") + 1 + (column == "nsd"), column, float("nan"))
    return table
