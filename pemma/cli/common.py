"""The app, the options several commands share, and the one error -> exit policy: a known error is one
line and exit 2 (_fail), an unexpected one a line and exit 1 (the traceback with --debug)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
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


SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Config override key=value (repeatable).")]


DataOpt = Annotated[Path | None, typer.Option(help="HECKTOR-layout cohort; default: built-in synthetic.")]


def _split(values: list[str] | None, option: str) -> list[str] | None:
    """A repeatable, comma-separated option's values; None when the option was not given. Given but
    empty (`--methods ''`, an unset shell variable) is an error, never 'all'."""
    if values is None:
        return None
    out = [v.strip() for text in values for v in text.split(",") if v.strip()]
    if not out:
        raise _fail(f"{option}: empty; give at least one value, or leave {option} out for the default")
    return out


def _wide() -> Console:
    """Tables are wide: outside a terminal (logs, CI) print them at 200 columns rather than 80."""
    return console if console.is_terminal else Console(width=max(console.width, 260))


def _seeds(seeds: list[str] | None) -> list[int] | None:
    from pemma.config import ConfigError

    values = _split(seeds, "--seeds") or []
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


def _print_frame(table, title: str, digits: str = ",.2f") -> None:
    shown = table.copy()
    for col in shown.columns:
        if shown[col].dtype.kind == "f":
            shown[col] = shown[col].map(lambda v: format(v, digits))
    wide = _wide()
    wide.print(_table(shown, title))


def main() -> None:  # pragma: no cover
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    app()


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, Slurm, Kubernetes), handled like Ctrl-C: the running unit ends KILLED."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def stoppable(what: str):
    """SIGTERM handled like Ctrl-C inside the block; either ends the command with a line saying what
    became of the running work (`what`) and exit 143 (SIGTERM) or 130 (Ctrl-C)."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    except KeyboardInterrupt as err:
        name = "SIGTERM" if isinstance(err, Terminated) else "interrupt"
        console.print(f"[red]stopped by {name}[/]: {what}")
        raise typer.Exit(code=143 if isinstance(err, Terminated) else 130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
