"""`pemma-bench run`: a suite's units through the runner (local, worker processes or Ray), with
progress and where the time went."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pemma.cli.common import (
    AddressOpt,
    ExecutorOpt,
    ResultsOpt,
    SetOpt,
    WorkersOpt,
    _fail,
    _seeds,
    _split,
    _table,
    _tracker,
    _wide,
    app,
    console,
    stoppable,
)


class LineReporter:
    """Progress as plain lines, for logs (CI, nohup, cluster jobs): one per stage and per unit."""

    def __init__(self, total_units: int) -> None:
        self.total = total_units

    def stage(self, text: str, total: int):
        t0 = time.perf_counter()
        console.print(f"  {text}: {total} steps", highlight=False)

        def on_step(step: int, loss: float) -> None:
            if step + 1 == total:
                console.print(
                    f"  {text}: done in {time.perf_counter() - t0:.0f}s, loss {loss:.3f}", highlight=False
                )

        return on_step

    def note(self, text: str) -> None:
        console.print(f"  {text}", highlight=False)

    def start(self, key: str, index: int, total: int) -> None:
        console.print(f"[{index + 1}/{total}] start    {key}", highlight=False)

    def done(self, outcome) -> None:
        detail = f" {outcome.seconds:.0f}s" if outcome.status != "SKIPPED" else ""
        if outcome.headline:
            detail += f", {outcome.headline}"
        if outcome.error:
            detail += f": {outcome.error}"
        console.print(f"{outcome.status.lower():8} {outcome.key}{detail}", highlight=False)


class RichReporter:
    def __init__(self, progress: Progress, total_units: int) -> None:
        self.progress = progress
        self.suite_task = progress.add_task("suite", total=total_units)
        self.step_task = None

    def stage(self, text: str, total: int):
        if self.step_task is not None:
            self.progress.remove_task(self.step_task)
        self.step_task = self.progress.add_task(f"  {text}", total=total or None)

        def on_step(step: int, loss: float) -> None:
            self.progress.update(
                self.step_task,
                completed=step + 1,
                description=f"  {text} (loss {loss:.3f})" if total else f"  {text}",
            )

        return on_step

    def note(self, text: str) -> None:
        self.progress.console.print(f"[dim]{text}[/]", highlight=False)

    def start(self, key: str, index: int, total: int) -> None:
        pass

    def done(self, outcome) -> None:
        style = {"FINISHED": "green", "EVALUATED": "green", "SKIPPED": "dim", "FAILED": "red"}[outcome.status]
        detail = f" ({outcome.seconds:.0f}s)" if outcome.status in ("FINISHED", "EVALUATED") else ""
        if outcome.headline:
            detail += f" {outcome.headline}"
        if outcome.error:
            detail = f": {outcome.error}"
        self.progress.console.print(f"[{style}]{outcome.status.lower():8}[/] {outcome.key}{detail}")
        self.progress.advance(self.suite_task)


@app.command()
def run(
    suite: Annotated[
        str, typer.Option(help="Suite name (see `pemma-bench suites`) or a suite YAML file.")
    ] = "smoke",
    profile: Annotated[
        str | None,
        typer.Option(
            help="ci | smoke | paper | paper-harness (sizes and budgets); default: the suite's own."
        ),
    ] = None,
    seeds: Annotated[list[str] | None, typer.Option(help="Seeds, e.g. 0,1,2.")] = None,
    methods: Annotated[
        list[str] | None, typer.Option("--methods", help="Methods, e.g. pemma-lora,early-fusion.")
    ] = None,
    backbones: Annotated[list[str] | None, typer.Option(help="Backbones, e.g. unetr.")] = None,
    set_: SetOpt = None,
    results: ResultsOpt = Path("results"),
    data: Annotated[
        Path | None, typer.Option(help="HECKTOR-layout cohort; default: built-in synthetic.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the units and which are finished.")
    ] = False,
    minimal: Annotated[
        bool,
        typer.Option("--minimal", help="Every method, but only the first value of every other grid axis."),
    ] = False,
    executor: ExecutorOpt = "local",
    workers: WorkersOpt = 1,
    address: AddressOpt = None,
) -> None:
    """Run a suite: every unit not yet finished, tracked in MLflow, then print the results table."""
    logging.basicConfig(
        level=logging.WARNING, handlers=[RichHandler(console=console, show_path=False)], format="%(message)s"
    )
    from pemma.config import ConfigError, parse_override
    from pemma.resources import SUITES

    try:  # the usual slips fail here, in well under a second, before torch and MONAI are imported
        SUITES.find(suite, ConfigError)
        for text in set_ or []:
            parse_override(text)
        if data is not None and not data.is_dir():
            raise ConfigError(f"--data {data}: no such folder")
    except ConfigError as err:
        raise _fail(str(err)) from err
    from pemma.data.hecktor import CohortError
    from pemma.orchestration.executors import check_executor
    from pemma.orchestration.runner import Runner
    from pemma.registry import RegistryError
    from pemma.suites import expand, load_suite

    try:
        spec = load_suite(suite)
        units = expand(
            spec,
            profile=profile,
            seeds=_seeds(seeds),
            methods=_split(methods, "--methods"),
            backbones=_split(backbones, "--backbones"),
            overrides=list(set_ or []),
            data_root=str(data.resolve()) if data else None,
            minimal=minimal,
        )
        check_executor(executor, workers)
        for path in sorted({cfg.pretrain.checkpoint for cfg in units if cfg.pretrain.checkpoint}):
            from pemma.tasks.segmentation.ct_base import check_pretrained

            check_pretrained(path)
        runner = Runner(results, tracker=_tracker(results))
        keys = [runner.key(cfg) for cfg in units]
    except (ConfigError, RegistryError, CohortError, ValueError) as err:
        raise _fail(str(err)) from err
    device = "" if dry_run else f", device {runner.device}"  # a dry run loads no torch to ask
    console.print(
        f"suite [bold]{spec.name}[/] ({spec.path.name}): {len(units)} units, profile "
        f"{units[0].profile if units else '-'}{device}, results {results}"
    )
    from pemma.orchestration.runner import DONE, EVALUATE

    finished = runner.tracker.finished_runs(spec.name)
    todo = [runner.todo(cfg, key, finished) for cfg, key in zip(units, keys, strict=True)]
    if dry_run:
        label = {DONE: "finished   ", EVALUATE: "to evaluate"}
        for key, what in zip(keys, todo, strict=True):
            console.print(f"{label.get(what, 'to run     ')}  {key}")
        return
    from pemma.orchestration.executors import worker_pool

    pending = sum(what != DONE for what in todo)
    # no worker processes for a rerun with nothing (or one unit) left: starting them costs seconds
    with worker_pool(min(workers, pending)) as pool:  # its processes start while the data is checked
        console.print("checking the data (the first use writes the synthetic cohort and reads every file)")
        t0 = time.perf_counter()
        try:
            runner.prepare(units)
        except CohortError as err:
            raise _fail(str(err)) from err
        except OSError as err:
            from pemma.files import no_space

            full = no_space(err)
            if full is None:
                raise
            raise _fail(f"{full}; free some space and run again") from err
        checked = time.perf_counter() - t0
        console.print(f"data ready in {checked:.0f}s")
        if pool is not None or not console.is_terminal or executor != "local":
            runner.reporter = LineReporter(len(units))
            outcomes = _execute(runner, units, executor, address, pool, workers)
            _finish_run(runner, spec.name, results, units, outcomes, checked)
            return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        runner.reporter = RichReporter(progress, len(units))
        outcomes = _execute(runner, units)
    _finish_run(runner, spec.name, results, units, outcomes, checked)


def _execute(runner, units, executor: str = "local", address: str | None = None, pool=None, workers: int = 1):
    """runner.run (or `pool`'s `workers` processes, or Ray tasks) with SIGTERM handled like Ctrl-C,
    and a clear exit code for either."""
    from pemma.config import ConfigError
    from pemma.data.hecktor import CohortError
    from pemma.files import NoSpace

    with stoppable("the running unit is marked KILLED; rerun to resume it"):
        try:
            if executor == "ray":
                from pemma.orchestration.executors import run_on_ray

                return run_on_ray(runner, units, address)
            if pool is not None:
                from pemma.orchestration.executors import run_in_processes

                return run_in_processes(runner, units, pool, workers)
            return runner.run(units)
        except (ConfigError, CohortError) as err:
            raise _fail(str(err)) from err
        except NoSpace as err:
            raise _fail(f"{err}; free some space and run again: finished units are kept") from err


def _finish_run(runner, suite: str, results: Path, units, outcomes, checked: float | None = None) -> None:
    ci = bool(units) and all(cfg.profile == "ci" for cfg in units)
    _print_report(runner.tracker, suite, results, include_ci=ci)
    _print_time_spent(outcomes, checked, runner.spent)
    failed = [o for o in outcomes if o.status == "FAILED"]
    if failed:
        console.print(f"[red]{len(failed)} unit(s) failed[/]; their MLflow runs hold the error")
        raise typer.Exit(code=1)


def _print_time_spent(outcomes, checked: float | None, outside: dict[str, float] | None = None) -> None:
    """Where this command's time went, phase by phase over the units it ran (not those skipped)."""
    from pemma.orchestration.runner import time_spent

    spent = time_spent([o for o in outcomes if o.status in ("FINISHED", "EVALUATED")], checked, outside)
    total = sum(seconds for _, seconds in spent)
    if total <= 0:
        return
    view = Table(title="where the time went", title_justify="left")
    for column in ("phase", "seconds", "share"):
        view.add_column(column, justify="left" if column == "phase" else "right")
    for phase, seconds in spent:
        view.add_row(phase.replace("_", " "), f"{seconds:.0f}", f"{seconds / total:.0%}")
    view.add_row("total", f"{total:.0f}", "100%")
    console.print(view)


def _print_report(
    tracker, suite: str, results: Path, include_ci: bool = False, keep_wider: bool = False
) -> Path:
    """The table of every FINISHED run of the suite (one per run key), whichever command ran them."""
    from pemma.report.tables import write_suite_table

    out, table, left_out = write_suite_table(tracker, suite, results, include_ci, keep_wider)
    if not table.empty:
        wide = _wide()
        wide.print(_table(table, f"suite {suite}"))
    for why, n in left_out.items():
        console.print(f"left out: {n} {why}")
    console.print(f"table written to {out}")
    return out
