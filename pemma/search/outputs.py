"""What a study leaves: the best trials (the Pareto set for several objectives), their values
exported as a suite, plots and tables."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pemma.config import deep_merge, parse_override
from pemma.search.space import SearchError, Space
from pemma.suites import Suite, _nested, load_suite

log = logging.getLogger(__name__)


def best_trials(study) -> list:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise SearchError(f"study {study.study_name!r} has no complete trial yet")
    return (
        [study.best_trial]
        if len(study.directions) == 1
        else sorted(study.best_trials, key=lambda t: t.number)
    )


def export_best(study, space: Space, path: Path, profile: str | None = None, seeds=(0, 1, 2)) -> Path:
    """The best configuration (or the Pareto set, as a `variant` axis) as a suite file that
    `pemma-bench run --suite FILE` runs with seeds on the test split."""
    from pemma.files import write_atomic

    suite: Suite = load_suite(space.suite)
    defaults = dict(suite.defaults)
    for text in space.set:
        defaults = deep_merge(defaults, parse_override(text))
    if profile or space.profile:
        defaults["profile"] = profile or space.profile
    best = best_trials(study)
    grid: dict[str, Any] = {"method": [space.method], "backbone": [space.backbone], "seed": list(seeds)}
    if len(best) == 1:
        for key, value in best[0].params.items():
            defaults = deep_merge(defaults, _nested(key, value))
    else:
        grid["variant"] = [dict(t.params) for t in best]

    def scored(t) -> str:
        pairs = zip(space.objectives, t.values, strict=True)
        return f"trial {t.number}: " + ", ".join(f"{o.metric} {v:.4g}" for o, v in pairs)

    values = "; ".join(scored(t) for t in best)
    doc = {
        "description": (
            f"Best of Optuna study {study.study_name!r} ({space.path.name}, objectives on the validation "
            f"split): {values}. Rerun with seeds; its test-split numbers are the ones to report."
        ),
        "defaults": defaults,
        "grid": grid,
    }
    text = yaml.safe_dump(doc, sort_keys=False)
    write_atomic(Path(path), lambda tmp: Path(tmp).write_text(text))
    return Path(path)


def plots(study, folder: Path) -> list[Path]:
    """Optimisation history, parameter importances (when 2+ trials completed) and, for several
    objectives, the Pareto front, as PNG files (Optuna's matplotlib plots)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = study.user_attrs.get("objectives") or [f"objective {i}" for i in range(len(study.directions))]
    drawn = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        jobs: list[tuple[str, Callable]] = []
        if len(study.directions) == 1:
            jobs.append(("history", lambda: ovm.plot_optimization_history(study, target_name=names[0])))
            if len(complete) >= 2 and len(study.best_trial.params) >= 1:
                jobs.append(("importances", lambda: ovm.plot_param_importances(study)))
        else:
            jobs.append(("pareto", lambda: ovm.plot_pareto_front(study, target_names=names)))
            for i, name in enumerate(names):
                jobs.append(
                    (
                        f"history-{i}",
                        lambda i=i, name=name: ovm.plot_optimization_history(
                            study, target=lambda t: t.values[i], target_name=name
                        ),
                    )
                )
        for stem, draw in jobs:
            if not complete:
                break
            try:
                ax = draw()
            except (ValueError, RuntimeError) as err:  # e.g. importances of a constant objective
                log.info("study %s: no %s plot (%s)", study.study_name, stem, err)
                continue
            figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            figure.set_size_inches(7, 4.5)
            figure.tight_layout()
            path = folder / f"{stem}.png"
            figure.savefig(path, dpi=110)
            plt.close(figure)
            drawn.append(path)
    return drawn


def trials_table(study):
    """One row per trial: number, state, params, values, run keys."""
    import pandas as pd

    names = study.user_attrs.get("objectives") or []
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"trial": t.number, "state": t.state.name}
        row.update(t.params)
        # Optuna stores a pruned trial's last intermediate value as its value: not an objective
        for i, v in enumerate(t.values or [] if t.state.name == "COMPLETE" else []):
            row[names[i] if i < len(names) else f"value {i}"] = v
        if t.state.name == "PRUNED" and t.intermediate_values:
            step = max(t.intermediate_values)
            row["pruned at"] = f"step {step}: {t.intermediate_values[step]:.4g}"
        row["run keys"] = ", ".join(t.user_attrs.get("run_keys", []))
        rows.append(row)
    return pd.DataFrame(rows)


def trials_markdown(study) -> str:
    """The trials table as GitHub Markdown (numbers to 4 significant digits)."""
    table = trials_table(study)
    if table.empty:
        return "(no trials)\n"

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if v != v else f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
