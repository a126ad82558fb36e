"""`pemma-bench claims`: the claims plan's units (run, or costed with --dry-run) and the verdict table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from pemma.cli.common import (
    AddressOpt,
    ExecutorOpt,
    ResultsOpt,
    WorkersOpt,
    _fail,
    _seeds,
    _table,
    _tracker,
    _wide,
    app,
    console,
)
from pemma.cli.run import LineReporter, _execute, _print_time_spent


@app.command()
def claims(
    plan: Annotated[
        str | None,
        typer.Argument(help="A claims plan (YAML); default: the shipped reports/claims/pemma.yaml."),
    ] = None,
    run_units: Annotated[
        bool, typer.Option("--run", help="First run the plan's units that are not finished yet.")
    ] = False,
    results: ResultsOpt = Path("results"),
    tracking_uri: Annotated[
        str | None, typer.Option(help="Read runs from this MLflow store instead of the results folder's.")
    ] = None,
    executor: ExecutorOpt = "local",
    workers: WorkersOpt = 1,
    address: AddressOpt = None,
    seeds: Annotated[
        list[str] | None,
        typer.Option(help="Seeds instead of the plan's, e.g. 0-9 or 0,1,2 (more seeds, narrower intervals)."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="List the plan's units (finished or not) and estimate its cost; run nothing."
        ),
    ] = False,
) -> None:
    """The PEMMA papers' claims as verdicts (supported / contradicted / inconclusive), with stability."""
    from dataclasses import replace

    from pemma.config import ConfigError
    from pemma.report.claims import load_plan, to_markdown, verdict_table, write_claims
    from pemma.report.definition import ReportError
    from pemma.report.sources import DamagedResults, Sources
    from pemma.resources import CLAIMS_PLANS

    try:
        spec = load_plan(CLAIMS_PLANS.find(plan or "pemma", ReportError))
        chosen = _seeds(seeds)
    except (ReportError, ConfigError) as err:
        raise _fail(str(err)) from err
    if chosen:
        spec = replace(spec, seeds=tuple(chosen))
    if dry_run:
        _plan_cost(spec, results)
        return
    if run_units:
        _run_plan(spec, results, executor, address, workers)
    sources = Sources(_tracker(results, tracking_uri), results, include_ci=spec.profile == "ci")
    try:
        table = verdict_table(spec, sources)
    except DamagedResults as err:
        raise _fail(str(err)) from err
    _wide().print(_table(table, spec.title))
    out = write_claims(spec, table, Path(results) / "claims" / f"{(spec.path or Path('claims')).stem}.md")
    console.print(to_markdown(spec, table).splitlines()[2])
    console.print(f"verdicts written to {out}")


def _plan_cost(spec, results: Path) -> None:
    """claims --dry-run: the plan's units and what they cost, from counted samples and measured rates."""
    from pemma.config import ConfigError
    from pemma.orchestration.runner import Runner
    from pemma.report.claims.cost import estimate, load_rates, plan_work
    from pemma.report.definition import ReportError

    try:
        runner = Runner(results, tracker=_tracker(results))
        work = plan_work(spec, runner)
        runs = {suite: runner.tracker.runs(suite) for suite in work["suite"].unique()}
        table, lines = estimate(spec, work, runs, load_rates())
    except (ConfigError, ReportError, ValueError) as err:
        raise _fail(str(err)) from err
    console.print(
        f"claims plan [bold]{spec.title}[/]: profile {spec.profile}, backbone {spec.backbone}, "
        f"seeds {', '.join(map(str, spec.seeds))}"
    )
    for row in work.itertuples(index=False):
        console.print(f"{'finished' if row.finished else 'to run  '}  {row.key}")
    _wide().print(_table(table, "cost by suite and method"))
    for line in lines:
        console.print(line)


def _run_plan(
    spec, results: Path, executor: str = "local", address: str | None = None, workers: int = 1
) -> None:
    """Every unit of a claims plan through the same runner as `run`: all suites' units in one batch,
    so worker processes or Ray tasks stay busy across the plan's suites."""
    from pemma.config import ConfigError
    from pemma.orchestration.executors import check_executor, worker_pool
    from pemma.orchestration.runner import Runner

    try:
        check_executor(executor, workers)
    except ConfigError as err:
        raise _fail(str(err)) from err
    with worker_pool(workers) as pool:  # its processes start while the data is checked
        _run_plan_units(spec, Runner(results, tracker=_tracker(results)), executor, address, pool, workers)


def _run_plan_units(spec, runner, executor: str, address: str | None, pool, workers: int) -> None:
    """_run_plan's work: each suite's units expanded and their data checked, then all run at once."""
    from pemma.config import ConfigError
    from pemma.data.hecktor import CohortError
    from pemma.report.claims import units as plan_units

    units = []
    start = time.perf_counter()
    try:
        expanded = plan_units(spec)
    except ConfigError as err:
        raise _fail(str(err)) from err
    for suite, part in expanded:
        console.print(f"suite {suite}: {len(part)} units")
        try:
            runner.prepare(part)
        except (ConfigError, CohortError, ValueError) as err:
            raise _fail(f"claims plan, suite {suite}: {err}") from err
        units += part
    checked = time.perf_counter() - start
    runner.reporter = LineReporter(len(units))
    outcomes = _execute(runner, units, executor, address, pool, workers)
    ran = sum(o.status == "FINISHED" for o in outcomes)
    failed = sum(o.status == "FAILED" for o in outcomes)
    console.print(
        f"claims plan: {len(units)} units, {ran} run now, {failed} failed"
        + (" [red](their claims read as not run)[/]" if failed else "")
        + f"; {time.perf_counter() - start:.0f}s with the data check"
    )
    _print_time_spent(outcomes, checked, runner.spent)
