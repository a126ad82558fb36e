"""Report section kinds: one module each, registered by the `section_kind` decorator (see base.py).
A new kind is a module here plus its import line below."""

from pemma.report.sections import (  # noqa: F401  (each import registers its kind)
    continual,
    examples,
    main,
    missing_modality,
    paired,
    pareto,
    prognosis,
    rank,
    robustness,
)
from pemma.report.sections.base import KINDS, Block, Figure, Section


def build(section: Section, sources) -> Block:
    """The section's table, notes and figures, computed from the tracked runs in `sources`."""
    return KINDS.get(section.kind).build(section, sources)


__all__ = ["KINDS", "Block", "Figure", "Section", "build"]
