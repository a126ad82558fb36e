"""Optuna studies over a suite's units: a search space YAML, a validation-split objective, storage that
several processes (or machines) share, one MLflow run per study with a nested run per trial.

A trial is a set of units (one per seed) that the runner trains like any other, with a monitor that
hands it validation metrics on the way (for pruning) and at the end (the objective). The sampler
never sees a test metric: the objectives may name only validation metrics (`val_...`) and parameter
counts, and the trial's value is read from those alone.

space (the YAML), study (storage, sampler, pruner), worker (trials through the runner), tracking
(MLflow parent and nested runs), outputs (best trials, export, plots, tables).
"""

from pemma.search.outputs import best_trials, export_best, plots, trials_markdown, trials_table
from pemma.search.space import (
    DIRECTIONS,
    NAME,
    PRUNERS,
    SAMPLERS,
    SEARCH_FOLDER,
    SPACE_KEYS,
    Objective,
    Param,
    SearchError,
    Space,
    check_space,
    find_space,
    load_space,
    units,
    with_options,
)
from pemma.search.study import ACTIVE, ALL, Options, TrialFailed, open_study, storage_for
from pemma.search.tracking import study_run, summarise
from pemma.search.worker import run_trial, search, work

__all__ = [
    "ACTIVE",
    "ALL",
    "DIRECTIONS",
    "NAME",
    "Objective",
    "Options",
    "PRUNERS",
    "Param",
    "SAMPLERS",
    "SEARCH_FOLDER",
    "SPACE_KEYS",
    "SearchError",
    "Space",
    "TrialFailed",
    "best_trials",
    "check_space",
    "export_best",
    "find_space",
    "load_space",
    "open_study",
    "plots",
    "run_trial",
    "search",
    "storage_for",
    "study_run",
    "summarise",
    "trials_markdown",
    "trials_table",
    "units",
    "with_options",
    "work",
]
