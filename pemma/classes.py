"""Segmentation classes: the foreground labels a cohort holds, their values in the label maps and the
names every metric, table and report column uses.

HECKTOR's two classes (GTVp 1, GTVn 2) are the default, and their names (`gtvp`, `gtvn`) are the ones
every HECKTOR-layout run has logged. An nnU-Net raw dataset names its own in `dataset.json`'s
`labels` (data/nnunet.py); the classes then flow from the cohort into the model's output channels,
the loss, the metrics' names, the per-patient tables and the reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
"""A class's metric name: lower case, a letter first, then letters, digits, '_' or '-' (it becomes
part of MLflow metric keys such as `dice_hecktor/ctpet/<name>`)."""
RESERVED = frozenset({"mean", "each", "background"})
"""Names a class cannot take: `mean` is the mean over classes, `each` a report option's wildcard."""


@dataclass(frozen=True)
class Classes:
    """Foreground classes in label order: value k in a label map is `names[k - 1]`; 0 is background."""

    names: tuple[str, ...]
    titles: tuple[str, ...]
    """As a table prints them (the dataset's own spelling: `GTVp`, `lesion`)."""

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("a cohort needs at least one foreground class")
        if len(self.titles) != len(self.names):
            raise ValueError(f"{len(self.names)} class names but {len(self.titles)} titles")
        for name in self.names:
            if not NAME.match(name) or name in RESERVED:
                raise ValueError(
                    f"class name {name!r}: expected lower-case letters, digits, '_' or '-', a letter "
                    f"first, not one of {', '.join(sorted(RESERVED))}"
                )
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"class names {self.names} repeat")

    @property
    def count(self) -> int:
        """Foreground classes; the network predicts count + 1 channels (background first)."""
        return len(self.names)

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(range(1, self.count + 1))

    def title(self, name: str) -> str:
        return dict(zip(self.names, self.titles, strict=True)).get(name, title_of(name))

    def describe(self) -> str:
        """`background 0, GTVp 1, GTVn 2`: how error messages and the data check name them."""
        return ", ".join(
            ["background 0", *(f"{t} {v}" for t, v in zip(self.titles, self.values, strict=True))]
        )

    def mismatch(self, num_classes: int, where: object) -> str | None:
        """What is wrong when a network of `num_classes` outputs is to predict these classes."""
        if num_classes == self.count + 1:
            return None
        return (
            f"model.num_classes: {num_classes}, but {where} labels {self.describe()} ({self.count + 1} "
            "with background): leave model.num_classes and train.class_weights unset to take them from "
            "the cohort"
        )

    @classmethod
    def from_labels(cls, titles: list[str]) -> Classes:
        """Classes from their titles in label order (a dataset's spelling); names are the titles in
        lower case with spaces as '_'."""
        return cls(tuple(metric_name(t) for t in titles), tuple(titles))


def metric_name(title: str) -> str:
    return re.sub(r"\s+", "_", str(title).strip().lower())


HECKTOR = Classes(("gtvp", "gtvn"), ("GTVp", "GTVn"))
"""HECKTOR 2022: primary tumour (1) and lymph nodes (2): the default of every layout and profile."""


def title_of(name: str) -> str:
    """A table's title for a class name or `mean` (the mean over classes, titled `Dice`): HECKTOR's
    spelling for its classes, the name itself otherwise (reports know classes by name only)."""
    if name == "mean":
        return "Dice"
    return dict(zip(HECKTOR.names, HECKTOR.titles, strict=True)).get(name, name)


def ordered(names) -> list[str]:
    """Class names as tables list them: HECKTOR's in label order, then the others alphabetically
    (a run's metrics do not record label order)."""
    rank = {n: i for i, n in enumerate(HECKTOR.names)}
    return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))


def default_weights(count: int) -> tuple[float, ...]:
    """Cross-entropy weights (background first) for a cohort whose class count is not HECKTOR's and
    where the run sets none: all 1, as the PEMMA paper trains (the paper profile's weights)."""
    return (1.0,) * (count + 1)
