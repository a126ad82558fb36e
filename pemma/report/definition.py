"""Report definitions: YAML files (reports/*.yaml) naming the tables and figures of a paper.

A report is a title and a list of sections; each section has a `kind` (what it computes), the
suite(s) whose runs it reads and a few options. Adding a table is adding a section; a typo is refused
with the file, the section and did-you-mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from pemma.methods import METHODS, reference_method
from pemma.metrics.segmentation import CLASSES
from pemma.modalities import SUBSETS
from pemma.resources import SUITES, did_you_mean, read_yaml

CLASS_NAMES = ("mean", *CLASSES.values())

# kind -> what it shows; the options each kind reads (beyond kind, title, suite, note, methods, backbones)
KINDS: dict[str, tuple[str, frozenset[str]]] = {
    "main": (
        "method x backbone: Dice per input subset and class (mean ± std over seeds, BCa CI over "
        "patients), parameters, throughput, memory; best value per column in bold",
        frozenset({"subsets", "classes", "extras"}),
    ),
    "paired": (
        "each method minus a reference on the same patients: aggregated-Dice difference with its BCa "
        "CI, Wilcoxon signed-rank p over patients, Holm-adjusted across the table",
        frozenset({"subsets", "classes", "reference"}),
    ),
    "missing-modality": (
        "train subset x test subset per method, with the relative drop from CT+PET",
        frozenset({"subsets"}),
    ),
    "continual": (
        "R matrices as heatmaps; ACC / BWT / forgetting with t intervals over seeds",
        frozenset({"subsets"}),
    ),
    "rank": (
        "Dice against adapter rank per method (and alpha rule), with BCa CIs over patients",
        frozenset({"x", "subset", "klass"}),
    ),
    "pareto": (
        "Dice against trainable parameters over every method and variant; the Pareto front marked",
        frozenset({"suites", "subset", "klass"}),
    ),
    "prognosis": (
        "Harrell's C (BCa CI over test patients), its change vs CT-only, Uno's C, AUC, IBS; "
        "Kaplan-Meier curves of predicted low / high risk with a log-rank p",
        frozenset(),
    ),
}
LISTS = frozenset({"methods", "backbones", "subsets", "classes", "extras", "suites"})
COMMON = frozenset({"kind", "title", "suite", "note", "methods", "backbones", "where"})


class ReportError(ValueError):
    """A report definition that cannot be used; the message names the file and the section."""


@dataclass(frozen=True)
class Section:
    kind: str
    title: str
    suite: str
    note: str = ""
    methods: tuple[str, ...] = ()  # empty: every method the runs hold
    backbones: tuple[str, ...] = ()
    where: tuple[tuple[str, str], ...] = ()  # config key -> value the runs must have (as logged)
    subsets: tuple[str, ...] = SUBSETS
    classes: tuple[str, ...] = ("mean",)
    extras: tuple[str, ...] = (
        "params_trainable",
        "params_trainable_pct_of_reference",
        "saved_bytes",
        "train_samples_per_s",
        "train_peak_memory_mb",
    )
    reference: str = ""  # paired: default early fusion (the methods' 'parameters' reference)
    x: str = "adapter.rank"
    subset: str = "ctpet"
    klass: str = "mean"
    suites: tuple[str, ...] = ()

    @property
    def all_suites(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.suite, *self.suites)))

    @property
    def reference_method(self) -> str:
        return self.reference or reference_method("parameters")


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
            f"{where}: unknown kind {kind!r}{did_you_mean(str(kind), KINDS)} (known: {', '.join(KINDS)})"
        )
    where = f"{where} ({kind}, {raw.get('title', 'untitled')!r})"
    allowed = COMMON | KINDS[kind][1]
    for key in raw:
        if key not in allowed:
            raise ReportError(
                f"{where}: unknown option {key!r}{did_you_mean(str(key), allowed)} "
                f"(a {kind} section reads: {', '.join(sorted(allowed))})"
            )
    for key in ("title", "suite"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ReportError(f"{where}: {key!r} is required (a non-empty string)")
    values = dict(raw)
    names = {f.name for f in fields(Section)}
    conditions = raw.get("where", {})
    if not isinstance(conditions, dict):
        raise ReportError(f"{where}: 'where' maps config keys to values, e.g. {{continual.inputs: ct}}")
    values["where"] = tuple(sorted((str(k), logged(v)) for k, v in conditions.items()))
    for key, value in raw.items():
        if key == "where":
            continue
        if key in LISTS:
            values[key] = tuple(str(v) for v in (value if isinstance(value, list) else [value]))
        elif isinstance(value, list):
            raise ReportError(f"{where}: {key!r} takes one value, not a list")
    for subset in (*values.get("subsets", ()), values.get("subset", "ctpet")):
        if subset not in SUBSETS:
            raise ReportError(
                f"{where}: unknown input subset {subset!r}; expected one of {', '.join(SUBSETS)}"
            )
    for klass in (*values.get("classes", ()), values.get("klass", "mean")):
        if klass not in CLASS_NAMES:
            raise ReportError(
                f"{where}: unknown class {klass!r}{did_you_mean(klass, CLASS_NAMES)} "
                f"(known: {', '.join(CLASS_NAMES)})"
            )
    try:
        values["methods"] = tuple(METHODS.canonical(m) for m in values.get("methods", ()))
        if values.get("reference"):
            values["reference"] = METHODS.canonical(values["reference"])
    except KeyError as err:
        raise ReportError(f"{where}: {err}") from err
    return Section(**{k: v for k, v in values.items() if k in names})
