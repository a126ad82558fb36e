"""MLflow glue: run identity, provenance, skip-if-finished, and FAILED runs that say why.

The store is an embedded SQLite database under the results folder unless MLFLOW_TRACKING_URI says
otherwise. One experiment per suite; one run per unit, named by its run key.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pemma.config import REPORTING_PROFILES, RunConfig, stable_hash

if TYPE_CHECKING:  # the store opens without torch: listing what a suite has done stays fast
    import torch

EXPERIMENT_PREFIX = "pemma-bench/"


def run_key(cfg: RunConfig, data_fingerprint: str, revision: int = 0) -> str:
    """Readable and stable: suite__method__backbone__s<seed>__<hash of the resolved config, the data and
    the model code's revision (left out at 0, so keys from before revisions stay)>."""
    revised = {"revision": revision} if revision else {}
    digest = stable_hash({"config": cfg.identity(), "data": data_fingerprint, **revised})
    return f"{cfg.suite}__{cfg.method}__{cfg.backbone}__s{cfg.seed}__{digest}"


def parse_run_key(key: str) -> dict[str, str]:
    suite, method, backbone, seed, digest = key.split("__")
    return {"suite": suite, "method": method, "backbone": backbone, "seed": seed[1:], "hash": digest}


def _git(*args: str) -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(device: torch.device, dtype: str, profile: str) -> dict[str, str]:
    import monai
    import peft
    import torch

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    )
    return {
        "git_commit": commit or "unknown",
        "git_dirty": "unknown" if status is None else str(bool(status)).lower(),
        "torch_version": torch.__version__,
        "monai_version": monai.__version__,
        "peft_version": peft.__version__,
        "python_version": platform.python_version(),
        "device": device.type,
        "device_name": device_name,
        "cpu_threads": str(torch.get_num_threads()),  # a unit's samples/s depend on its share of the CPU
        "dtype": dtype,
        "profile": profile,
        "for_reporting": str(profile in REPORTING_PROFILES).lower(),
    }


SYSTEM_SUMMARIES = {
    # summary metric logged at the end of a unit: (MLflow system metric, aggregate over its history)
    "system_cpu_utilization_pct": ("system/cpu_utilization_percentage", "mean"),
    "system_memory_peak_mb": ("system/system_memory_usage_megabytes", "max"),
    "system_gpu_utilization_pct": ("system/gpu_0_utilization_percentage", "mean"),
    "system_gpu_memory_peak_mb": ("system/gpu_0_memory_usage_megabytes", "max"),
}
"""What a unit's run keeps of MLflow's system metrics as single numbers (GPU ones only where
nvidia-ml-py sees a GPU)."""


class TrackingError(RuntimeError):
    """The MLflow store cannot be opened or reached; the message names its URI."""


def check_sqlite(path: Path) -> None:
    """An embedded store whose pages are damaged is refused, naming it, before anything reads from it or
    writes to it (SQLite's `PRAGMA quick_check`: the page and index structure, not every row's
    constraints; milliseconds for a results folder's store)."""
    import sqlite3

    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            problems = [" ".join(str(row[0]).split()) for row in db.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as err:
        problems = [str(err)]
    if problems != ["ok"]:
        raise TrackingError(
            f"the MLflow tracking store {path} is damaged (SQLite: {'; '.join(problems)[:300]}); "
            "restore it from a backup, or move it aside to start a new store"
        )


@dataclass(frozen=True)
class Finished:
    """A FINISHED unit's MLflow run: its id and tags."""

    run_id: str
    tags: dict[str, str]


class Tracker:
    def __init__(self, results: Path, uri: str | None = None) -> None:
        import mlflow  # noqa: F401  (imported here: MLflow is slow to import)
        from mlflow.tracking import MlflowClient

        results = Path(results).resolve()
        results.mkdir(parents=True, exist_ok=True)
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{results / 'mlflow.db'}"
        self.artifact_root = (results / "mlartifacts").as_uri()
        if self.uri.startswith("sqlite:///"):
            check_sqlite(Path(self.uri.removeprefix("sqlite:///")))
        try:
            if self.uri.startswith("sqlite:"):
                from pemma.locks import locked

                # The client creates (or migrates) the store's schema: two processes at once collide.
                with locked(results, "tracking-store"):
                    self.client = MlflowClient(tracking_uri=self.uri)
                    self.client.search_experiments(max_results=1)
            else:
                # A server out of reach fails within seconds, not after minutes of retries.
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
                self.client = MlflowClient(tracking_uri=self.uri)
                self.client.search_experiments(max_results=1)
        except Exception as err:  # MLflow raises many kinds (SQLAlchemy, requests, its own)
            reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise TrackingError(f"the MLflow tracking store {self.uri} cannot be used: {reason}") from err

    def experiment_id(self, suite: str, create: bool = True) -> str | None:
        name = EXPERIMENT_PREFIX + suite
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        if not create:
            return None
        from mlflow.exceptions import MlflowException

        try:
            # A local store keeps artifacts under the results folder; a tracking server decides itself
            # (its --artifacts-destination, which every machine reaches through the server).
            local = self.uri.startswith(("sqlite:", "file:", "/")) or "://" not in self.uri
            location = f"{self.artifact_root}/{suite}" if local else None
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another process created it a moment ago
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def finished_keys(self, suite: str) -> set[str]:
        return self.keys(suite, "FINISHED")

    def finished_runs(self, suite: str) -> dict[str, Finished]:
        """The suite's FINISHED runs by run key, with their tags (what a unit recorded it evaluated)."""
        exp = self.experiment_id(suite, create=False)
        if exp is None:
            return {}
        runs = self.client.search_runs(
            [exp], filter_string="attributes.status = 'FINISHED'", max_results=50000
        )
        return {
            r.data.tags["run_key"]: Finished(r.info.run_id, dict(r.data.tags))
            for r in runs
            if r.data.tags.get("run_key")
        }

    def keys(self, suite: str, status: str) -> set[str]:
        """Run keys of the suite's runs in `status` (FINISHED, RUNNING, ...)."""
        exp = self.experiment_id(suite, create=False)
        if exp is None:
            return set()
        runs = self.client.search_runs(
            [exp], filter_string=f"attributes.status = '{status}'", max_results=50000
        )
        return {r.data.tags.get("run_key") for r in runs}

    def close_stale(self, suite: str, key: str) -> int:
        """Mark runs of `key` left RUNNING by a killed process as KILLED, so none stays RUNNING forever."""
        exp = self.experiment_id(suite, create=False)
        if exp is None:
            return 0
        stale = self.client.search_runs(
            [exp], filter_string=f"attributes.status = 'RUNNING' and tags.run_key = '{key}'", max_results=1000
        )
        for run in stale:
            self.client.set_tag(
                run.info.run_id, "error", "the process running this unit ended without closing it"
            )
            self.client.set_terminated(run.info.run_id, "KILLED")
        return len(stale)

    def start(self, suite: str, key: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(
            self.experiment_id(suite), run_name=key, tags={**tags, "run_key": key, "suite": suite}
        )
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        return run.info.run_id

    def create_run(
        self, suite: str, name: str, tags: dict[str, str], params: dict[str, Any] | None = None
    ) -> str:
        """A run that is not a unit (a search study or trial): no run key, so no report counts it."""
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id(suite), run_name=name, tags={**tags, "suite": suite})
        items = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        return run.info.run_id

    def find_run(self, suite: str, tags: dict[str, str]) -> str | None:
        """The oldest run of the suite with these tags, if any."""
        exp = self.experiment_id(suite, create=False)
        if exp is None:
            return None
        where = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs(
            [exp], filter_string=where, order_by=["attributes.start_time ASC"], max_results=1
        )
        return runs[0].info.run_id if runs else None

    def log(
        self, run_id: str, metrics: dict[str, float], tags: dict[str, str] | None = None, step: int = 0
    ) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        tag_items = [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
        for i in range(0, max(len(items), 1), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500], tags=tag_items if i == 0 else [])

    @contextlib.contextmanager
    def system_metrics(self, run_id: str):
        """MLflow's system metrics (CPU, memory, disk, network; GPU utilisation and memory where
        nvidia-ml-py finds a GPU) sampled into the run while the block runs, every
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (10 by default); at the end their means /
        peaks as single metrics (SYSTEM_SUMMARIES)."""
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        quiet = logging.getLogger("mlflow.system_metrics")
        level, quiet.level = quiet.level, logging.WARNING  # not "started / stopped" on every unit
        try:
            monitor = SystemMetricsMonitor(run_id, tracking_uri=self.uri)
            monitor.start()
            try:
                yield
            finally:
                monitor.finish()
            self.log(run_id, self.system_summaries(run_id))
        finally:
            quiet.level = level

    def system_summaries(self, run_id: str) -> dict[str, float]:
        out = {}
        for name, (key, how) in SYSTEM_SUMMARIES.items():
            values = [m.value for m in self.client.get_metric_history(run_id, key)]
            if values:
                out[name] = max(values) if how == "max" else sum(values) / len(values)
        return out

    def log_artifact(self, run_id: str, path: Path, folder: str) -> None:
        """A file into the run's artifact `folder`, or a folder's files (a folder of predictions)."""
        if Path(path).is_dir():
            self.client.log_artifacts(run_id, str(path), folder)
        else:
            self.client.log_artifact(run_id, str(path), folder)

    def download_artifacts(self, run_id: str, folder: str, destination: Path) -> Path:
        return Path(self.client.download_artifacts(run_id, folder, str(destination)))

    def finish(self, run_id: str) -> None:
        self.client.set_terminated(run_id, "FINISHED")

    def fail(self, run_id: str, error: BaseException, status: str = "FAILED") -> None:
        message = f"{type(error).__name__}: {error}"
        self.client.set_tag(run_id, "error", message[:5000])
        self.client.log_text(run_id, "".join(traceback.format_exception(error)), "error.txt")
        self.client.set_terminated(run_id, status)

    def try_fail(self, run_id: str, error: BaseException) -> bool:
        """Mark the run FAILED with its error tag where the store can still be written (a full disk may
        hold it): MLflow's own error log silenced, nothing raised; False if it could not (the next
        start closes the run, as it closes any run its owner left RUNNING)."""
        import logging

        quiet = logging.getLogger("mlflow.store.db.utils")
        level, quiet.level = quiet.level, logging.CRITICAL
        try:
            self.client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:5000])
            self.client.set_terminated(run_id, "FAILED")
            return True
        except Exception:  # the store is on the full disk too
            return False
        finally:
            quiet.level = level

    def runs(self, suite: str, status: str | None = "FINISHED") -> pd.DataFrame:
        """One row per run (of every status when `status` is None): tags.*, params.*, metrics.* columns."""
        exp = self.experiment_id(suite, create=False)
        if exp is None:
            return pd.DataFrame()
        where = f"attributes.status = '{status}'" if status else ""
        runs = self.client.search_runs([exp], filter_string=where, max_results=50000)
        rows = []
        for r in runs:
            row: dict[str, Any] = {
                "run_id": r.info.run_id,
                "status": r.info.status,
                "end_time": r.info.end_time,
            }
            row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
            row.update({f"params.{k}": v for k, v in r.data.params.items()})
            row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
            rows.append(row)
        return pd.DataFrame(rows)
