"""A report's blocks as GitHub Markdown, LaTeX (booktabs, via pandas Styler) and one self-contained
HTML page with the figures embedded. Markdown and LaTeX are byte-identical when regenerated from the
same runs (no dates, fixed bootstrap generator, stable orders)."""

from __future__ import annotations

import base64
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pemma.files import write_atomic
from pemma.report.definition import Report
from pemma.report.markdown import markdown_table
from pemma.report.sections import KINDS, Block, build
from pemma.report.sources import Sources

FORMATS = ("md", "tex", "html")
TEXT_COLUMNS = frozenset({"method", "backbone", "variant", "suite", "input", "class", "trained on"})
LATEX_SYMBOLS = {"±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "Δ": r"$\Delta$"}


@dataclass
class Rendered:
    report: Report
    blocks: list[Block]
    provenance: list[tuple[str, str]]
    run_keys: list[str]
    figures: dict[tuple[int, str], bytes]  # (section index, figure name) -> PNG

    def figure_path(self, index: int, name: str) -> str:
        return f"figures/{self.report.name}-{index}-{name}.png"


def generate(report: Report, sources: Sources) -> Rendered:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = [build(section, sources) for section in report.sections]
    figures = {}
    for i, block in enumerate(blocks, 1):
        for fig in block.figures:
            buffer = io.BytesIO()
            fig.figure.savefig(
                buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None}
            )
            plt.close(fig.figure)
            figures[(i, fig.name)] = buffer.getvalue()
    keys = sorted({k for b in blocks for k in b.run_keys})
    return Rendered(report, blocks, provenance(report, sources, keys), keys, figures)


def provenance(report: Report, sources: Sources, keys: list[str]) -> list[tuple[str, str]]:
    """What stands behind the numbers: code, packages, devices, data, and what was left out."""
    frames = [sources.suite(s).runs for s in report.suites if not sources.suite(s).empty]
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    runs = runs[runs["tags.run_key"].isin(keys)] if not runs.empty else runs

    def counted(*columns: str) -> str:
        present = [c for c in columns if c in runs]
        if runs.empty or not present:
            return "—"
        values = runs[present].fillna("?").astype(str).agg(" ".join, axis=1)
        return "; ".join(f"{value} ({n} runs)" for value, n in sorted(Counter(values).items()))

    commits = runs.get("tags.git_commit", pd.Series("?", index=runs.index)).fillna("?").astype(str).str[:10]
    dirty = runs.get("tags.git_dirty", pd.Series("?", index=runs.index)).fillna("?").astype(str)
    code = Counter(
        f"{c} ({'dirty' if d == 'true' else 'clean' if d == 'false' else d})"
        for c, d in zip(commits, dirty, strict=True)
    )
    left = []
    for suite in report.suites:
        for why, n in sources.suite(suite).left_out.items():
            left.append(f"{suite}: {n} {why}")
    return [
        ("runs", f"{len(runs)} FINISHED runs from suite(s) {', '.join(report.suites)}"),
        ("commits", "; ".join(f"{c} ({n} runs)" for c, n in sorted(code.items())) or "—"),
        ("packages", counted("tags.torch_version", "tags.monai_version", "tags.peft_version")),
        ("devices", counted("tags.device_name", "tags.dtype")),
        ("profiles", counted("tags.profile")),
        ("data fingerprints", counted("tags.data_fingerprint")),
        ("left out", "; ".join(left) or "none"),
    ]


def _nothing(block: Block) -> str:
    where = ", ".join(f"{k}={v}" for k, v in block.section.where)
    return f"no finished runs of suite {block.section.suite}" + (f" with {where}" if where else "")


# --- Markdown --------------------------------------------------------------------------------------


def markdown(rendered: Rendered) -> str:
    report = rendered.report
    parts = [f"# {report.title}", ""]
    if report.description:
        parts += [report.description, ""]
    for i, block in enumerate(rendered.blocks, 1):
        parts += [f"## {block.section.title}", ""]
        if block.table.empty:
            parts += [f"({_nothing(block)})", ""]
            continue
        parts += [markdown_table(block.table, left=TEXT_COLUMNS, best=block.best), ""]
        notes = [*([block.section.note] if block.section.note else []), *block.notes]
        parts += [" ".join(notes), ""]
        for fig in block.figures:
            parts += [f"![{fig.title}]({rendered.figure_path(i, fig.name)})", ""]
    parts += ["## Provenance", ""]
    parts += [f"- **{name}**: {value}" for name, value in rendered.provenance]
    parts += ["", "<details><summary>run keys behind these numbers</summary>", ""]
    parts += [f"- `{k}`" for k in rendered.run_keys]
    parts += ["", "</details>", ""]
    return "\n".join(parts)


# --- LaTeX -----------------------------------------------------------------------------------------


LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _escape(text: str) -> str:
    """Caption text for LaTeX (table cells go through Styler's own escaping)."""
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_symbols(text: str) -> str:
    for symbol, command in LATEX_SYMBOLS.items():
        text = text.replace(symbol, command)
    return text


def _styler(block: Block):
    styler = block.table.style.hide(axis="index")
    if block.best is not None:
        best = block.best
        styler = styler.apply(lambda _: best.map(lambda b: "font-weight: bold" if b else ""), axis=None)
    return styler


def latex(rendered: Rendered) -> str:
    report = rendered.report
    parts = [
        f"% {report.title}: generated by pemma-bench report from tracked runs; do not edit.",
        "% needs \\usepackage{booktabs} and \\usepackage{graphicx}",
        "",
    ]
    for i, block in enumerate(rendered.blocks, 1):
        if block.table.empty:
            continue
        styler = _styler(block)
        styler = styler.format(lambda v: _latex_symbols(str(v)), escape="latex")
        styler = styler.format_index(lambda v: _latex_symbols(str(v)), escape="latex", axis=1)
        notes = " ".join([*([block.section.note] if block.section.note else []), *block.notes])
        caption = _latex_symbols(_escape(f"{block.section.title}. {notes}"))
        parts.append(
            styler.to_latex(
                column_format="".join("l" if c in TEXT_COLUMNS else "r" for c in block.table.columns),
                hrules=True,
                caption=caption,
                label=f"tab:{report.name}-{i}",
                position="htbp",
                position_float="centering",
                convert_css=True,
            )
        )
        for fig in block.figures:
            parts += [
                "\\begin{figure}[htbp]",
                "\\centering",
                f"\\includegraphics[width=\\linewidth]{{{rendered.figure_path(i, fig.name)}}}",
                f"\\caption{{{_latex_symbols(_escape(fig.title))}}}",
                f"\\label{{fig:{report.name}-{i}-{fig.name}}}",
                "\\end{figure}",
                "",
            ]
    return "\n".join(parts)


# --- HTML ------------------------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th { border-bottom: 2px solid #444; }
td:first-child, th:first-child { text-align: left; }
p.notes { font-size: 0.8rem; color: #555; max-width: 70rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.8rem; color: #555; }
dl.provenance dt { font-weight: 600; } dl.provenance dd { margin: 0 0 0.4rem 1rem; font-size: 0.85rem; }
</style></head><body>
<h1>{{ title }}</h1>
{% if description %}<p>{{ description }}</p>{% endif %}
{% for section in sections %}
<section id="section-{{ loop.index }}" class="{{ section.kind }}">
<h2>{{ section.title }}</h2>
<p class="kind">{{ section.what }}</p>
{% if section.table %}<div class="scroll">{{ section.table | safe }}</div>
<p class="notes">{{ section.notes }}</p>
{% else %}<p>({{ section.nothing }})</p>{% endif %}
{% for fig in section.figures %}
<figure><img alt="{{ fig.title }}" src="data:image/png;base64,{{ fig.data }}">
<figcaption>{{ fig.title }}</figcaption></figure>
{% endfor %}
</section>
{% endfor %}
<section id="provenance"><h2>Provenance</h2><dl class="provenance">
{% for name, value in provenance %}<dt>{{ name }}</dt><dd>{{ value }}</dd>{% endfor %}
</dl>
<details><summary>{{ run_keys | length }} run keys</summary><ul>
{% for key in run_keys %}<li><code>{{ key }}</code></li>{% endfor %}
</ul></details></section>
</body></html>
"""


def html(rendered: Rendered) -> str:
    import jinja2

    sections = []
    for i, block in enumerate(rendered.blocks, 1):
        table = ""
        if not block.table.empty:
            table = (
                _styler(block)
                .set_table_attributes('class="results"')
                .to_html(table_uuid=f"{rendered.report.name}-{i}")
            )
        sections.append(
            {
                "kind": block.section.kind,
                "title": block.section.title,
                "nothing": _nothing(block),
                "what": KINDS.get(block.section.kind).description,
                "table": table,
                "notes": " ".join([*([block.section.note] if block.section.note else []), *block.notes]),
                "figures": [
                    {"title": f.title, "data": base64.b64encode(rendered.figures[(i, f.name)]).decode()}
                    for f in block.figures
                ],
            }
        )
    page = jinja2.Environment(autoescape=True).from_string(PAGE)
    return page.render(
        title=rendered.report.title,
        description=rendered.report.description,
        sections=sections,
        provenance=rendered.provenance,
        run_keys=rendered.run_keys,
    )


def write(rendered: Rendered, out: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write the chosen formats (and, for Markdown and LaTeX, the figure files) under `out`."""
    out = Path(out)
    written = []
    if {"md", "tex"} & set(formats):
        for (i, name), data in sorted(rendered.figures.items()):
            path = out / rendered.figure_path(i, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, lambda tmp, data=data: Path(tmp).write_bytes(data))
            written.append(path)
    render = {"md": markdown, "tex": latex, "html": html}
    for fmt in formats:
        path = out / f"{rendered.report.name}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = render[fmt](rendered)
        write_atomic(path, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
        written.append(path)
    return written
