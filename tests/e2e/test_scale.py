"""Beyond one process: Ray tasks agree with the local executor; a throwaway PostgreSQL server backs an
Optuna study shared by two workers and an MLflow tracking server that two `run` processes write to."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import ci_args, ci_run

from pemma.tracking import Tracker

pytestmark = pytest.mark.slow  # end-to-end runs and services: `pytest -m 'not slow'` skips them

CLI = [sys.executable, "-c", "from pemma.cli import app; app()"]
METHODS = "early-fusion,pemma-lora,ct-only"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(results, cohort, *extra: str) -> subprocess.CompletedProcess:
    """`pemma-bench run` at the ci profile with `extra` options, in a process of its own."""
    return subprocess.run(
        [*CLI, *ci_args(results, "--methods", METHODS, *extra, data=cohort)],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory, tiny_cohort):
    """The three units run one after another in this process: the reference for other executors."""
    results = tmp_path_factory.mktemp("local")
    out = ci_run(results, "--methods", METHODS, data=tiny_cohort)
    assert out.exit_code == 0, out.output
    return results


def _same_units(reference, results):
    """The runs in `results` are the `reference` folder's units with its metrics; they are returned."""
    a = Tracker(reference).runs("smoke").set_index("tags.run_key")
    b = Tracker(results).runs("smoke").set_index("tags.run_key")
    assert sorted(a.index) == sorted(b.index) and len(a) == 3
    metrics = [
        c for c in a.columns if c.startswith("metrics.") and ("dice" in c or "loss" in c or "params" in c)
    ]
    assert metrics
    for key in a.index:  # a worker uses fewer threads: float sums may differ in the last digits
        np.testing.assert_allclose(
            a.loc[key, metrics].astype(float), b.loc[key, metrics].astype(float), rtol=1e-4, atol=1e-6
        )
    return b


def test_ray_tasks_give_the_local_executors_units_run_keys_and_metrics(tmp_path, tiny_cohort, local_runs):
    pytest.importorskip("ray")
    out = _cli(tmp_path / "ray", tiny_cohort, "--executor", "ray")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _same_units(local_runs, tmp_path / "ray")
    again = _cli(tmp_path / "ray", tiny_cohort, "--executor", "ray")
    assert again.returncode == 0 and again.stdout.count("skipped") == 3, again.stdout[-2000:]


def test_worker_processes_give_the_local_executors_units_run_keys_and_metrics(
    tmp_path, tiny_cohort, local_runs
):
    out = _cli(tmp_path, tiny_cohort, "--workers", "2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count(" start ") == 3 and out.stdout.count("finished") == 3, out.stdout[-3000:]
    assert "training 1 CT base(s) first" in out.stdout and "ready in" in out.stdout  # before its 2 units
    from pemma.orchestration.executors import cpu_cores

    runs = _same_units(local_runs, tmp_path)
    assert set(runs["tags.cpu_threads"]) == {str(max(1, cpu_cores() // 2))}  # the CPU shared out
    assert "where the time went" in out.stdout
    again = _cli(tmp_path, tiny_cohort, "--workers", "2")
    assert again.returncode == 0 and again.stdout.count("skipped") == 3, again.stdout[-2000:]


def test_a_ct_base_trained_before_the_units_is_the_one_a_unit_trains_itself(
    tmp_path, tiny_cohort, local_runs
):
    from pemma.files import load_state
    from pemma.orchestration.runner import Runner
    from pemma.suites import expand, load_suite

    (cfg,) = expand(load_suite("smoke"), profile="ci", methods=["pemma-lora"], data_root=str(tiny_cohort))
    info = Runner(tmp_path).train_base(cfg)  # this process's threads, as the local run had
    assert Runner(tmp_path).base_cached(cfg)
    ours = load_state(tmp_path / "bases" / info["key"] / "base.pt")
    (theirs,) = [load_state(p) for p in (local_runs / "bases").glob("unetr-*/base.pt")]
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name


def _dispatched(jobs, bases, workers=2, cores=2) -> list[str]:
    """The order `_dispatch` submits `jobs` in (every job ends at once), checking that the jobs
    running together never hold more than `cores` threads or `workers` workers."""
    import concurrent.futures

    from pemma.orchestration.executors import _dispatch

    live: dict[str, int] = {}
    order: list[str] = []

    def name(job) -> str:
        return f"base {job.base}" if job.trains_base else f"unit {job.index}"

    def submit(job):
        assert not live or (sum(live.values()) + job.threads <= cores and len(live) < workers), (live, job)
        live[name(job)] = job.threads
        order.append(name(job))
        future = concurrent.futures.Future()
        future.set_result(None)
        return future

    for job, _ in _dispatch(list(jobs), set(bases), workers, cores, submit):
        del live[name(job)]
    return order


def test_worker_jobs_wait_for_their_base_and_never_oversubscribe_the_cores():
    from pemma.orchestration.executors import _Job

    # one base on both cores: the scratch unit waits for the threads, the base's units for the base
    jobs = [_Job(0, "b", True, 2), _Job(0, "b", False, 1), _Job(1, None, False, 1), _Job(2, "b", False, 1)]
    assert _dispatched(jobs, {"b"}) == ["base b", "unit 0", "unit 1", "unit 2"]
    # three bases, two workers: the third base starts as soon as a worker is free, then the units
    # of the bases that are ready; a base that is cached already (c) holds nothing back
    jobs = [
        *(_Job(i, b, True, 1) for i, b in enumerate("xyz")),
        _Job(0, "x", False, 1),
        _Job(3, "c", False, 1),
        _Job(2, "z", False, 1),
        _Job(1, "y", False, 1),
    ]
    assert _dispatched(jobs, set("xyz")) == [
        "base x",
        "base y",
        "base z",
        "unit 0",
        "unit 3",
        "unit 2",
        "unit 1",
    ]
    # a unit that needs a pending base never starts before it, whatever its place in the queue
    jobs = [_Job(5, "late", False, 1), _Job(0, None, False, 1), _Job(5, "late", True, 1)]
    assert _dispatched(jobs, {"late"}) == ["unit 0", "base late", "unit 5"]


def test_workers_are_the_local_executors_and_at_least_one(tmp_path, tiny_cohort):
    for extra, message in (
        (("--workers", "0"), "--workers must be >= 1"),
        (("--workers", "2", "--executor", "ray"), "--executor local only"),
    ):
        out = ci_run(tmp_path, *extra, data=tiny_cohort)
        assert out.exit_code != 0 and message in out.output, out.output
        assert not (tmp_path / "mlflow.db").exists()


def test_sigterm_stops_every_worker_and_ends_their_units_killed(tmp_path, tiny_cohort):
    """SIGTERM to `run --workers 3` while two workers train two units: both runs end KILLED, none
    RUNNING, and the third worker, idle, exits without a word."""
    command = [
        *CLI,
        *ci_args(
            tmp_path,
            "--methods",
            "early-fusion,early-fusion-lora",
            "--workers",
            "3",
            "--set",
            "train.steps=100000",
            data=tiny_cohort,
        ),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # both units' runs exist and their workers are training
            time.sleep(2)
            if (tmp_path / "mlflow.db").exists():
                runs = Tracker(tmp_path).runs("smoke", status=None)
                if len(runs) == 2:
                    break
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=180)[0]
    finally:
        proc.kill()
    assert proc.returncode == 143, out[-3000:]
    assert "stopped by SIGTERM" in out and "Traceback" not in out, out[-3000:]
    runs = Tracker(tmp_path).runs("smoke", status=None)
    assert sorted(runs["status"]) == ["KILLED", "KILLED"], runs["status"]


def test_parallel_workers_start_on_different_ct_bases():
    from pemma.orchestration.runner import spread_by_base

    # main-suite order: per seed, one scratch method then three on that seed's base
    bases = [None, "b0", "b0", "b0", None, "b1", "b1", None, "b2"]
    order = spread_by_base(bases)
    assert sorted(order) == list(range(len(bases)))
    assert [bases[i] for i in order[:3]] == ["b0", "b1", "b2"]  # every base's first unit first
    assert [bases[i] for i in order[3:6]] == [None, None, None]  # then the units that wait for none
    assert [bases[i] for i in order[6:]] == ["b0", "b1", "b0"]  # then the bases' other units in turn
    # one base, two workers: the second takes a scratch unit, not the base's lock
    assert spread_by_base(["b0", "b0", None, "b0", None]) == [0, 2, 4, 1, 3]
    for base in ("b0", "b1", None):  # each base's units keep their order
        mine = [i for i in order if bases[i] == base]
        assert mine == sorted(mine)


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return Path(found).parent if found else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server in a temp folder on a free localhost port (Debian's `postgresql` package);
    as root, it runs as the `postgres` user, which PostgreSQL requires. Yields a URL prefix."""
    pytest.importorskip("psycopg")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
    root = Path(tempfile.mkdtemp(prefix="pemma-pg-"))  # pytest's folders are closed to other users
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        root.chmod(0o755)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _port()
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "pemma", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=pemma dbname=postgres", autocommit=True) as c:
            for name in ("optuna", "mlflow"):
                c.execute(f"CREATE DATABASE {name}")
        yield f"postgresql+psycopg://pemma@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True
        )


def test_an_optuna_study_on_postgresql_is_shared_by_two_worker_processes(tmp_path, tiny_cohort, postgres):
    from helpers.search import space_file

    from pemma.search import Options, load_space, open_study

    space = space_file(tmp_path, tiny_cohort, params={"adapter.rank": [1, 2, 3, 4, 5, 6, 7, 8]})
    storage = f"{postgres}/optuna"
    procs = [
        subprocess.Popen(
            [
                *CLI,
                "search",
                str(space),
                "--results",
                str(tmp_path / "results"),
                "--storage",
                storage,
                "--trials",
                "4",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    study = open_study(Options(load_space(str(space)), "space", 4, tmp_path / "results", storage))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert all("trial" in out for out in outputs)  # both processes worked on the study


@contextlib.contextmanager
def _mlflow_server(backend: str, artifacts: Path):
    port = _port()
    log = open(artifacts.parent / "mlflow-server.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            artifacts.as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert server.poll() is None, (artifacts.parent / "mlflow-server.log").read_text()[-3000:]
            time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def test_two_run_processes_write_to_one_mlflow_server_on_postgresql(tmp_path, tiny_cohort, postgres):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    with _mlflow_server(f"{postgres}/mlflow", artifacts) as url:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url}
        command = [*CLI, *ci_args(tmp_path / "results", "--methods", METHODS, data=tiny_cohort)]
        procs = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=1200)[0] for p in procs]
        for p, out in zip(procs, outputs, strict=True):
            assert p.returncode == 0, out[-3000:]
            assert "Traceback" not in out, out[-3000:]
        runs = Tracker(tmp_path / "results", uri=url).runs("smoke", status=None)
        assert sorted(runs["status"]) == ["FINISHED"] * 3
        assert runs["tags.run_key"].nunique() == 3
        assert not (tmp_path / "results" / "mlflow.db").exists()  # nothing went to a local store
        assert list(artifacts.rglob("*.csv"))  # the per-patient tables went through the server
