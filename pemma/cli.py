"""The pemma-bench command line: it parses, calls the library and prints."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

DEBUG = {"on": bool(os.environ.get("PEMMA_DEBUG"))}


class _App(typer.Typer):
    """Typer with one line instead of a traceback for an unexpected error (the traceback with --debug)."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as err:
            if DEBUG["on"]:
                raise
            console.print(f"[bold red]error:[/] {type(err).__name__}: {err}")
            console.print("(run with --debug, or PEMMA_DEBUG=1, for the traceback)")
            sys.exit(1)


app = _App(
    help="Benchmark and ablation harness for parameter-efficient multi-modal adaptation (PEMMA).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"pemma-bench {version('pemma')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an unexpected error.")
    ] = False,
) -> None:
    """Benchmark and ablation harness for parameter-efficient multi-modal adaptation (PEMMA)."""
    DEBUG["on"] = DEBUG["on"] or debug


data_app = typer.Typer(help="Cohorts: write the synthetic one, check any.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

ResultsOpt = Annotated[
    Path,
    typer.Option(
        "--results", envvar="PEMMA_RESULTS", help="Results folder (MLflow store, bases, caches, tables)."
    ),
]
ExecutorOpt = Annotated[
    str,
    typer.Option(
        help="local (units here: one after another, or side by side with --workers) or ray (Ray "
        "tasks, one GPU each)."
    ),
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        help="Worker processes running units side by side on this machine (local executor), the CPU "
        "threads shared out among them."
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(help="Ray cluster address (with --executor ray); default: a local Ray instance."),
]


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for text in values for v in text.split(",") if v.strip()]


def _wide() -> Console:
    """Tables are wide: outside a terminal (logs, CI) print them at 200 columns rather than 80."""
    return console if console.is_terminal else Console(width=max(console.width, 260))


def _seeds(seeds: list[str] | None) -> list[int] | None:
    from pemma.config import ConfigError

    values = _split(seeds) or []
    out: list[int] = []
    try:
        for value in values:
            first, _, last = value.partition("-") if not value.startswith("-") else (value, "", "")
            out += list(range(int(first), int(last) + 1)) if last else [int(first)]
    except ValueError as err:
        raise ConfigError(
            f"--seeds {','.join(values)!r}: expected integers or ranges, e.g. --seeds 0,1,2 or 0-9"
        ) from err
    if len(set(out)) != len(out):
        raise ConfigError(f"--seeds {','.join(values)!r}: a seed is named twice")
    return out or None


def _results(results: Path) -> Path:
    """The results folder, created if needed; a file or a read-only folder is refused by name."""
    results = Path(results)
    if results.exists() and not results.is_dir():
        raise _fail(f"--results {results}: is a file, not a folder")
    try:
        results.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _fail(f"--results {results}: cannot create it ({err.strerror})") from err
    if not os.access(results, os.W_OK | os.X_OK):
        raise _fail(f"--results {results}: not writable by this user")
    return results


def _tracker(results: Path, uri: str | None = None):
    from pemma.tracking import Tracker, TrackingError

    try:
        return Tracker(_results(results), uri)
    except TrackingError as err:
        raise _fail(f"{err} (set MLFLOW_TRACKING_URI or --tracking-uri to another store)") from err


def _fail(message: str) -> typer.Exit:
    # One unwrapped line: a long path or URI in the message stays whole (a log line to grep and copy).
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code=2)


def _table(df, title: str) -> Table:
    table = Table(title=title, show_lines=False)
    for col in df.columns:
        table.add_column(str(col), justify="left" if col in ("method", "backbone") else "right")
    for row in df.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    return table


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write the cohort into (must not exist).")],
    scale: Annotated[float, typer.Option(help="Share of HECKTOR's per-centre sizes (min 3).")] = 0.15,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
) -> None:
    """Write a synthetic cohort in the HECKTOR 2022 layout."""
    from pemma.data.synth import cohort_sizes, write_cohort

    sizes = cohort_sizes(scale)
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
        ) as bar:
            task = bar.add_task("patients", total=sum(sizes.values()))
            write_cohort(
                out, scale=scale, seed=seed, progress=lambda done, total: bar.update(task, completed=done)
            )
    except FileExistsError as err:
        raise _fail(str(err)) from err
    console.print(
        f"wrote {sum(sizes.values())} patients to {out}: " + ", ".join(f"{c} {n}" for c, n in sizes.items())
    )


@data_app.command("check")
def data_check(
    root: Annotated[Path, typer.Argument(help="A HECKTOR 2022-layout folder (imagesTr/, labelsTr/, CSVs).")],
) -> None:
    """Validate a HECKTOR-layout cohort (every file is read) and summarise it per centre.

    Stops with exit 2 at the first unusable file, naming patient and file; lists what no unit will
    read (misnamed images, centres outside the default plan) and patients that serve only some phases."""
    from pemma.config import DataConfig
    from pemma.data.check import absent_classes, check_cohort, summarise
    from pemma.data.hecktor import CohortError, read_cohort
    from pemma.data.store import unused

    try:
        cohort = read_cohort(root)
        report = check_cohort(cohort)
    except CohortError as err:
        raise _fail(str(err)) from err
    summary, notes = summarise(report)
    notes = [*unused(cohort, DataConfig()), *notes]
    title = f"{root}: {len(report)} patients, {len(summary)} centres, fingerprint {cohort.fingerprint()}"
    wide = _wide()
    wide.print(_table(summary, title))
    for note in notes:
        console.print(f"- {note}")
    for line in absent_classes(report):
        console.print(f"info: {line}")
    console.print("[green]no problems found[/]" if not notes else "usable; see the notes above")


@app.command()
def methods() -> None:
    """List the registered methods: what each trains and which inputs it accepts."""
    from pemma.methods import METHODS

    rows = [cls.describe() for _, cls in METHODS.items()]
    table = Table(title="methods")
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*row.values())
    _wide().print(table)


@app.command()
def tasks() -> None:
    """List the registered tasks: what each reads and the metrics its table shows."""
    from pemma.methods import reference_method
    from pemma.tasks import TASKS

    table = Table(title="tasks")
    for col in ("task", "what", "reads", "table columns (↑ higher is better, ↓ lower)"):
        table.add_column(col)
    for name, task in TASKS.items():
        shown = [m for m in task.metrics if m.column]
        arrows = {True: " ↑", False: " ↓", None: ""}
        table.add_row(
            name,
            task.summary,
            ", ".join(task.data_keys),
            "; ".join(m.title_for(reference_method) + arrows[m.higher_is_better] for m in shown),
        )
    _wide().print(table)


@app.command()
def suites() -> None:
    """List the shipped suites with their size in units."""
    from pemma.config import ConfigError
    from pemma.suites import available, expand, load_suite

    table = Table(title="suites")
    for col in ("suite", "units", "file", "description"):
        table.add_column(col)
    for name, path in available().items():
        try:
            suite = load_suite(str(path))
            units = str(len(expand(suite)))
        except ConfigError as err:
            units = f"[red]invalid: {err}[/]"
            suite = None
        table.add_row(
            name, units, str(path.relative_to(path.parent.parent)), suite.description.strip() if suite else ""
        )
    _wide().print(table)


@app.command()
def validate() -> None:
    """Check every shipped suite and report file, without training."""
    from pemma.config import ConfigError
    from pemma.report.definition import ReportError, check_suites, load_report, shipped_reports
    from pemma.suites import available, expand, load_suite

    bad = 0
    for name, path in available().items():
        try:
            units = expand(load_suite(str(path)))
            console.print(f"[green]ok[/]      {name}: {len(units)} units")
        except (ConfigError, KeyError) as err:
            bad += 1
            console.print(f"[red]invalid[/] {name} ({path}): {err}")
    from pemma.report.claims import load_plan
    from pemma.report.definition import report_folder

    for path in sorted((report_folder() / "claims").glob("*.yaml")):
        try:
            plan = load_plan(path)
            unknown = [r.suite for r in plan.runs if r.suite not in available()]
            if unknown:
                raise ReportError(f"{path}: unknown suite(s) {', '.join(unknown)}")
            console.print(f"[green]ok[/]      claims plan {path.stem}: {len(plan.runs)} run entries")
        except ReportError as err:
            bad += 1
            console.print(f"[red]invalid[/] claims plan {path.stem}: {err}")
    from pemma.search import SearchError, available_spaces, check_space, load_space

    for name, path in available_spaces().items():
        try:
            space = load_space(str(path))
            check_space(space)
            console.print(f"[green]ok[/]      search space {name}: {len(space.params)} parameters")
        except (SearchError, ConfigError) as err:
            bad += 1
            console.print(f"[red]invalid[/] search space {name}: {err}")
    for name, path in shipped_reports().items():
        try:
            spec = load_report(path)
            check_suites(spec, path)
            console.print(f"[green]ok[/]      report {name}: {len(spec.sections)} sections")
        except ReportError as err:
            bad += 1
            console.print(f"[red]invalid[/] report {name}: {err}")
    if bad:
        raise typer.Exit(code=1)


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
        style = {"FINISHED": "green", "SKIPPED": "dim", "FAILED": "red"}[outcome.status]
        detail = f" ({outcome.seconds:.0f}s)" if outcome.status == "FINISHED" else ""
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
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override key=value (repeatable).")
    ] = None,
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
    from pemma.config import ConfigError
    from pemma.data.hecktor import CohortError
    from pemma.orchestration.executors import check_executor
    from pemma.orchestration.runner import Runner
    from pemma.registry import RegistryError
    from pemma.suites import expand, load_suite

    try:
        if data is not None and not data.is_dir():
            raise CohortError(f"--data {data}: no such folder")
        spec = load_suite(suite)
        units = expand(
            spec,
            profile=profile,
            seeds=_seeds(seeds),
            methods=_split(methods),
            backbones=_split(backbones),
            overrides=list(set_ or []),
            data_root=str(data.resolve()) if data else None,
            minimal=minimal,
        )
        check_executor(executor, workers)
        runner = Runner(results, tracker=_tracker(results))
        keys = [runner.key(cfg) for cfg in units]
    except (ConfigError, RegistryError, CohortError, ValueError) as err:
        raise _fail(str(err)) from err
    console.print(
        f"suite [bold]{spec.name}[/] ({spec.path.name}): {len(units)} units, profile "
        f"{units[0].profile if units else '-'}, device {runner.device}, results {results}"
    )
    if dry_run:
        finished = runner.tracker.finished_keys(spec.name)
        for key in keys:
            console.print(f"{'finished' if key in finished else 'to run  '}  {key}")
        return
    from pemma.orchestration.executors import worker_pool

    with worker_pool(workers) as pool:  # its processes start while the data is checked
        console.print("checking the data (the first use writes the synthetic cohort and reads every file)")
        t0 = time.perf_counter()
        try:
            runner.prepare(units)
        except CohortError as err:
            raise _fail(str(err)) from err
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, Slurm, Kubernetes), handled like Ctrl-C: the running unit ends KILLED."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _execute(runner, units, executor: str = "local", address: str | None = None, pool=None, workers: int = 1):
    """runner.run (or `pool`'s `workers` processes, or Ray tasks) with SIGTERM handled like Ctrl-C,
    and a clear exit code for either."""
    from pemma.config import ConfigError
    from pemma.data.hecktor import CohortError

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
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
    except KeyboardInterrupt as err:
        name = "SIGTERM" if isinstance(err, Terminated) else "interrupt"
        console.print(f"[red]stopped by {name}[/]: the running unit is marked KILLED; rerun to resume it")
        raise typer.Exit(code=143 if isinstance(err, Terminated) else 130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


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

    spent = time_spent([o for o in outcomes if o.status == "FINISHED"], checked, outside)
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


def _print_report(tracker, suite: str, results: Path, include_ci: bool = False) -> Path:
    """The table of every FINISHED run of the suite (one per run key), whichever command ran them."""
    from pemma.report.tables import write_suite_table

    out, table, left_out = write_suite_table(tracker, suite, results, include_ci)
    if not table.empty:
        wide = _wide()
        wide.print(_table(table, f"suite {suite}"))
    for why, n in left_out.items():
        console.print(f"left out: {n} {why}")
    console.print(f"table written to {out}")
    return out


@app.command()
def report(
    definition: Annotated[
        str | None,
        typer.Argument(help="A report definition (YAML file) or a shipped one's name (see reports/)."),
    ] = None,
    suite: Annotated[str | None, typer.Option(help="Quick view: one suite's table.")] = None,
    results: ResultsOpt = Path("results"),
    tracking_uri: Annotated[
        str | None, typer.Option(help="Read runs from this MLflow store instead of the results folder's.")
    ] = None,
    formats: Annotated[str, typer.Option("--format", help="Comma-separated: md, tex, html.")] = "md,tex,html",
    out: Annotated[Path | None, typer.Option(help="Output folder (default RESULTS/reports/NAME).")] = None,
    include_ci: Annotated[
        bool, typer.Option("--include-ci", help="Also use ci-profile runs (their numbers mean nothing).")
    ] = False,
) -> None:
    """Regenerate a report's tables and figures (or, with --suite, one suite's table) from tracked runs."""
    from pemma.report.definition import ReportError, find_report, load_report
    from pemma.report.render import FORMATS, generate, write
    from pemma.report.sources import Sources
    from pemma.suites import available

    if definition is None:
        name = suite or "smoke"
        tracker = _tracker(results, tracking_uri)
        if name not in available() and tracker.experiment_id(name, create=False) is None:
            known = ", ".join(sorted(available()))
            raise _fail(
                f"--suite {name!r}: no such suite, and no runs of it in {tracker.uri} (shipped: {known})"
            )
        _print_report(tracker, name, results, include_ci)
        return
    if suite is not None:
        raise _fail("give a report definition or --suite, not both")
    chosen = tuple(f.strip() for f in formats.split(",") if f.strip())
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise _fail(f"--format {formats!r}: expected a comma-separated subset of {', '.join(FORMATS)}")
    try:
        spec = load_report(find_report(definition))
    except ReportError as err:
        raise _fail(str(err)) from err
    sources = Sources(_tracker(results, tracking_uri), results, include_ci)
    rendered = generate(spec, sources)
    folder = out or Path(results) / "reports" / spec.name
    for path in write(rendered, folder, chosen):
        console.print(f"wrote {path}")
    for block in rendered.blocks:
        if block.table.empty:
            console.print(
                f"[yellow]empty[/]  {block.section.title}: no finished runs of suite {block.section.suite}"
            )


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
    """The PEMMA papers' claims as a verdict table (supported / contradicted / inconclusive), each
    verdict with its stability when a seed is left out."""
    from dataclasses import replace

    from pemma.config import ConfigError
    from pemma.report.claims import evaluate, load_plan, to_markdown, write_claims
    from pemma.report.definition import ReportError, report_folder
    from pemma.report.sources import Sources

    try:
        spec = load_plan(Path(plan) if plan else report_folder() / "claims" / "pemma.yaml")
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
    table = evaluate(spec, sources)
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
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Fixed config override key=value (repeatable).")
    ] = None,
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
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        counts = run_search(options, LineReporter(0))
    except ConfigError as err:
        raise _fail(str(err)) from err
    except KeyboardInterrupt as err:
        console.print("[red]stopped[/]: the running trial's unit is KILLED; rerun to continue the study")
        raise typer.Exit(code=143 if isinstance(err, Terminated) else 130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
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


DataOpt = Annotated[Path | None, typer.Option(help="HECKTOR-layout cohort; default: built-in synthetic.")]
RoundsOpt = Annotated[int, typer.Option(help="Alternating rounds of each side; the best round counts.")]
BenchProfileOpt = Annotated[str, typer.Option(help="ci | smoke | paper (model size and crop).")]
OneMethodOpt = Annotated[str, typer.Option("--methods", "--method", help="Method (one).")]
OneBackboneOpt = Annotated[str, typer.Option("--backbones", "--backbone", help="Backbone (one).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Config override key=value.")]

bench_app = typer.Typer(
    help="Benchmarks that print ratios measured side by side in one run.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


def _print_frame(table, title: str, digits: str = ",.2f") -> None:
    shown = table.copy()
    for col in shown.columns:
        if shown[col].dtype.kind == "f":
            shown[col] = shown[col].map(lambda v: format(v, digits))
    wide = _wide()
    wide.print(_table(shown, title))


@bench_app.command("throughput")
def bench_throughput(
    profile: Annotated[str, typer.Option(help="ci | smoke | paper (model size and crop).")] = "smoke",
    methods: Annotated[list[str] | None, typer.Option("--methods", help="Methods (default: all).")] = None,
    backbone: Annotated[str, typer.Option("--backbones", "--backbone", help="Backbone (one).")] = "unetr",
    steps: Annotated[int, typer.Option(help="Timed training steps per method (after warm-up).")] = 10,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Config override key=value.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the table as CSV here.")] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            help="`public`: this harness's defaults against the public PEMMA code's configuration "
            "(fp32, eager, no SDPA, MetaTensors, no preprocessing cache), for the first --methods "
            "(default pemma-lora), on the cohort's adaptation crops."
        ),
    ] = None,
    results: ResultsOpt = Path("results"),
    data: DataOpt = None,
    rounds: RoundsOpt = 2,
) -> None:
    """Train-step throughput, peak memory and inference speed of each method, on random data."""
    from pemma.bench.measures import throughput
    from pemma.config import ConfigError, parse_override, resolve
    from pemma.methods import METHODS
    from pemma.models.backbones import BACKBONES
    from pemma.orchestration.runner import default_device
    from pemma.registry import RegistryError

    if reference not in (None, "public"):
        raise _fail(f"--reference: expected public, got {reference!r}")
    try:
        backbone = BACKBONES.canonical(backbone)
        cfg = resolve({"profile": profile, "backbone": backbone}, *(parse_override(s) for s in set_ or []))
        BACKBONES.get(backbone).check(cfg.model)
        names = [METHODS.canonical(m) for m in _split(methods) or METHODS.names()]
    except (ConfigError, RegistryError) as err:
        raise _fail(str(err)) from err
    device = default_device()
    if reference == "public":
        from dataclasses import replace

        from pemma.bench.performance import public_reference
        from pemma.tasks.segmentation.task import KEYS

        method = names[0] if methods else "pemma-lora"
        cfg, loaded = _bench_data(replace(cfg, method=method), results, data)
        cases = loaded.plan.adapt["train"]
        crops = loaded.data.crops(cases, KEYS, cfg.model.roi, seed=cfg.seed)
        fresh = loaded.data.crops(cases, KEYS, cfg.model.roi, seed=cfg.seed, cached=False)
        table = public_reference(cfg, fresh, crops, device, steps, rounds)
        title = f"public configuration vs pemma-bench: {method}, profile {profile}, {device}"
    else:
        table = throughput(cfg, names, steps, device)
        title = (
            f"throughput: profile {profile}, roi {cfg.model.roi}, batch {cfg.train.batch_size}, "
            f"{device} {table.attrs['dtype']}"
        )
    _print_frame(table, title)
    _log_bench(results, f"throughput-{reference}" if reference else "throughput", table, cfg, device)
    if out:
        table.to_csv(out, index=False)


def _bench_data(cfg, results: Path, data: Path | None):
    """The cohort a benchmark reads (default: the built-in synthetic one at the profile's scale)."""
    from dataclasses import replace

    from pemma.config import ConfigError
    from pemma.data.hecktor import CohortError
    from pemma.data.store import DataStore

    try:
        if data:  # the cohort folder only: the command's --set overrides stay
            cfg = replace(cfg, data=replace(cfg.data, root=str(data.resolve())))
        return cfg, DataStore(results).load(cfg)
    except (ConfigError, CohortError) as err:
        raise _fail(str(err)) from err


def _log_bench(results: Path, name: str, table, cfg, device) -> None:
    """The benchmark's table into MLflow (experiment pemma-bench/bench): one metric per numeric cell,
    named `<row labels>/<column>`, and the table as CSV."""
    import re
    import tempfile

    from pemma.tracking import provenance
    from pemma.training.loop import dtype_name

    tracker = _tracker(results)
    tags = {**provenance(device, dtype_name(device, cfg.train.amp), cfg.profile), "bench": name}
    run_id = tracker.create_run(
        "bench", f"bench-{name}", tags, params={"profile": cfg.profile, "backbone": cfg.backbone}
    )
    labels = [c for c in table.columns if table[c].dtype.kind not in "fiub"]
    metrics = {}
    for _, row in table.iterrows():
        prefix = "/".join(str(row[c]) for c in labels)
        for col in table.columns:
            if col not in labels:
                key = re.sub(r"[^\w./\- ]", "_", f"{prefix}/{col}" if prefix else col)
                metrics[key] = float(row[col])
    tracker.log(run_id, metrics)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.csv"
        table.to_csv(path, index=False)
        tracker.log_artifact(run_id, path, "bench")
    tracker.finish(run_id)
    console.print(f"logged to MLflow: experiment pemma-bench/bench, run bench-{name}")


@bench_app.command("overhead")
def bench_overhead(
    profile: BenchProfileOpt = "smoke",
    method: OneMethodOpt = "pemma-lora",
    backbone: OneBackboneOpt = "unetr",
    steps: Annotated[int, typer.Option(help="Training steps per round (each side).")] = 30,
    rounds: RoundsOpt = 2,
    set_: SetOpt = None,
    results: ResultsOpt = Path("results"),
    data: DataOpt = None,
) -> None:
    """The harness's training loop (cached data, checkpoints, progress) against a bare PyTorch loop."""
    from pemma.bench.performance import overhead
    from pemma.orchestration.runner import default_device
    from pemma.tasks.segmentation.task import KEYS

    cfg = _bench_config(profile, method, backbone, set_)
    cfg, loaded = _bench_data(cfg, results, data)
    crops = loaded.data.crops(loaded.plan.adapt["train"], KEYS, cfg.model.roi, seed=cfg.seed)
    for i in range(len(crops)):  # the harness reads its cache warm, as every unit after the first does
        crops[i]
    device = default_device()
    try:
        table = overhead(cfg, crops, device, steps, rounds)
    except ValueError as err:
        raise _fail(str(err)) from err
    _print_frame(table, f"harness vs bare loop: profile {profile}, {device}")
    _log_bench(results, "overhead", table, cfg, device)


@bench_app.command("memory")
def bench_memory(
    profile: BenchProfileOpt = "smoke",
    methods: Annotated[
        list[str] | None,
        typer.Option("--methods", help="Methods (default: pemma-lora and the memory reference method)."),
    ] = None,
    backbone: OneBackboneOpt = "unetr",
    options: Annotated[
        list[str] | None,
        typer.Option("--options", help="plain, activation checkpointing, frozen bf16, both."),
    ] = None,
    steps: Annotated[int, typer.Option(help="Timed training steps per method and option.")] = 5,
    set_: SetOpt = None,
    results: ResultsOpt = Path("results"),
) -> None:
    """Peak memory and step time with activation checkpointing and frozen bf16 weights, per method."""
    from pemma.bench.performance import MEMORY_OPTIONS, memory_options
    from pemma.methods import reference_method
    from pemma.orchestration.runner import default_device

    cfg = _bench_config(profile, "pemma-lora", backbone, set_)
    chosen = _split(options) or list(MEMORY_OPTIONS)
    unknown = [o for o in chosen if o not in MEMORY_OPTIONS]
    if unknown:
        raise _fail(f"--options: unknown {', '.join(unknown)}; expected {', '.join(MEMORY_OPTIONS)}")
    names = _bench_methods(methods, ["pemma-lora", reference_method("memory")])
    device = default_device()
    table = memory_options(cfg, names, device, steps, chosen)
    _print_frame(table, f"memory options: profile {profile}, {backbone}, {device}")
    _log_bench(results, "memory", table, cfg, device)


@bench_app.command("layout")
def bench_layout(
    profile: BenchProfileOpt = "smoke",
    methods: Annotated[
        list[str] | None,
        typer.Option("--methods", help="Methods (default: early-fusion, pemma-lora, full-finetune)."),
    ] = None,
    backbone: OneBackboneOpt = "unetr",
    steps: Annotated[int, typer.Option(help="Timed training steps per layout and round.")] = 5,
    rounds: RoundsOpt = 2,
    set_: SetOpt = None,
    results: ResultsOpt = Path("results"),
) -> None:
    """Channels-last 3D convolutions (model.channels_last, the default) vs NCDHW: step time per method."""
    from pemma.bench.performance import layout_speed
    from pemma.methods import reference_method
    from pemma.orchestration.runner import default_device

    cfg = _bench_config(profile, "pemma-lora", backbone, set_)
    # the parameters reference (early fusion) and the memory reference (full fine-tuning) train
    # their convolutions; PEMMA-LoRA freezes most of them
    default = [reference_method("parameters"), "pemma-lora", reference_method("memory")]
    names = _bench_methods(methods, default)
    device = default_device()
    table = layout_speed(cfg, names, device, steps, rounds)
    _print_frame(table, f"convolution layout: profile {profile}, {backbone}, {device}")
    _log_bench(results, "layout", table, cfg, device)


@bench_app.command("compile")
def bench_compile(
    profile: BenchProfileOpt = "smoke",
    method: OneMethodOpt = "pemma-lora",
    backbone: OneBackboneOpt = "unetr",
    steps: Annotated[int, typer.Option(help="Timed steps after the compile (each form).")] = 10,
    set_: SetOpt = None,
    results: ResultsOpt = Path("results"),
) -> None:
    """torch.compile against eager: compile time, steady speed-up, break-even steps, output difference."""
    from pemma.bench.performance import compile_speed
    from pemma.orchestration.runner import default_device

    cfg = _bench_config(profile, method, backbone, set_)
    device = default_device()
    table = compile_speed(cfg, device, steps)
    _print_frame(table, f"torch.compile vs eager: profile {profile}, {device}", digits=",.3g")
    _log_bench(results, "compile", table, cfg, device)


def _bench_methods(methods: list[str] | None, default: list[str]) -> list[str]:
    """A bench's --methods as registered names (aliases allowed; an unknown one fails clearly)."""
    from pemma.methods import METHODS
    from pemma.registry import RegistryError

    try:
        return [METHODS.canonical(m) for m in _split(methods) or default]
    except RegistryError as err:
        raise _fail(str(err)) from err


def _bench_config(profile: str, method: str, backbone: str, set_: list[str] | None):
    from pemma.config import ConfigError, parse_override, resolve
    from pemma.methods import METHODS
    from pemma.models.backbones import BACKBONES
    from pemma.registry import RegistryError

    try:
        backbone = BACKBONES.canonical(backbone)
        cfg = resolve(
            {"profile": profile, "backbone": backbone, "method": METHODS.canonical(method)},
            *(parse_override(s) for s in set_ or []),
        )
        BACKBONES.get(backbone).check(cfg.model)
    except (ConfigError, RegistryError) as err:
        raise _fail(str(err)) from err
    return cfg


@bench_app.command("merge")
def bench_merge(
    profile: Annotated[str, typer.Option(help="ci | smoke | paper (model size and crop).")] = "smoke",
    backbones: Annotated[list[str] | None, typer.Option(help="Backbones (default: all).")] = None,
    methods: Annotated[
        list[str] | None, typer.Option("--methods", help="Methods (default: those with adapters).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Config override key=value.")] = None,
) -> None:
    """Inference speed with LoRA / DoRA unmerged vs merged into the base, and their output difference."""
    import pandas as pd

    from pemma.bench.measures import merged_inference
    from pemma.config import ConfigError, parse_override, resolve
    from pemma.methods import METHODS
    from pemma.models.backbones import BACKBONES
    from pemma.orchestration.runner import default_device
    from pemma.registry import RegistryError

    device = default_device()
    try:
        names = [
            METHODS.canonical(m) for m in _split(methods) or ["pemma-lora", "pemma-dora", "early-fusion-lora"]
        ]
        tables = []
        for backbone in [BACKBONES.canonical(b) for b in _split(backbones) or BACKBONES.names()]:
            cfg = resolve(
                {"profile": profile, "backbone": backbone}, *(parse_override(s) for s in set_ or [])
            )
            BACKBONES.get(backbone).check(cfg.model)
            tables.append(merged_inference(cfg, names, device))
    except (ConfigError, RegistryError) as err:
        raise _fail(str(err)) from err
    _print_frame(
        pd.concat(tables, ignore_index=True), f"merged vs unmerged adapters: profile {profile}, {device}"
    )


@bench_app.command("data")
def bench_data(
    profile: BenchProfileOpt = "smoke",
    method: OneMethodOpt = "pemma-lora",
    backbone: OneBackboneOpt = "unetr",
    steps: Annotated[int, typer.Option(help="Timed training steps.")] = 20,
    set_: SetOpt = None,
    results: ResultsOpt = Path("results"),
    data: DataOpt = None,
) -> None:
    """Preprocessing cache: first (cold) vs second (warm) epoch, and the data-wait share of a step."""
    import tempfile

    from pemma.bench.measures import data_cache
    from pemma.orchestration.runner import default_device

    cfg = _bench_config(profile, method, backbone, set_)
    cfg, loaded = _bench_data(cfg, results, data)
    device = default_device()
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=results) as cold:
        table = data_cache(cfg, loaded, Path(cold), device, steps)
    _print_frame(
        table, f"preprocessing cache: profile {profile}, {len(loaded.cohort.cases)} patients in cohort"
    )
    _log_bench(results, "data", table, cfg, device)


@app.command()
def params(
    profile: Annotated[str, typer.Option(help="ci | smoke | paper (model size).")] = "paper",
    backbones: Annotated[list[str] | None, typer.Option(help="Backbones (default: all).")] = None,
    methods: Annotated[list[str] | None, typer.Option("--methods", help="Methods (default: all).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Config override key=value.")] = None,
) -> None:
    """Parameter accounting for every method and backbone, without training."""
    import pandas as pd

    from pemma.bench.measures import parameter_table
    from pemma.config import ConfigError, parse_override, resolve
    from pemma.methods import METHODS
    from pemma.models.backbones import BACKBONES
    from pemma.registry import RegistryError

    try:
        names = [METHODS.canonical(m) for m in _split(methods) or METHODS.names()]
        tables = []
        for backbone in [BACKBONES.canonical(b) for b in _split(backbones) or BACKBONES.names()]:
            cfg = resolve(
                {"profile": profile, "backbone": backbone}, *(parse_override(s) for s in set_ or [])
            )
            tables.append(parameter_table(cfg, names))
    except (ConfigError, RegistryError) as err:
        raise _fail(str(err)) from err
    _print_frame(pd.concat(tables, ignore_index=True), f"parameters: profile {profile}")


def main() -> None:  # pragma: no cover
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    app()
