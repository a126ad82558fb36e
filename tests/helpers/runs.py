"""Tracked runs without training: one factory for the report, table and claims tests."""

from __future__ import annotations

from pathlib import Path

from pemma.config import stable_hash
from pemma.metrics.patients import write_patient_table
from pemma.tracking import Tracker


class FakeRuns:
    """An MLflow store (and per-patient tables) in `results`, filled one run per `add` call."""

    def __init__(self, results: Path) -> None:
        self.results = Path(results)
        self.tracker = Tracker(self.results)

    def add(
        self,
        suite: str,
        method: str,
        seed: int,
        metrics: dict[str, float] | None = None,
        *,
        patients: list[dict] | None = None,
        params: dict | None = None,
        tags: dict[str, str] | None = None,
        backbone: str = "unetr",
        profile: str = "smoke",
        status: str = "FINISHED",
        key: str | None = None,
    ) -> str:
        """A run of `method` on `seed` in `suite` with these metrics and config params; `patients`
        (per-patient rows) are written as the run's table, logged as its artifact and named in its
        `patients_file` tag, as a unit does. The run ends FINISHED, or FAILED / KILLED as `status` says.
        Returns the run key (unique per suite, method, backbone, seed, profile and params)."""
        key = key or f"{suite}__{method}__{backbone}__s{seed}__{stable_hash([profile, params or {}])}"
        run_id = self.tracker.start(
            suite,
            key,
            {"method": method, "backbone": backbone, "seed": seed, **(params or {})},
            {"method": method, "backbone": backbone, "profile": profile, **(tags or {})},
        )
        logged_tags = {}
        if patients is not None:
            path = write_patient_table(patients, key, self.results / suite / "patients" / f"{key}.csv")
            logged_tags["patients_file"] = str(path.relative_to(self.results))
            self.tracker.log_artifact(run_id, path, "patients")
        self.tracker.log(run_id, metrics or {}, logged_tags)
        if status == "FINISHED":
            self.tracker.finish(run_id)
        else:
            self.tracker.fail(run_id, RuntimeError("boom"), status)
        return key
