"""What is registered and shipped: methods, tasks, suites, and `validate` (every shipped file, without
training)."""

from __future__ import annotations

import typer
from rich.table import Table

from pemma.cli.common import _wide, app, console


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
def conditions() -> None:
    """List the test-time conditions a suite can score (eval.conditions): what each changes, its
    parameter and default magnitudes."""
    from pemma.conditions import CONDITIONS
    from pemma.modalities import LABELS

    table = Table(title="test-time conditions")
    for col in ("condition", "model sees", "parameter", "default magnitudes", "what"):
        table.add_column(col)
    for name, condition in CONDITIONS.items():
        magnitudes = ", ".join(f"{m:g}" for m in condition.magnitudes)
        table.add_row(
            name,
            LABELS[condition.subset],
            f"{condition.parameter} ({condition.unit})" if condition.parameter else "—",
            magnitudes or "—",
            condition.description,
        )
    _wide().print(table)


@app.command()
def suites() -> None:
    """List the shipped suites with their size in units."""
    from pemma.config import ConfigError
    from pemma.resources import SUITES
    from pemma.suites import expand, load_suite

    table = Table(title="suites")
    for col in ("suite", "units", "file", "description"):
        table.add_column(col)
    for name, path in SUITES.available().items():
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
    from pemma.report.claims import load_plan
    from pemma.report.definition import ReportError, check_suites, load_report
    from pemma.resources import CLAIMS_PLANS, REPORTS, SPACES, SUITES
    from pemma.search import SearchError, check_space, load_space
    from pemma.suites import expand, load_suite

    bad = 0
    for name, path in SUITES.available().items():
        try:
            units = expand(load_suite(str(path)))
            console.print(f"[green]ok[/]      {name}: {len(units)} units")
        except (ConfigError, KeyError) as err:
            bad += 1
            console.print(f"[red]invalid[/] {name} ({path}): {err}")
    for path in CLAIMS_PLANS.available().values():
        try:
            plan = load_plan(path)
            console.print(f"[green]ok[/]      claims plan {path.stem}: {len(plan.runs)} run entries")
        except ReportError as err:
            bad += 1
            console.print(f"[red]invalid[/] claims plan {path.stem}: {err}")

    for name, path in SPACES.available().items():
        try:
            space = load_space(str(path))
            check_space(space)
            console.print(f"[green]ok[/]      search space {name}: {len(space.params)} parameters")
        except (SearchError, ConfigError) as err:
            bad += 1
            console.print(f"[red]invalid[/] search space {name}: {err}")
    for name, path in REPORTS.available().items():
        try:
            spec = load_report(path)
            check_suites(spec, path)
            console.print(f"[green]ok[/]      report {name}: {len(spec.sections)} sections")
        except ReportError as err:
            bad += 1
            console.print(f"[red]invalid[/] report {name}: {err}")
    if bad:
        raise typer.Exit(code=1)
