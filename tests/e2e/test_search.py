"""Optuna searches at the ci profile: studies that continue, workers that share a study, objectives
from the validation split only, pruning, failing trials, the exported best configuration."""

from __future__ import annotations

import dataclasses
import zlib

import optuna
import pytest
import yaml
from helpers.cli import ci_run, sigterm_once
from helpers.search import SPLIT, space_file
from typer.testing import CliRunner

from pemma.cli import app
from pemma.search import Options, load_space, open_study, search
from pemma.tasks.segmentation import evaluation
from pemma.tasks.segmentation import task as segmentation
from pemma.tracking import Tracker

pytestmark = pytest.mark.slow  # end-to-end runs and services: `pytest -m 'not slow'` skips them


def _states(study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


def _invoke(*args):
    return CliRunner().invoke(app, ["search", *map(str, args)])


def test_a_three_trial_search_completes_and_a_rerun_continues_it_to_five(tmp_path, tiny_cohort):
    space, results = space_file(tmp_path, tiny_cohort), tmp_path / "results"
    first = _invoke(space, "--results", results)
    assert first.exit_code == 0, first.output
    options = Options(load_space(str(space)), "space", 5, results)
    assert _states(open_study(options)) == ["COMPLETE"] * 3
    again = _invoke(space, "--results", results, "--trials", 5)
    assert again.exit_code == 0, again.output
    study = open_study(options)
    assert _states(study) == ["COMPLETE"] * 5
    assert "this run: 2 complete" in again.output.replace("\n", " ")
    # MLflow: one study run (finished), a nested run per trial, each trial's unit nested under it
    runs = Tracker(results).runs("search-space", status=None)
    studies = runs[runs["tags.search_level"] == "study"]
    trials = runs[runs["tags.search_level"] == "trial"]
    assert len(studies) == 1 and studies["status"].tolist() == ["FINISHED"]
    assert len(trials) == 5 and set(trials["tags.optuna_state"]) == {"COMPLETE"}
    assert set(trials["tags.mlflow.parentRunId"]) == set(studies["run_id"])
    units = runs[runs["tags.run_key"].notna()]
    assert set(units["tags.mlflow.parentRunId"]) <= set(trials["run_id"])
    for trial in study.trials:  # the trial's value is its unit's logged validation Dice
        unit = units[units["tags.run_key"] == trial.user_attrs["run_keys"][0]].iloc[0]
        assert trial.value == pytest.approx(unit["metrics.val_dice/ctpet/mean"])
        assert "metrics.dice_hecktor/ctpet/mean" in unit  # test metrics are logged, for the record
    assert (results / "search" / "space" / "trials.md").read_text().count("COMPLETE") == 5


def _ids_score(volumes) -> float:
    """A value that only these patients give: the objective must name the validation patients'."""
    ids = ",".join(sorted(str(volumes[i]["patient_id"]) for i in range(len(volumes))))
    return (zlib.crc32(ids.encode()) % 1000) / 1000.0


def test_the_objective_comes_from_the_validation_split_never_the_test_split(
    tmp_path, tiny_cohort, monkeypatch
):
    real = evaluation.evaluate  # the task imports it where it scores: patched in its module

    def marked(model, volumes, subsets, *args, **kwargs):
        out = real(model, volumes, subsets, *args, **kwargs)
        score = _ids_score(volumes)
        marked.scores.append(score)
        return {
            s: dataclasses.replace(r, aggregated={"gtvp": score, "gtvn": score, "mean": score})
            for s, r in out.items()
        }

    marked.scores = []
    monkeypatch.setattr(evaluation, "evaluate", marked)
    space = space_file(tmp_path, tiny_cohort, trials=1)
    options = Options(load_space(str(space)), "leak", 1, tmp_path / "results")
    search(options)
    study = open_study(options)
    (trial,) = study.trials
    runs = Tracker(options.results).runs("search-leak")
    unit = runs[runs["tags.run_key"].notna()].iloc[0]
    from pemma.data.store import DataStore
    from pemma.search import units

    cfg = units(options.space, trial.params, study="leak")[0]
    loaded = DataStore(options.results).load(cfg)
    val = _ids_score(loaded.data.volumes(loaded.plan.adapt["val"], segmentation.KEYS))
    test = _ids_score(loaded.data.volumes(loaded.plan.adapt["test"], segmentation.KEYS))
    assert val != test
    assert trial.value == pytest.approx(val)
    assert unit["metrics.dice_agg/ctpet/mean"] == pytest.approx(test)  # the test split, logged only


def test_two_workers_share_a_study_and_end_with_exactly_the_trials_asked_for(tmp_path, tiny_cohort):
    space, results = (
        space_file(tmp_path, tiny_cohort, params={"adapter.rank": [1, 2, 3, 4, 5, 6, 7, 8]}),
        tmp_path / "r",
    )
    result = _invoke(space, "--results", results, "--trials", 4, "--workers", 2)
    assert result.exit_code == 0, result.output
    study = open_study(Options(load_space(str(space)), "space", 4, results))
    assert _states(study) == ["COMPLETE"] * 4
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    workers = Tracker(results).runs("search-space")
    workers = workers[workers["tags.search_level"] == "trial"]
    assert len(workers) == 4 and workers["tags.optuna_trial"].nunique() == 4
    assert workers["tags.worker"].nunique() == 2  # both processes ran trials


def test_a_trial_below_the_median_is_pruned_and_a_crashing_trial_fails_while_the_study_goes_on(
    tmp_path, tiny_cohort, monkeypatch
):
    calls = {"n": 0}
    plan = {0: 0.9, 1: 0.1, 2: "crash", 3: 0.95}  # trial -> validation Dice it reports (median: 0.9)

    def validate(self, unit, model, subsets):
        trial = calls["trial"]
        if plan[trial] == "crash":
            raise RuntimeError("validation exploded")
        return {"val_dice/ctpet/mean": plan[trial]}

    real_suggest = optuna.trial.Trial.suggest_int

    def suggest_int(self, name, *args, **kwargs):
        calls["trial"] = self.number
        return real_suggest(self, name, *args, **kwargs)

    monkeypatch.setattr(segmentation.Segmentation, "validate", validate)
    monkeypatch.setattr(optuna.trial.Trial, "suggest_int", suggest_int)
    space = space_file(
        tmp_path,
        tiny_cohort,
        trials=3,
        validate_every=1,
        set=[SPLIT, f"data.root={tiny_cohort}", "train.steps=3"],
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    )
    options = Options(load_space(str(space)), "prune", 3, tmp_path / "results")
    counts = search(options)
    study = open_study(options)
    assert _states(study) == ["COMPLETE", "PRUNED", "FAIL", "COMPLETE"]
    assert counts["FAIL"] == 1 and counts["PRUNED"] == 1
    runs = Tracker(options.results).runs("search-prune", status=None)
    units = runs[runs["tags.run_key"].notna()].sort_values("tags.optuna_trial", na_position="first")
    trials = runs[runs["tags.search_level"] == "trial"].set_index("tags.optuna_trial")
    assert (
        trials.loc["1", "tags.optuna_state"] == "PRUNED"
        and "pruned by Optuna" in trials.loc["1", "tags.pruned"]
    )
    assert (
        trials.loc["2", "tags.optuna_state"] == "FAIL"
        and "validation exploded" in trials.loc["2", "tags.error"]
    )
    pruned_unit = units[units["tags.mlflow.parentRunId"] == trials.loc["1", "run_id"]]
    assert pruned_unit["status"].tolist() == ["KILLED"]
    assert not (runs["status"] == "RUNNING").any()


def test_the_exported_best_configuration_runs_as_a_suite(tmp_path, tiny_cohort):
    space, results = space_file(tmp_path, tiny_cohort, trials=2), tmp_path / "results"
    best = tmp_path / "best.yaml"
    result = _invoke(space, "--results", results, "--export-best", best)
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(best.read_text())
    study = open_study(Options(load_space(str(space)), "space", 2, results))
    assert doc["defaults"]["adapter"]["rank"] == study.best_trial.params["adapter.rank"]
    ran = ci_run(results, "--seeds", "0", suite=str(best))
    assert ran.exit_code == 0, ran.output
    assert len(Tracker(results).runs("best")) == 1


def test_a_multi_objective_study_yields_a_pareto_set_exported_as_variants(tmp_path, tiny_cohort):
    objectives = [
        {"metric": "val_dice/ctpet/mean", "direction": "maximize"},
        {"metric": "params_trainable", "direction": "minimize"},
    ]
    space = space_file(
        tmp_path, tiny_cohort, objectives=objectives, params={"adapter.rank": [1, 8]}, trials=2
    )
    best = tmp_path / "pareto.yaml"
    result = _invoke(space, "--results", tmp_path / "results", "--export-best", best)
    assert result.exit_code == 0, result.output
    study = open_study(Options(load_space(str(space)), "space", 2, tmp_path / "results"))
    params = {t.params["adapter.rank"]: t.values for t in study.trials}
    if len(params) == 2:  # rank 1 trains fewer parameters than rank 8
        assert params[1][1] < params[8][1]
    front = yaml.safe_load(best.read_text())["grid"]
    assert len(study.best_trials) == len(front.get("variant", [None]))
    assert (tmp_path / "results" / "search" / "space" / "pareto.png").exists()


@pytest.mark.parametrize(
    ("changes", "args", "message"),
    [
        ({"objectives": [{"metric": "dice_hecktor/ctpet/mean"}]}, [], "not a validation metric"),
        (
            {
                "objectives": [
                    {"metric": "val_dice/ctpet/mean"},
                    {"metric": "params_trainable", "direction": "minimize"},
                ],
                "pruner": "median",
                "validate_every": 1,
            },
            [],
            "cannot prune multi-objective",
        ),
        ({"params": {"adapter.rnak": [1, 2]}}, [], "adapter.rank"),
        ({"sampler": "tpee"}, [], "did you mean 'tpe'"),
        ({"objectives": [{"metric": "val_dice/ctpt/mean"}]}, [], "logs no metric 'val_dice/ctpt/mean'"),
        ({"suite": "prognosis"}, [], "has no validation metrics"),
        ({}, ["--workers", "2", "--storage", "sqlite:///optuna.db"], "SQLite cannot be shared"),
        ({"set": ["data.split=[0.8,0.0,0.2]"]}, [], "validation split is empty"),
    ],
)
def test_bad_search_input_exits_2_naming_the_problem(tmp_path, tiny_cohort, changes, args, message):
    changes.setdefault("set", [SPLIT])
    changes["set"] = [*changes["set"], f"data.root={tiny_cohort}"]
    space = space_file(tmp_path, tiny_cohort, **changes)
    result = _invoke(space, "--results", tmp_path / "results", *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output


def test_sigterm_during_a_trial_leaves_nothing_running_and_a_rerun_continues(tmp_path, tiny_cohort):
    import sys

    sets = [SPLIT, f"data.root={tiny_cohort}", "train.steps=100000"]
    space, results = space_file(tmp_path, tiny_cohort, set=sets, trials=1), tmp_path / "results"
    command = [
        sys.executable,
        "-c",
        "from pemma.cli import app; app()",
        "search",
        str(space),
        "--results",
        str(results),
    ]
    code, out = sigterm_once(command, "training pemma-lora")  # SIGTERM once the trial's unit trains
    assert code == 143, out[-3000:]
    assert "Traceback" not in out
    runs = Tracker(results).runs("search-space", status=None)
    assert "RUNNING" not in set(runs["status"]), runs[["status", "tags.search_level"]]
    options = Options(load_space(str(space)), "space", 1, results)
    assert _states(open_study(options)) == ["FAIL"]
