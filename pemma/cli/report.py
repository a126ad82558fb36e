"""`pemma-bench report`: tables and figures regenerated from tracked runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pemma.cli.common import ResultsOpt, _fail, _tracker, app, console
from pemma.cli.run import _print_report


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
    from pemma.report.definition import ReportError, load_report
    from pemma.report.render import FORMATS, generate, write
    from pemma.report.sources import DamagedResults, Sources
    from pemma.resources import REPORTS, SUITES

    if definition is None:
        name = suite or "smoke"
        tracker = _tracker(results, tracking_uri)
        if name not in SUITES.available() and tracker.experiment_id(name, create=False) is None:
            known = ", ".join(sorted(SUITES.available()))
            raise _fail(
                f"--suite {name!r}: no such suite, and no runs of it in {tracker.uri} (shipped: {known})"
            )
        _print_report(tracker, name, results, include_ci, keep_wider=True)
        return
    if suite is not None:
        raise _fail("give a report definition or --suite, not both")
    chosen = tuple(f.strip() for f in formats.split(",") if f.strip())
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise _fail(f"--format {formats!r}: expected a comma-separated subset of {', '.join(FORMATS)}")
    try:
        spec = load_report(REPORTS.find(definition, ReportError))
    except ReportError as err:
        raise _fail(str(err)) from err
    sources = Sources(_tracker(results, tracking_uri), results, include_ci)
    try:
        rendered = generate(spec, sources)
    except DamagedResults as err:
        raise _fail(str(err)) from err
    folder = out or Path(results) / "reports" / spec.name
    for path in write(rendered, folder, chosen):
        console.print(f"wrote {path}")
    for block in rendered.blocks:
        if block.table.empty:
            console.print(
                f"[yellow]empty[/]  {block.section.title}: no finished runs of suite {block.section.suite}"
            )
