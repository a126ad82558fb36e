"""Shipped YAML files found by name: suites, search spaces, reports, claims plans, rates, profiles and
data plans, each a `Shelf` of folders (the user's first, from an environment variable, then the
shipped one); and the one did-you-mean and YAML reader the error messages share.

The top-level folders (benchmarks/, ablations/, reports/) lie beside the package in a source checkout
and inside it, under `_shipped/`, in a wheel (pyproject.toml's force-include).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PACKAGE = Path(__file__).resolve().parent
SHIPPED = PACKAGE / "_shipped"
YAML_SUFFIXES = (".yaml", ".yml")


class ResourceError(ValueError):
    """A named file that is not on its shelf, or a YAML file that cannot be read."""


def did_you_mean(word: str, known: Iterable[str], n: int = 2) -> str:
    """'; did you mean 'x' or 'y'?' for the closest known names, or '' when none is close."""
    close = difflib.get_close_matches(str(word), sorted(known), n=n, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def top_folder(name: str) -> Path:
    """A top-level folder (e.g. 'reports', 'ablations/search'): in the wheel or in the checkout."""
    return SHIPPED / name if SHIPPED.is_dir() else PACKAGE.parent / name


def read_yaml(path: Path, what: str, error: type[Exception] = ResourceError) -> Any:
    """A YAML file's contents; an unreadable file or a syntax error names the file and the line."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise error(f"{path}: cannot read the {what} ({err.strerror})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise error(f"{path}:{where} not valid YAML: {problem}") from err


@dataclass(frozen=True)
class Shelf:
    """Named YAML files of one kind: `kind` names it in messages; `folders` are top-level folder
    names (see top_folder) or, with `in_package`, folders of the package; `env` lists extra folders
    (os.pathsep-separated) searched first. Files whose name starts with '_' are includes, not entries."""

    kind: str
    folders: tuple[str, ...]
    env: str = ""
    in_package: bool = False

    def dirs(self) -> list[Path]:
        extra = [Path(p) for p in os.environ.get(self.env, "").split(os.pathsep) if p] if self.env else []
        shipped = [PACKAGE / f if self.in_package else top_folder(f) for f in self.folders]
        return [*extra, *shipped]

    def available(self) -> dict[str, Path]:
        """name -> file, the first folder winning a name."""
        found: dict[str, Path] = {}
        for folder in self.dirs():
            for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
                if not path.name.startswith("_"):
                    found.setdefault(path.stem, path)
        return found

    def find(self, name_or_path: str | Path, error: type[Exception] = ResourceError) -> Path:
        """A file by path (ending in .yaml / .yml), or an entry by name; else `error` with
        did-you-mean, the known names and the folders searched."""
        path = Path(name_or_path)
        if path.suffix in YAML_SUFFIXES and path.is_file():
            return path
        known = self.available()
        if str(name_or_path) in known:
            return known[str(name_or_path)]
        raise error(
            f"unknown {self.kind} {str(name_or_path)!r}{did_you_mean(str(name_or_path), known)} "
            f"(known: {', '.join(known) or 'none'}; a path ending in .yaml also works; searched "
            f"{', '.join(str(d) for d in self.dirs())})"
        )


SUITES = Shelf("suite", ("benchmarks", "ablations"), env="PEMMA_SUITE_PATH")
SPACES = Shelf("search space", ("ablations/search",), env="PEMMA_SEARCH_PATH")
REPORTS = Shelf("report definition", ("reports",))
CLAIMS_PLANS = Shelf("claims plan", ("reports/claims",))
RATES = Shelf("rates file", ("reports/rates",))
PROFILES = Shelf("profile", ("profiles",), in_package=True)
DATA_PLANS = Shelf("data plan", ("plans",), in_package=True)
