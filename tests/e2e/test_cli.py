"""End to end through the CLI at the ci profile: MLflow runs, skip on rerun, FAILED units, errors."""

import pytest
from helpers.cli import ci_args, ci_run
from typer.testing import CliRunner

from pemma.cli import app
from pemma.methods import METHODS
from pemma.tracking import Tracker, parse_run_key

runner = CliRunner()


@pytest.fixture(scope="module")
def smoke_run(tiny_cohort, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    out = ci_run(results, data=tiny_cohort)
    return results, out


@pytest.mark.slow
def test_ci_suite_leaves_finished_runs_with_metrics_and_tags(smoke_run):
    results, out = smoke_run
    assert out.exit_code == 0, out.output
    runs = Tracker(results).runs("smoke")
    assert sorted(runs["tags.method"]) == sorted(METHODS.names())
    assert set(runs["status"]) == {"FINISHED"}
    for _, run in runs.iterrows():
        method = METHODS.get(run["tags.method"])
        for subset in method.inputs():
            for grid in ("dice_agg", "dice_hecktor"):  # NaN: a class absent from the tiny test split
                dice = run[f"metrics.{grid}/{subset}/mean"]
                assert dice != dice or 0.0 <= dice <= 1.0
            assert run[f"metrics.infer_volumes_per_s/{subset}"] > 0
        for key in (
            "params_total",
            "params_trainable",
            "params_trainable_pct_of_reference",
            "train_samples_per_s",
            "train_peak_memory_mb",
            f"dice_agg/{method.inputs()[0]}/gtvp",
        ):
            assert f"metrics.{key}" in run and run[f"metrics.{key}"] == run[f"metrics.{key}"], key
        for tag in (
            "git_commit",
            "git_dirty",
            "torch_version",
            "monai_version",
            "peft_version",
            "device",
            "cpu_threads",
            "dtype",
            "data_fingerprint",
            "profile",
            "run_key",
        ):
            assert run[f"tags.{tag}"], tag
        assert run["tags.profile"] == "ci" and run["tags.for_reporting"] == "false"
        key = parse_run_key(run["tags.run_key"])
        assert key["method"] == run["tags.method"] and key["suite"] == "smoke"
        assert run["params.train.steps"] == "2"
    ef = runs[runs["tags.method"] == "early-fusion"].iloc[0]
    assert ef["metrics.params_trainable_pct_of_reference"] == pytest.approx(100.0)
    lora = runs[runs["tags.method"] == "pemma-lora"].iloc[0]
    assert lora["tags.adapted_modules"].count("attn.qkv") == 2
    table = (results / "smoke" / "results.md").read_text()
    assert "| pemma-lora | unetr |" in table and "Dice CT+PET" in table
    assert "ACC" not in table  # columns no run logged are left out


def test_every_unit_writes_its_per_patient_table_and_it_reproduces_the_aggregated_dice(smoke_run):
    from mlflow.tracking import MlflowClient

    from pemma.metrics.patients import COLUMNS, SCHEMA_VERSION, read_patient_table

    results, _ = smoke_run
    tracker = Tracker(results)
    for _, run in tracker.runs("smoke").iterrows():
        table = read_patient_table(results / run["tags.patients_file"])
        assert tuple(table.columns) == COLUMNS and set(table["schema_version"]) == {SCHEMA_VERSION}
        subsets = METHODS.get(run["tags.method"]).inputs()
        # patients x subsets x classes x grids
        assert len(table) == run["metrics.test_cases"] * len(subsets) * 2 * 2
        assert set(table["run_key"]) == {run["tags.run_key"]} and set(table["grid"]) == {
            "working",
            "original",
        }
        for (grid, subset, cls), rows in table.groupby(["grid", "subset", "class"]):
            name = {"working": "dice_agg", "original": "dice_hecktor"}[grid]
            logged_dice = run[f"metrics.{name}/{subset}/{cls}"]
            if rows["truth_voxels"].sum() == 0:  # absent from the split: undefined
                assert logged_dice != logged_dice
                continue
            sizes = (rows["prediction_voxels"] + rows["truth_voxels"]).sum()
            assert 2 * rows["intersection_voxels"].sum() / sizes == pytest.approx(logged_dice, abs=1e-12)
        logged = MlflowClient(tracker.uri).list_artifacts(run["run_id"], "patients")
        assert [a.path for a in logged] == [f"patients/{run['tags.run_key']}.csv"]


def test_rerun_trains_nothing(smoke_run, tiny_cohort, monkeypatch):
    from pemma.orchestration import executors

    results, _ = smoke_run
    bases = sorted(p.stat().st_mtime_ns for p in (results / "bases").rglob("base.pt"))
    pools = []
    real_pool = executors.worker_pool
    monkeypatch.setattr(executors, "worker_pool", lambda n: pools.append(n) or real_pool(n))
    out = ci_run(results, "--workers", "2", data=tiny_cohort)
    assert pools == [0], "nothing left to run: no worker process is started"
    assert out.exit_code == 0, out.output
    assert out.output.count("skipped") == len(METHODS) and "finished " not in out.output
    assert len(Tracker(results).runs("smoke")) == len(METHODS)
    assert sorted(p.stat().st_mtime_ns for p in (results / "bases").rglob("base.pt")) == bases
    dry = ci_run(results, "--dry-run", data=tiny_cohort)
    assert dry.output.count("finished ") == len(METHODS)
    changed = ci_run(results, "--dry-run", "--set", "train.lr=0.01", data=tiny_cohort)
    assert changed.output.count("to run") == len(METHODS), "an override must change the run key"


@pytest.mark.slow
def test_a_failing_unit_is_marked_failed_and_the_suite_goes_on(tiny_cohort, tmp_path):
    import torch

    other = tmp_path / "other-network.pt"  # plain weights (passes the up-front check), another network's
    torch.save({"encoder.weight": torch.zeros(2, 2)}, other)
    out = ci_run(
        tmp_path / "r",
        "--methods",
        "ct-only,early-fusion",
        "--set",
        f"pretrain.checkpoint={other}",
        data=tiny_cohort,
    )
    assert out.exit_code == 1
    tracker = Tracker(tmp_path / "r")
    failed = tracker.runs("smoke", status="FAILED")
    assert list(failed["tags.method"]) == ["ct-only"]
    assert "state_dict" in failed.iloc[0]["tags.error"]
    assert list(tracker.runs("smoke")["tags.method"]) == ["early-fusion"]  # needs no base: went on
    assert tracker.runs("smoke", status="RUNNING").empty


@pytest.mark.slow
def test_generated_cohort_and_the_same_cohort_read_back_give_identical_results(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    out = ci_run(first, "--methods", "pemma-lora")
    assert out.exit_code == 0, out.output
    written = next(first.glob("data/*"))
    assert (written / "imagesTr" / "MDA-001__PT.nii.gz").exists()
    out = ci_run(second, "--methods", "pemma-lora", data=written)
    assert out.exit_code == 0, out.output
    a, b = (Tracker(r).runs("smoke").iloc[0] for r in (first, second))
    assert a["tags.data_fingerprint"] == b["tags.data_fingerprint"]
    dice = [
        k
        for k in a.index
        if k.startswith(("metrics.dice_", "metrics.train_first_loss", "metrics.train_final"))
    ]
    assert dice and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in dice)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "pemma-lorra"], "did you mean 'pemma-lora'"),
        (["--suite", "smok"], "did you mean 'smoke'"),
        (["--set", "train.stpes=3"], "did you mean 'train.steps'"),
        (["--profile", "fast"], "unknown profile"),
        (["--data", "/nonexistent/cohort"], "no such folder"),
    ],
)
def test_bad_options_fail_clearly_without_running(args, message, tmp_path):
    out = ci_run(tmp_path, *args)
    assert out.exit_code == 2
    assert message in " ".join(out.output.split())
    assert Tracker(tmp_path).runs("smoke").empty


def test_methods_and_suites_list_and_validate():
    out = runner.invoke(app, ["methods"])
    assert out.exit_code == 0 and all(name in out.output for name in METHODS.names())
    out = runner.invoke(app, ["validate"])
    assert out.exit_code == 0 and "smoke" in out.output


def test_an_interrupted_unit_is_marked_killed_and_rerun_cleanly(tiny_cohort, tmp_path, monkeypatch):
    from pemma.orchestration.runner import Runner

    original = Runner.train_and_score

    def interrupted(self, cfg, key, monitor=None, phases=None):
        raise KeyboardInterrupt

    args = ci_args(tmp_path, "--methods", "pemma-lora", data=tiny_cohort)
    monkeypatch.setattr(Runner, "train_and_score", interrupted)
    runner.invoke(app, args)
    tracker = Tracker(tmp_path)
    assert len(tracker.runs("smoke", status="KILLED")) == 1 and tracker.runs("smoke").empty
    monkeypatch.setattr(Runner, "train_and_score", original)
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert len(tracker.runs("smoke")) == 1 and tracker.runs("smoke", status="RUNNING").empty


@pytest.mark.slow
def test_a_units_result_does_not_depend_on_the_units_run_before_it(tiny_cohort, tmp_path):
    def lora_run(methods, folder):
        out = ci_run(folder, "--methods", methods, "--set", "train.steps=4", data=tiny_cohort)
        assert out.exit_code == 0, out.output
        runs = Tracker(folder).runs("smoke")
        return runs[runs["tags.method"] == "pemma-lora"].iloc[0]

    alone = lora_run("pemma-lora", tmp_path / "alone")
    after = lora_run("late-fusion,pemma-lora", tmp_path / "after")
    for key in ("metrics.train_first_loss", "metrics.train_final_loss", "metrics.dice_agg/ctpet/gtvp"):
        assert alone[key] == after[key], key


def test_params_reports_every_method_without_training():
    out = runner.invoke(app, ["params", "--profile", "ci"])
    assert out.exit_code == 0, out.output
    assert all(name in out.output for name in METHODS.names()) and "saved MB" in out.output


def test_a_run_left_running_by_a_dead_process_is_closed_on_the_next_attempt(tiny_cohort, tmp_path):
    args = ci_args(tmp_path, "--methods", "pemma-lora", data=tiny_cohort)
    dry = runner.invoke(app, [*args, "--dry-run"])
    key = dry.output.split("to run")[1].split()[0]
    tracker = Tracker(tmp_path)
    tracker.start("smoke", key, {}, {"method": "pemma-lora"})  # as if the process had been killed here
    assert len(tracker.runs("smoke", status="RUNNING")) == 1
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert tracker.runs("smoke", status="RUNNING").empty
    assert len(tracker.runs("smoke", status="KILLED")) == 1 and len(tracker.runs("smoke")) == 1


def test_every_logged_metric_is_declared_by_a_task_and_progress_prints_plain_lines(smoke_run):
    from pemma.tasks import all_metrics

    results, out = smoke_run
    declared = all_metrics()
    runs = Tracker(results).runs("smoke")
    logged = {c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.")}
    assert logged and not [k for k in logged if not any(m.matches(k) for m in declared)]
    # Outside a terminal: one line per unit start and end, with its headline metric, and per stage.
    assert out.output.count("] start ") == len(METHODS)
    assert "finished smoke__pemma-lora__unetr" in out.output and ", Dice CT+PET " in out.output
    assert "CT pretraining: 2 steps" in out.output and "training pemma-lora: done in" in out.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            [
                "bench",
                "throughput",
                "--profile",
                "ci",
                "--methods",
                "early-fusion,pemma-lora",
                "--steps",
                "1",
            ],
            "step speed vs early-fusion",
        ),
        (
            ["bench", "merge", "--profile", "ci", "--methods", "pemma-lora", "--backbones", "unetr"],
            "merged speed-up",
        ),
        (["params", "--profile", "ci", "--backbones", "unetr"], "trainable % of early-fusion"),
    ],
)
def test_bench_commands_print_their_side_by_side_tables(args, expected):
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert expected in " ".join(out.output.split())


def test_bench_data_compares_a_cold_and_a_warm_cache(tiny_cohort, tmp_path):
    out = runner.invoke(
        app,
        [
            "bench",
            "data",
            "--cache",
            "--profile",
            "ci",
            "--steps",
            "1",
            "--data",
            str(tiny_cohort),
            "--results",
            str(tmp_path),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "epoch 2 s (warm cache)" in " ".join(out.output.split())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tmp")], "the cold cache is removed"


def test_bench_data_times_each_stage_and_the_wait_of_a_modelled_step_per_worker_count(tmp_path):
    """Issue 29: per-stage milliseconds of one crop on HECKTOR-sized phantoms, and the data-wait share
    of a modelled step for each loader worker count, before (whole entry, label scanned) and now
    (memory-mapped, label indices cached); logged like every bench; the phantoms removed."""
    from pemma.tracking import Tracker

    args = ["bench", "data", "--profile", "ci", "--step-ms", "20", "--workers", "0,1", "--batches", "4"]
    out = runner.invoke(app, [*args, "--volumes", "2", "--results", str(tmp_path)])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    for row in ("load from cache (memory-mapped)", "indices (label scan)", "host to device (per batch)"):
        assert row in text
    assert "whole, label scanned" in text and "mapped, indices cached" in text
    runs = Tracker(tmp_path).runs("bench")
    workers = runs[runs["tags.bench"] == "data-workers"].iloc[0]
    shares = {c: workers[c] for c in workers.index if c.endswith("/data wait share")}
    # 2 cache reads x 2 worker counts, and on a host without CUDA the worker's batches also received
    # by a thread, as CUDA's pin-memory thread receives them
    assert len(shares) == 5 and all(0.0 <= share < 1.0 for share in shares.values()), shares
    releases = [workers[c] for c in workers.index if c.endswith("/release ms per batch")]
    assert len(releases) == 5 and all(r >= 0 for r in releases)  # timed apart from the wait
    assert [c for c in shares if "/1/a thread" in c] == [
        "metrics.mapped_ indices cached/1/a thread _as CUDA_s pin-memory thread_/data wait share"
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tmp")], "the phantoms are removed"


def test_tasks_lists_every_registered_task_with_its_columns():
    from pemma.tasks import TASKS

    out = runner.invoke(app, ["tasks"])
    assert out.exit_code == 0, out.output
    assert all(name in out.output for name in TASKS.names()) and "Dice CT+PET ↑" in out.output
