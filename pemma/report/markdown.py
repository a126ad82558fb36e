"""The one GitHub-Markdown table writer every report output uses (report pages, the suite table, the
claims table, the coverage simulation)."""

from __future__ import annotations

from collections.abc import Callable, Collection

import pandas as pd

EMPTY = ("", "—")


def markdown_table(
    table: pd.DataFrame,
    *,
    left: Collection[str] | None = None,
    best: pd.DataFrame | None = None,
    cell: Callable[[object], str] = str,
) -> str:
    """`table` as Markdown: columns in `left` left-aligned (every column when `left` is None), the others
    right-aligned; each value written by `cell`, '|' escaped; a non-empty cell where `best` is True
    in bold."""
    columns = list(table.columns)
    head = "| " + " | ".join(map(str, columns)) + " |"
    rule = "|" + "|".join("---" if left is None or c in left else "---:" for c in columns) + "|"
    body = []
    for i, row in enumerate(table.itertuples(index=False)):
        cells = []
        for column, value in zip(columns, row, strict=True):
            text = cell(value).replace("|", "\\|")
            if best is not None and bool(best.iloc[i][column]) and text not in EMPTY:
                text = f"**{text}**"
            cells.append(text)
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])
