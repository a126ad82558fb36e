"""One results folder shared by several processes; orphaned runs closed; SIGTERM ends a unit KILLED."""

from __future__ import annotations

import subprocess
import sys
import time
from fractions import Fraction

import pytest
import torch
from helpers.cli import ci_args, sigterm_once

from pemma.locks import Lock
from pemma.orchestration.runner import Runner
from pemma.tracking import Tracker

CLI = [sys.executable, "-c", "from pemma.cli import app; app()"]


def _together(results, methods: str) -> list[str]:
    """Two `pemma-bench run` processes started at once on one results folder; their outputs."""
    command = [*CLI, *ci_args(results, "--methods", methods)]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
    return outputs


def _statuses(results) -> dict[str, list[str]]:
    runs = Tracker(results).runs("smoke", status=None)
    return runs.groupby("tags.run_key")["status"].apply(sorted).to_dict()


@pytest.mark.slow
def test_two_processes_on_a_fresh_and_on_a_used_results_folder_train_every_unit_once(tmp_path):
    results = tmp_path / "results"  # fresh: both write the synthetic cohort, the store, the CT base
    outputs = _together(results, "early-fusion,pemma-lora,ct-only")
    statuses = _statuses(results)
    assert len(statuses) == 3 and all(s == ["FINISHED"] for s in statuses.values()), statuses
    outputs = _together(results, "early-fusion,pemma-lora,ct-only,pemma-dora")  # used: one unit to do
    statuses = _statuses(results)
    assert len(statuses) == 4 and all(s == ["FINISHED"] for s in statuses.values()), statuses
    assert sum("finished" in out and "pemma-dora" in out for out in outputs) >= 1


def test_a_running_run_whose_owner_is_gone_is_closed_whatever_its_key(tmp_path):
    tracker = Tracker(tmp_path)
    orphan = tracker.start("smoke", "smoke__x__unetr__s0__00000000", {}, {})
    alive = tracker.start("smoke", "smoke__y__unetr__s0__00000000", {}, {})
    holder = Lock(tmp_path, "smoke__y__unetr__s0__00000000")  # a live owner holds this key's lock
    assert holder.acquire(block=False)
    try:
        Runner(tmp_path, tracker=tracker).close_orphans("smoke")
    finally:
        holder.release()
    assert tracker.client.get_run(orphan).info.status == "KILLED"
    assert tracker.client.get_run(alive).info.status == "RUNNING"


@pytest.mark.slow
def test_sigterm_ends_the_running_unit_killed_with_exit_code_143(tmp_path, tiny_cohort):
    command = [
        *CLI,
        *ci_args(tmp_path, "--methods", "early-fusion", "--set", "train.steps=100000", data=tiny_cohort),
    ]
    code, out = sigterm_once(command, "training early-fusion")
    assert code == 143, out[-3000:]
    assert "stopped by SIGTERM" in out and "Traceback" not in out
    runs = Tracker(tmp_path).runs("smoke", status=None)
    assert list(runs["status"]) == ["KILLED"]


def _invoke(*args, env=None):
    from typer.testing import CliRunner

    from pemma.cli import app

    return CliRunner().invoke(app, list(args), env=env)


def test_user_and_environment_errors_exit_2_naming_the_culprit(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  method: [pemma-lora\n")
    cases = [
        (("run", "--suite", str(bad), "--results", str(tmp_path / "r")), "bad.yaml: line"),
        (("run", "--set", "train.steps=[1", "--results", str(tmp_path / "r"), "--dry-run"), "train.steps=[1"),
        (("run", "--seeds", "abc", "--results", str(tmp_path / "r")), "--seeds 'abc'"),
        (
            ("report", "--suite", "nosuch", "--results", str(tmp_path / "r")),
            "--suite 'nosuch': no such suite",
        ),
        # the culprit is where the value came from, not the suite file
        (
            ("run", "--set", "adapter.rank=0", "--results", str(tmp_path / "r"), "--dry-run"),
            "--set adapter.rank=0: adapter.rank: must be >= 1",
        ),
        (
            ("run", "--profile", "fast", "--results", str(tmp_path / "r"), "--dry-run"),
            "--profile fast: unknown profile 'fast'",
        ),
        # an unset shell variable must not launch the whole suite
        (("run", "--methods", "", "--results", str(tmp_path / "r"), "--dry-run"), "--methods: empty"),
        (("run", "--seeds", " ,", "--results", str(tmp_path / "r"), "--dry-run"), "--seeds: empty"),
        # suggestions come from the names the message lists, never an alias it does not show
        (
            ("run", "--methods", "ef-lorra", "--results", str(tmp_path / "r"), "--dry-run"),
            "did you mean 'early-fusion-lora'",
        ),
    ]
    code = tmp_path / "code.pt"
    torch.save({"weights": torch.zeros(2), "payload": Fraction(1, 3)}, code)  # loading would run code
    cases.append(
        (
            ("run", "--set", f"pretrain.checkpoint={code}", "--results", str(tmp_path / "r"), "--dry-run"),
            f"pretrain.checkpoint {code}: not a plain weights file",
        )
    )
    plan = tmp_path / "plan.yaml"
    plan.write_text("title: t\nruns:\n  - {suite: mian, methods: [early-fusion]}\n")
    cases.append(
        (("claims", str(plan), "--results", str(tmp_path / "r")), "unknown suite 'mian'; did you mean 'main'")
    )
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases.append((("run", "--results", str(a_file), "--dry-run"), "is a file, not a folder"))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "mlflow.db").write_bytes(bytes(range(256)) * 20)
    cases.append(
        (
            ("run", "--results", str(corrupt), "--dry-run"),
            "mlflow.db is damaged (SQLite: file is not a database)",
        )
    )
    damaged = tmp_path / "damaged"
    Tracker(damaged)  # a fresh store, then its b-tree pages overwritten (a disk error, a bad copy)
    store = bytearray((damaged / "mlflow.db").read_bytes())
    page = int.from_bytes(store[16:18], "big")
    for n in range(3, len(store) // page, 5):
        store[n * page : n * page + 64] = bytes([0xAB]) * 64
    (damaged / "mlflow.db").write_bytes(bytes(store))
    for command in (("report", "--suite", "smoke"), ("claims",), ("run", "--dry-run")):
        cases.append(((*command, "--results", str(damaged)), f"{damaged / 'mlflow.db'} is damaged"))
    for args, message in cases:
        out = _invoke(*args)
        assert out.exit_code == 2, (args, out.output)
        assert "weights_only=False" not in out.output, "no advice to turn the safety off"
        assert message in " ".join(out.output.split()), (args, out.output)
        assert out.exception is None or isinstance(out.exception, SystemExit), (args, out.exception)


def test_an_unreachable_tracking_server_fails_within_seconds_naming_it(tmp_path):
    t0 = time.perf_counter()
    out = _invoke(
        "run", "--results", str(tmp_path), "--dry-run", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    )
    assert out.exit_code == 2 and "http://127.0.0.1:9" in out.output
    assert time.perf_counter() - t0 < 60


@pytest.mark.slow
def test_version_and_an_unexpected_error_without_traceback_unless_debug(tmp_path):
    from importlib.metadata import version

    out = subprocess.run([*CLI, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and version("pemma") in out.stdout
    breaking = (
        "import pemma.methods as m; "
        "m.METHODS.items = lambda: (_ for _ in ()).throw(OSError('disk on fire')); "
        "from pemma.cli import app; app()"
    )
    out = subprocess.run([sys.executable, "-c", breaking, "methods"], capture_output=True, text=True)
    assert (
        out.returncode == 1
        and "OSError: disk on fire" in out.stdout
        and "Traceback" not in out.stdout + out.stderr
    )
    out = subprocess.run(
        [sys.executable, "-c", breaking, "--debug", "methods"], capture_output=True, text=True
    )
    assert out.returncode == 1 and "Traceback" in out.stderr


def _flip(path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i : i + 64] = bytes(b ^ 0xFF for b in data[i : i + 64])
    path.write_bytes(bytes(data))


def test_cache_entries_are_verified_rebuilt_when_damaged_and_survive_a_moved_folder(
    tiny_cohort, tmp_path, caplog
):
    import shutil

    import torch

    from pemma.config import DataConfig
    from pemma.data.datasets import CohortData
    from pemma.data.hecktor import read_cohort

    cohort = read_cohort(tiny_cohort)
    case = [c for c in cohort.cases if c.pet is not None][:1]
    data = CohortData(DataConfig(), cohort.fingerprint(), tmp_path / "a" / "cache")
    first = data.volumes(case, ("ct", "pet", "label"))[0]["ct"]
    (entry,) = (tmp_path / "a" / "cache").rglob("*.pt")
    assert entry.with_name(entry.name + ".sha256").is_file()
    for damage in (_flip, lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])):
        damage(entry)
        caplog.clear()
        again = data.volumes(case, ("ct", "pet", "label"))[0]["ct"]
        assert "rebuilding this cache entry" in caplog.text and str(entry) in caplog.text
        assert torch.equal(torch.as_tensor(again), torch.as_tensor(first))
    shutil.move(tmp_path / "a", tmp_path / "b")  # a moved (or copied) results folder keeps its cache
    moved = CohortData(DataConfig(), cohort.fingerprint(), tmp_path / "b" / "cache")
    stamp = next((tmp_path / "b" / "cache").rglob("*.pt")).stat().st_mtime_ns
    caplog.clear()
    moved.volumes(case, ("ct", "pet", "label"))[0]
    assert len(list((tmp_path / "b" / "cache").rglob("*.pt"))) == 1 and "rebuilding" not in caplog.text
    assert next((tmp_path / "b" / "cache").rglob("*.pt")).stat().st_mtime_ns == stamp


def test_a_cache_entry_is_hashed_once_per_process_until_it_changes(tiny_cohort, tmp_path, monkeypatch):
    from pemma.config import DataConfig
    from pemma.data import datasets
    from pemma.data.hecktor import read_cohort
    from pemma.files import verify

    cohort = read_cohort(tiny_cohort)
    case = [c for c in cohort.cases if c.pet is not None][:1]
    data = datasets.CohortData(DataConfig(), cohort.fingerprint(), tmp_path / "cache")
    data.volumes(case, ("ct", "pet", "label"))[0]  # written (and its digest recorded) here
    hashed = []
    monkeypatch.setattr(datasets, "verify", lambda path: hashed.append(path) or verify(path))
    for _ in range(3):
        data.volumes(case, ("ct", "pet", "label"))[0]
    assert len(hashed) == 1  # read three times, hashed once
    (entry,) = (tmp_path / "cache").rglob("*.pt")
    _flip(entry)  # changed on disk: hashed again, found damaged, rebuilt
    data.volumes(case, ("ct", "pet", "label"))[0]
    assert len(hashed) == 2


@pytest.mark.slow
def test_a_damaged_state_is_named_and_a_damaged_ct_base_is_trained_again(tiny_cohort, tmp_path, caplog):
    import pytest
    import torch
    from helpers.cli import ci_run

    from pemma.files import CorruptFile, load_state, save_state

    save_state({"w": torch.arange(100000.0)}, tmp_path / "s.pt")
    _flip(tmp_path / "s.pt", 0.7)
    with pytest.raises(CorruptFile, match="s.pt: its contents differ"):
        load_state(tmp_path / "s.pt")
    results = tmp_path / "r"
    assert ci_run(results, "--methods", "ct-only", data=tiny_cohort).exit_code == 0
    (base,) = (results / "bases").rglob("base.pt")
    _flip(base)
    caplog.clear()
    out = ci_run(results, "--methods", "pemma-lora", data=tiny_cohort)
    assert out.exit_code == 0, out.output
    assert "the cached CT base is broken" in caplog.text and str(base) in caplog.text
    load_state(base)  # trained again, verified
    (base.parent / "base.json").write_text("{not json")
    caplog.clear()
    out = ci_run(results, "--methods", "pemma-dora", data=tiny_cohort)
    assert out.exit_code == 0 and "the cached CT base is broken" in caplog.text


def test_config_values_are_refused_up_front_by_their_own_name(tmp_path):
    cases = {
        "pretrain.batch_size=0": "pretrain.batch_size: must be >= 1",
        "train.lr=.nan": "train.lr: must be finite",
        "pretrain.lr=.inf": "pretrain.lr: must be finite",
        "train.warmup_steps=-1": "train.warmup_steps: must be >= 0",
        "train.modality_warmup_steps=-5": "train.modality_warmup_steps: must be >= 0",
        "data.split_seed=-1": "data.split_seed: must be >= 0",
    }
    for override, message in cases.items():
        out = _invoke("run", "--set", override, "--results", str(tmp_path), "--dry-run")
        assert out.exit_code == 2 and message in " ".join(out.output.split()), (override, out.output)
    out = _invoke("run", "--seeds", "-1", "--results", str(tmp_path), "--dry-run")
    assert out.exit_code == 2 and "seed: must be >= 0" in out.output


def _copy(tiny_cohort, tmp_path, name):
    import shutil

    return shutil.copytree(tiny_cohort, tmp_path / name)


def test_nothing_in_a_cohort_is_accepted_silently(tiny_cohort, tmp_path):
    import pandas as pd

    from pemma.data.hecktor import CLINICAL_CSV, ENDPOINT_CSV

    misnamed = _copy(tiny_cohort, tmp_path, "misnamed")
    pet = sorted((misnamed / "imagesTr").glob("*__PT.nii.gz"))[0]
    pet.rename(pet.with_name(pet.name.replace("__PT", "__PET")))
    out = _invoke("data", "check", str(misnamed))
    assert out.exit_code == 0 and "match no <ID>__CT / <ID>__PT name" in " ".join(out.output.split())
    assert pet.name.replace("__PT", "__PET") in " ".join(out.output.split())

    def edited(name, csv, column, row, value):
        root = _copy(tiny_cohort, tmp_path, name)
        table = pd.read_csv(root / csv)
        table[column] = table[column].astype(object)
        table.loc[row, column] = value
        table.to_csv(root / csv, index=False)
        return root, table.loc[row, "PatientID"]

    for name, csv, column, value, message in (
        ("text", CLINICAL_CSV, "Weight", "heavy", "Weight = 'heavy' is not a number"),
        ("age", CLINICAL_CSV, "Age", 400, "Age = 400 is outside its plausible range"),
        ("hpv", CLINICAL_CSV, "HPV status (0=-, 1=+)", 7, "is outside its plausible range [0, 1]"),
        ("relapse", ENDPOINT_CSV, "Relapse", "yes", "Relapse must be 0 or 1; patient(s)"),
    ):
        root, patient = edited(name, csv, column, 7, value)
        out = _invoke("data", "check", str(root))
        text = " ".join(out.output.split())
        assert out.exit_code == 2 and message in text and patient in text, (name, text)
        if name == "relapse":
            assert text.split("patient(s)")[1].split(",")[0].strip() == patient, "the culprit, not row 0"


def test_data_check_is_as_strict_as_run(tiny_cohort, tmp_path):
    """Issue 31, item 8: a centre of the plan with one usable patient, an all-zero PET, and IDs that
    differ only in case are refused by `data check` (exit 2, naming them), as `run` refuses them."""
    import nibabel as nib
    import numpy as np

    lonely = _copy(tiny_cohort, tmp_path, "lonely")
    labels = sorted((lonely / "labelsTr").glob("CHUS-*.nii.gz"))
    for path in labels[1:]:
        path.unlink()
    out = _invoke("data", "check", str(lonely))
    assert out.exit_code == 2 and "centre CHUS: 1 usable patient(s)" in " ".join(out.output.split()), (
        out.output
    )

    dark = _copy(tiny_cohort, tmp_path, "dark")
    pet = sorted((dark / "imagesTr").glob("*__PT.nii.gz"))[3]
    image = nib.load(pet)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, dtype=np.float32), image.affine), pet)
    out = _invoke("data", "check", str(dark))
    text = " ".join(out.output.split())
    assert out.exit_code == 2 and pet.name in text and "every voxel is 0" in text, text

    twice = _copy(tiny_cohort, tmp_path, "twice")
    ct = sorted((twice / "imagesTr").glob("MDA-*__CT.nii.gz"))[0]
    patient = ct.name.split("__")[0]
    for path in (twice / "imagesTr").glob(f"{patient}__*"):
        path.rename(path.with_name(path.name.replace(patient, patient.lower())))
    for path in (ct, ct.with_name(f"{patient}__PT.nii.gz")):  # the same patient again, upper case
        (twice / "imagesTr" / path.name).write_bytes(
            (twice / "imagesTr" / path.name.replace(patient, patient.lower())).read_bytes()
        )
    for command in (
        ["data", "check", str(twice)],
        ["run", "--profile", "ci", "--data", str(twice), "--dry-run", "--results", str(tmp_path / "r")],
    ):
        out = _invoke(*command)
        text = " ".join(out.output.split())
        assert out.exit_code == 2 and "differ only in case" in text and patient.lower() in text, (
            command,
            text,
        )


def test_a_broken_link_or_a_folder_in_imagesTr_stops_run_naming_it(tiny_cohort, tmp_path):
    for name, make in (
        ("link", lambda p: p.symlink_to(tmp_path / "nowhere.nii.gz")),
        ("folder", lambda p: p.mkdir()),
    ):
        root = _copy(tiny_cohort, tmp_path, name)
        bad = root / "imagesTr" / "CHUM-999__CT.nii.gz"
        make(bad)
        out = _invoke(
            "run", "--profile", "ci", "--data", str(root), "--results", str(tmp_path / "r"), "--dry-run"
        )
        assert out.exit_code == 2 and "CHUM-999__CT.nii.gz:notareadablefile" in "".join(out.output.split())


def test_one_spelling_per_option_and_defaults_said():
    bench = " ".join(_invoke("bench", "throughput", "--help").output.split())
    assert "--backbones" in bench and "--methods" in bench
    run = " ".join(_invoke("run", "--help").output.split())
    assert "default: the suite's own" in run and "--dry-run" in run and "--no-dry-run" not in run
    check = " ".join(_invoke("data", "check", "--help").output.split())
    assert "A cohort folder: HECKTOR 2022 layout" in check


def _tmpfs(folder, megabytes: int) -> bool:
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)], capture_output=True
    )
    return done.returncode == 0


def test_a_full_disk_is_one_line_and_exit_2_and_a_rerun_with_space_finishes(tiny_cohort, tmp_path):
    """Issue 31, item 6: the results folder on an 8 MB tmpfs fills while the unit saves what it
    trained: one line naming the file, exit 2, no traceback, the unit FAILED (or, where the store
    itself is full, closed at the next start); with room again, the rerun finishes it."""
    import subprocess

    small = tmp_path / "small"
    if not _tmpfs(small, 8):
        pytest.skip("cannot mount a tmpfs here (needs root: CI runs as root)")
    try:
        args = ["--methods", "early-fusion", "--seeds", "0"]
        out = _invoke(*ci_args(small / "r", *args, data=tiny_cohort))
        text = " ".join(out.output.split())
        assert out.exit_code == 2 and "no space left on device while writing" in text, text[-1500:]
        assert "Traceback" not in out.output and str(small / "r") in text
        status = Tracker(small / "r").runs("smoke", status=None)["status"].tolist()
        assert status in (["FAILED"], ["RUNNING"]), status
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        again = _invoke(*ci_args(small / "r", *args, data=tiny_cohort))
        assert again.exit_code == 0, again.output
        assert "FINISHED" in Tracker(small / "r").runs("smoke", status=None)["status"].tolist()
    finally:
        # lazily: the store this process opened may still hold a file there
        subprocess.run(["umount", "--lazy", str(small)], capture_output=True)
