"""What a report reads: the FINISHED runs of a suite (one per run key) and their per-patient tables.

Runs come from any MLflow store (the results folder's SQLite file or a tracking server); per-patient
tables from the results folder when it holds them, else from the runs' `patients/` artifacts, so a
reviewer can report from someone else's store.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pemma.files import digest, digest_file, record_digest, verify, write_atomic
from pemma.metrics.patients import read_patient_table
from pemma.tracking import Tracker

log = logging.getLogger(__name__)


class DamagedResults(ValueError):
    """A results file a report would read that fails its checks and cannot be recovered; the message
    names it and what to do."""


@dataclass
class SuiteRuns:
    suite: str
    runs: pd.DataFrame  # FINISHED, one per run key (the latest), ci runs only when asked for
    left_out: dict[str, int] = field(default_factory=dict)  # why runs were not used -> how many
    _patients: pd.DataFrame | None = None

    @property
    def empty(self) -> bool:
        return self.runs.empty


class Sources:
    """The runs of every suite a report names, read once and kept."""

    def __init__(self, tracker: Tracker, results: Path, include_ci: bool = False) -> None:
        self.tracker, self.results, self.include_ci = tracker, Path(results), include_ci
        self._suites: dict[str, SuiteRuns] = {}
        self._downloads: tempfile.TemporaryDirectory | None = None

    def suite(self, name: str) -> SuiteRuns:
        if name not in self._suites:
            self._suites[name] = select(self.tracker.runs(name, status=None), name, self.include_ci)
        return self._suites[name]

    def patients(self, name: str) -> pd.DataFrame:
        """Every per-patient row of the suite's runs, with the run's method, backbone, seed and key."""
        runs = self.suite(name)
        if runs._patients is None:
            tables = [self._table(run) for _, run in runs.runs.iterrows()]
            tables = [t for t in tables if t is not None]
            runs._patients = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        return runs._patients

    def _table(self, run: pd.Series) -> pd.DataFrame | None:
        """The run's per-patient table: the results folder's file, checked against the sha256 recorded
        when it was written; where that fails (edited, truncated, unreadable), the copy logged to the
        run's MLflow artifacts if it passes the same check, restored with a warning; else a
        DamagedResults naming the file. Without a local file (another machine's store), the artifact."""
        local = run.get("tags.patients_file")
        path = self.results / local if isinstance(local, str) else None
        if path is None or not path.is_file():
            with tempfile.TemporaryDirectory() as tmp:
                copy = self._artifact_table(run, Path(tmp))
                table = read_patient_table(copy) if copy is not None else None
        else:
            table = self._checked(run, path)
        if table is None:
            return None
        return table.assign(
            method=run["tags.method"],
            backbone=run["tags.backbone"],
            seed=int(run.get("params.seed", 0)),
        )

    def _artifact_table(self, run: pd.Series, folder: Path) -> Path | None:
        try:
            downloaded = self.tracker.download_artifacts(run["run_id"], "patients", folder)
        except Exception:  # a run from before per-patient tables, or an artifact store out of reach
            return None
        files = sorted(downloaded.glob("*.csv"))
        return files[0] if files else None

    def _checked(self, run: pd.Series, path: Path) -> pd.DataFrame:
        try:
            verify(path)
            return read_patient_table(path)
        except ValueError as err:  # CorruptFile too
            problem = str(err)
        recorded = digest_file(path).read_text().strip() if digest_file(path).is_file() else None
        with tempfile.TemporaryDirectory() as tmp:
            copy = self._artifact_table(run, Path(tmp))
            if copy is None:
                raise DamagedResults(
                    f"{problem}; the run has no copy of it in MLflow: rerun the unit, or restore the file"
                )
            if recorded is not None and digest(copy) != recorded:
                raise DamagedResults(
                    f"{problem}; its copy in the MLflow artifacts differs from the recorded sha256 too: "
                    "rerun the unit, or restore the file"
                )
            try:
                table = read_patient_table(copy)
            except ValueError as err:
                raise DamagedResults(f"{problem}; its MLflow copy is no better ({err})") from err
            data = copy.read_bytes()
        write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))
        record_digest(path)
        log.warning(
            "%s; restored it from the run's MLflow artifact (the copy logged when it was written)", problem
        )
        return table

    def prediction(self, run: pd.Series, key: str, patient_id: str) -> Path | None:
        """A unit's prediction file for one patient and evaluation pass `key` (tasks/segmentation/
        predictions.py): from the results folder, else from the run's `predictions/<key>` artifacts
        (downloaded once per pass into a folder this object keeps); None where there is none."""
        name = f"{patient_id}.nii.gz"
        unit = self.results / str(run["tags.suite"]) / "predictions" / str(run["tags.run_key"])
        if unit.is_dir():  # the unit wrote its predictions here: no copy elsewhere holds more
            return unit / key / name if (unit / key / name).is_file() else None
        if self._downloads is None:
            self._downloads = tempfile.TemporaryDirectory(prefix="pemma-predictions-")
        destination = Path(self._downloads.name) / str(run["run_id"])
        folder = destination / "predictions" / key
        if not folder.exists():
            destination.mkdir(parents=True, exist_ok=True)
            quiet = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
            try:
                self.tracker.download_artifacts(run["run_id"], f"predictions/{key}", destination)
            except Exception:  # predictions off for that unit, or an artifact store out of reach
                folder.mkdir(parents=True, exist_ok=True)
            finally:
                if quiet is None:
                    os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
                else:
                    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = quiet
        found = folder / name
        return found if found.is_file() else None


def select(runs: pd.DataFrame, suite: str, include_ci: bool) -> SuiteRuns:
    """FINISHED runs only; ci-profile runs only when asked for; the latest FINISHED run per key."""
    if runs.empty:
        return SuiteRuns(suite, runs)
    left_out: dict[str, int] = {}
    for status, count in runs["status"].value_counts().sort_index().items():
        if status != "FINISHED":
            left_out[f"{status.lower()} runs"] = int(count)
    runs = runs[runs["status"] == "FINISHED"]
    if not include_ci and "tags.profile" in runs:
        ci = runs["tags.profile"] == "ci"
        if ci.any():
            left_out["ci-profile runs (numbers that mean nothing; --include-ci shows them)"] = int(ci.sum())
        runs = runs[~ci]
    if "tags.run_key" in runs:
        runs = runs.sort_values(["tags.run_key", "end_time"], kind="stable")
        latest = runs.drop_duplicates("tags.run_key", keep="last")
        if len(latest) < len(runs):
            left_out["duplicate FINISHED runs of one key (the latest kept)"] = len(runs) - len(latest)
        runs = latest
    return SuiteRuns(suite, runs.reset_index(drop=True), left_out)
