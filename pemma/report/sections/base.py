"""What a report section is, and the registry of section kinds.

A kind is one module under report/sections/ whose builder carries the `section_kind` decorator: the
decorator declares the kind's name, what it shows (the HTML page prints it), and its options dataclass
(the YAML keys a section of that kind reads beyond the common ones). The definition loader checks a
section's YAML against the declared options; the renderer calls the builder. Adding a kind is one new
module plus its import line in sections/__init__.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from pemma.methods import reference_method
from pemma.registry import Registry

COMMON = frozenset({"kind", "title", "suite", "note", "methods", "backbones", "where"})
"""Keys every section reads: which suite's runs, filtered to which methods, backbones and config values."""


@dataclass(frozen=True)
class Options:
    """A kind's own YAML keys, as dataclass fields with their defaults. Fields named `subsets` /
    `subset` are checked against the input subsets, `classes` / `klass` as class names (`mean`: their
    mean; `each`, in `classes`: every class the runs hold), `reference` against the methods; tuple
    fields take a list (or one value)."""

    def extra_suites(self) -> tuple[str, ...]:
        """Suites read beside the section's own `suite`."""
        return ()


@dataclass(frozen=True)
class Section:
    kind: str
    title: str
    suite: str
    options: Options = field(default_factory=Options)
    note: str = ""
    methods: tuple[str, ...] = ()  # empty: every method the runs hold
    backbones: tuple[str, ...] = ()
    where: tuple[tuple[str, str], ...] = ()  # config key -> value the runs must have (as logged)

    @property
    def all_suites(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.suite, *self.options.extra_suites())))

    @property
    def reference_method(self) -> str:
        """The method others are compared with: the section's `reference`, else early fusion."""
        return getattr(self.options, "reference", "") or reference_method("parameters")


@dataclass
class Figure:
    name: str
    title: str
    figure: object  # matplotlib.figure.Figure


@dataclass
class Block:
    """A built section: a table of display strings (with a mask of the best value per column), notes
    that say what every number is, and matplotlib figures. Rendering is report/render.py's."""

    section: Section
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    best: pd.DataFrame | None = None  # True where a cell holds its column's best value
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    run_keys: list[str] = field(default_factory=list)


Builder = Callable[[Section, object], Block]  # (section, report.sources.Sources) -> Block


@dataclass(frozen=True)
class SectionKind:
    name: str
    description: str
    options: type[Options]
    build: Builder


KINDS: Registry[SectionKind] = Registry("report section kind")


def section_kind(name: str, description: str, options: type[Options] = Options):
    """Register the decorated builder as the section kind `name`."""

    def register(build: Builder) -> Builder:
        KINDS.add(name, SectionKind(name, description, options, build))
        return build

    return register
