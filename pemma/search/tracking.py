"""MLflow for a study: one parent run, a nested run per trial, the values read from validation
metrics only."""

from __future__ import annotations

import json

import numpy as np

from pemma.search.space import Param
from pemma.search.study import Options, TrialFailed, _count


def study_run(tracker, options: Options) -> str:
    """The study's MLflow parent run (one per study; reopened by a rerun or another worker)."""
    suite = f"search-{options.study}"
    found = tracker.find_run(suite, {"search_study": options.study, "search_level": "study"})
    if found:
        tracker.client.update_run(found, status="RUNNING")
        return found
    space = options.space
    params = {
        "space": str(space.path.name),
        "method": space.method,
        "backbone": space.backbone,
        "seeds": ",".join(map(str, space.seeds)),
        "sampler": json.dumps(space.sampler),
        "pruner": json.dumps(space.pruner),
        "objectives": ", ".join(f"{o.metric} ({o.direction})" for o in space.objectives),
        **{f"space.{p.key}": _describe(p) for p in space.params},
    }
    return tracker.create_run(
        suite, f"study {options.study}", {"search_study": options.study, "search_level": "study"}, params
    )


def _describe(p: Param) -> str:
    if p.kind == "categorical":
        return f"choices {list(p.choices)}"
    return f"{p.kind} [{p.low:g}, {p.high:g}]{' log' if p.log else ''}"


def _metric_name(metric: str) -> str:
    return f"objective/{metric}"


def _end(tracker, run_id: str, trial, state: str, why: str, keys: list[str]) -> str:
    tags = {"optuna_state": state, "run_keys": ",".join(keys)}
    if why:
        tags["error" if state == "FAIL" else "pruned"] = why
    tracker.log(run_id, {}, tags)
    tracker.client.set_terminated(run_id, {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED"))
    trial.set_user_attr("run_keys", keys)
    return state


def _value(metrics: dict[str, float], metric: str, key: str) -> float:
    if metric not in metrics:
        raise TrialFailed(f"unit {key} logged no {metric!r} (a validation metric of its task?)")
    value = float(metrics[metric])
    if not np.isfinite(value):
        raise TrialFailed(f"unit {key}: {metric} is {value} (no class present in the validation split?)")
    return value


def _finished_metrics(tracker, suite: str, key: str) -> dict[str, float] | None:
    """A unit another trial already ran with the same configuration: reuse its metrics."""
    runs = tracker.runs(suite)
    if runs.empty or "tags.run_key" not in runs:
        return None
    mine = runs[runs["tags.run_key"] == key]
    if mine.empty:
        return None
    row = mine.sort_values("end_time").iloc[-1]
    return {c.removeprefix("metrics."): row[c] for c in mine if c.startswith("metrics.") and row[c] == row[c]}


def summarise(tracker, parent: str, study) -> None:
    """Counts and the best trial(s) on the study's parent run; it ends FINISHED."""
    from optuna.trial import TrialState

    metrics = {f"trials_{s.name.lower()}": float(_count(study, (s.name,))) for s in TrialState}
    tags = {}
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if done:
        if len(study.directions) == 1:
            best = study.best_trial
            metrics["best_value"] = best.value
            tags["best_trial"] = str(best.number)
            tags["best_params"] = json.dumps(best.params)
        else:
            tags["pareto_trials"] = ",".join(str(t.number) for t in study.best_trials)
    tracker.log(parent, metrics, tags)
    tracker.client.set_terminated(parent, "FINISHED")
