"""`pemma-bench search`: an Optuna study over a search space, on the validation split."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.logging import RichHandler

from pemma.cli.common import (
    AddressOpt,
    ExecutorOpt,
    ResultsOpt,
    SetOpt,
    _fail,
    _print_frame,
    _results,
    _tracker,
    app,
    console,
    stoppable,
)
from pemma.cli.run import LineReporter


@app.command()
def search(
    space: Annotated[
        str,
        typer.Argument(help="A search space: a shipped name (rank, pareto) or a YAML file."),
    ] = "rank",
    method: Annotated[str | None, typer.Option(help="Method to search (default: the space's).")] = None,
    backbone: Annotated[str | None, typer.Option(help="Backbone (default: the space's).")] = None,
    trials: Annotated[
        int | None,
        typer.Option(
            help="Trials the study should hold when done (a rerun continues it); default: the space's."
        ),
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: the space's name).")] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage: an RDB URL (postgresql://...) or a journal file; default: "
            "RESULTS/search/studies.journal (safe for several local workers).",
            envvar="PEMMA_SEARCH_STORAGE",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes (or Ray tasks) sharing the study.")] = 1,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    set_: SetOpt = None,
    profile: Annotated[str | None, typer.Option(help="Profile (default: the space's suite's).")] = None,
    results: ResultsOpt = Path("results"),
    export_best: Annotated[
        Path | None,
        typer.Option(help="Write the best configuration (or the Pareto set) as a suite file for `run`."),
    ] = None,
) -> None:
    """An Optuna study over a search space; objectives on the validation split, never the test split."""
    logging.basicConfig(
        level=logging.WARNING, handlers=[RichHandler(console=console, show_path=False)], format="%(message)s"
    )
    from pemma.config import ConfigError
    from pemma.data.hecktor import CohortError
    from pemma.orchestration.executors import check_executor
    from pemma.registry import RegistryError
    from pemma.search import Options, check_space, load_space, open_study, with_options
    from pemma.search import search as run_search

    results = _results(results)
    try:
        spec = with_options(load_space(space), method=method, backbone=backbone, overrides=tuple(set_ or ()))
        cfgs = check_space(spec, profile)
        name = study or spec.name
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or "__" in name:
            raise ConfigError(f"--study {name!r}: letters, digits, '.', '-' and single '_' only")
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        options = Options(
            spec,
            name,
            trials or spec.trials,
            results,
            storage,
            profile,
            workers=workers,
            executor=check_executor(executor),
            address=address,
        )
        open_study(options)  # a bad storage or a study of other directions fails before any training
        _tracker(results)
        from pemma.data.splits import require_validation
        from pemma.data.store import DataStore

        loaded = DataStore(results).load(cfgs[0])  # the data, and its validation split, before training
        require_validation(loaded.plan.adapt["val"], cfgs[0].data.adapt_centre, cfgs[0].data.split)
    except (ConfigError, RegistryError, CohortError, ValueError) as err:
        raise _fail(str(err)) from err
    console.print(
        f"study [bold]{name}[/] ({spec.path.name}): {spec.method} on {spec.backbone}, "
        f"{options.trials} trials, {workers} worker(s), profile {cfgs[0].profile}, objectives "
        + ", ".join(f"{o.metric} ({o.direction})" for o in spec.objectives)
        + " (validation split)"
    )
    with stoppable("the running trial's unit is KILLED; rerun to continue the study"):
        try:
            counts = run_search(options, LineReporter(0))
        except ConfigError as err:
            raise _fail(str(err)) from err
    _summarise_study(options, counts, export_best)


def _summarise_study(options, counts: dict[str, int], export_best: Path | None) -> None:
    from pemma.search import SearchError, best_trials, open_study, plots, trials_markdown, trials_table
    from pemma.search import export_best as export

    study = open_study(options)
    table = trials_table(study)
    folder = options.results / "search" / options.study
    folder.mkdir(parents=True, exist_ok=True)
    if not table.empty:
        _print_frame(table, f"study {options.study}", ".4g")
        (folder / "trials.md").write_text(trials_markdown(study))
    console.print(
        "this run: " + ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n)
        or "this run: no trial (the study already holds enough)"
    )
    try:
        for trial in best_trials(study):
            console.print(f"best: trial {trial.number} {trial.params} -> {trial.values}")
    except SearchError as err:
        console.print(str(err))
        return
    for path in plots(study, folder):
        console.print(f"figure: {path}")
    if export_best is not None:
        out = export(study, options.space, export_best, options.profile)
        console.print(f"best configuration written to {out}: `pemma-bench run --suite {out}`")
