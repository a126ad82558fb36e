"""Report definitions: YAML files (reports/*.yaml) naming the tables and figures of a paper.

A report is a title and a list of sections; each section has a `kind` (what it computes), the
suite(s) whose runs it reads and a few options. Adding a table is adding a section; a typo is refused
with the file, the section and did-you-mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from pemma.classes import NAME, RESERVED
from pemma.conditions import CONDITIONS
from pemma.methods import METHODS
from pemma.modalities import SUBSETS
from pemma.report.sections.base import COMMON, KINDS, Section
from pemma.resources import SUITES, did_you_mean, read_yaml


class ReportError(ValueError):
    """A report definition that cannot be used; the message names the file and the section."""


@dataclass(frozen=True)
class Report:
    name: str
    title: str
    description: str = ""
    sections: tuple[Section, ...] = field(default_factory=tuple)

    @property
    def suites(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s for sec in self.sections for s in sec.all_suites))


def check_suites(report: Report, path: Path) -> None:
    """Every suite a report names exists (shipped, or on PEMMA_SUITE_PATH)."""
    known = SUITES.available()
    for number, section in enumerate(report.sections, 1):
        for suite in section.all_suites:
            if suite not in known:
                raise ReportError(
                    f"{path}: section {number} ({section.kind}, {section.title!r}): unknown suite "
                    f"{suite!r}{did_you_mean(suite, known)}"
                )


def load_report(path: Path) -> Report:
    path = Path(path)
    raw = read_yaml(path, "report definition", ReportError)
    if not isinstance(raw, dict):
        raise ReportError(f"{path}: a report definition is a mapping with 'title' and 'sections'")
    unknown = set(raw) - {"title", "description", "sections"}
    for key in sorted(unknown):
        raise ReportError(
            f"{path}: unknown key {key!r}{did_you_mean(key, {'title', 'description', 'sections'})}"
        )
    sections = raw.get("sections")
    if not isinstance(sections, list) or not sections:
        raise ReportError(f"{path}: 'sections' must be a non-empty list")
    return Report(
        name=path.stem,
        title=str(raw.get("title") or path.stem),
        description=str(raw.get("description") or "").strip(),
        sections=tuple(_section(path, i, s) for i, s in enumerate(sections, 1)),
    )


def logged(value) -> str:
    """A config value as MLflow holds it (lists are tuples in the resolved config)."""
    return str(tuple(value)) if isinstance(value, list) else str(value)


def _section(path: Path, number: int, raw) -> Section:
    where = f"{path}: section {number}"
    if not isinstance(raw, dict):
        raise ReportError(f"{where}: a section is a mapping with 'kind', 'title' and 'suite'")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ReportError(
            f"{where}: unknown kind {kind!r}{did_you_mean(str(kind), KINDS.names())} "
            f"(known: {', '.join(KINDS.names())})"
        )
    where = f"{where} ({kind}, {raw.get('title', 'untitled')!r})"
    declared = {f.name: f for f in fields(KINDS.get(kind).options)}
    allowed = COMMON | set(declared)
    for key in raw:
        if key not in allowed:
            raise ReportError(
                f"{where}: unknown option {key!r}{did_you_mean(str(key), allowed)} "
                f"(a {kind} section reads: {', '.join(sorted(allowed))})"
            )
    for key in ("title", "suite"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ReportError(f"{where}: {key!r} is required (a non-empty string)")
    conditions = raw.get("where", {})
    if not isinstance(conditions, dict):
        raise ReportError(f"{where}: 'where' maps config keys to values, e.g. {{continual.inputs: ct}}")
    try:
        options = {key: _option(key, raw[key], declared[key].type) for key in declared if key in raw}
        methods = tuple(METHODS.canonical(str(m)) for m in _as_list(raw.get("methods", [])))
    except (KeyError, ValueError) as err:
        raise ReportError(f"{where}: {err}") from err
    return Section(
        kind=kind,
        title=raw["title"],
        suite=raw["suite"],
        options=KINDS.get(kind).options(**options),
        note=str(raw.get("note", "")),
        methods=methods,
        backbones=tuple(str(b) for b in _as_list(raw.get("backbones", []))),
        where=tuple(sorted((str(k), logged(v)) for k, v in conditions.items())),
    )


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


# Option names whose values are checked wherever a kind declares them.
CHECKED = {
    "subsets": SUBSETS,
    "subset": SUBSETS,
    "conditions": tuple(n for n, c in CONDITIONS.items() if c.transform is not None),
}


def _option(key: str, value, declared_type) -> object:
    """One declared option's value: a tuple for tuple fields, one string otherwise; checked values."""
    many = "tuple" in str(declared_type)
    if not many and isinstance(value, list):
        raise ValueError(f"{key!r} takes one value, not a list")
    values = tuple(str(v) for v in _as_list(value)) if many else (str(value),)
    known = CHECKED.get(key)
    for v in values if known else ():
        if v not in known:
            what = {"subsets": "input subset", "subset": "input subset", "conditions": "test-time condition"}
            what = what.get(key, "class")
            raise ValueError(f"unknown {what} {v!r}{did_you_mean(v, known)} (known: {', '.join(known)})")
    for v in values if key in ("classes", "klass") else ():
        wildcard = ("mean", "each") if key == "classes" else ("mean",)
        if v not in wildcard and (not NAME.match(v) or v in RESERVED):
            raise ValueError(
                f"{key}: {v!r} is not a class name (lower case, as the metrics name it: gtvp, gtvn, "
                f"lesion) nor {' / '.join(wildcard)}"
            )
    if key == "reference" and values[0]:
        values = (METHODS.canonical(values[0]),)
    return values if many else values[0]
