"""mkdocs hook: the CLI reference page (cli.md), generated from the Typer app at every build, so it
cannot drift from the commands' own help."""

from __future__ import annotations

import typer
from mkdocs.structure.files import File
from typer.cli import get_docs_for_click


def on_files(files, config):
    from pemma.cli import app

    command = typer.main.get_command(app)
    text = get_docs_for_click(
        obj=command, ctx=typer.Context(command), name="pemma-bench", title="CLI reference"
    )
    intro = (
        "Generated from the Typer app when the site is built (`mkdocs build`); the same text as "
        "`pemma-bench COMMAND --help`.\n\n"
    )
    title, _, rest = text.strip().partition("\n")
    files.append(File.generated(config, "cli.md", content=f"{title}\n\n{intro}{rest.strip()}\n"))
    return files
