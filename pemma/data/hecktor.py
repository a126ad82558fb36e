"""Read a cohort in the HECKTOR 2022 layout (real or synthetic: the same code for both)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pemma.classes import HECKTOR, Classes
from pemma.data.centres import centre_of

CLINICAL_CSV = "hecktor2022_clinical_info_training.csv"
CLINICAL_COLUMNS = (
    "Age",
    "Gender",
    "Weight",
    "Tobacco",
    "Alcohol",
    "Performance status",
    "HPV status (0=-, 1=+)",
    "Surgery",
    "Chemotherapy",
)
"""The HECKTOR 2022 clinical columns prognosis reads as EHR tokens (Gender: M = 1, F = 0)."""
ENDPOINT_CSV = "hecktor2022_endpoint_training.csv"
ID_PATTERN = re.compile(r"^[A-Za-z]+-\d+$")
IMAGE_PATTERN = re.compile(r"^(?P<id>.+)__(?P<mod>CT|PT)\.nii(\.gz)?$")


class CohortError(ValueError):
    """A cohort folder that cannot be used as it is; the message names the file or patient."""


@dataclass(frozen=True)
class Case:
    patient_id: str
    centre: str
    ct: Path
    pet: Path | None
    label: Path | None

    def item(self) -> dict[str, str]:
        """The dict a MONAI pipeline reads: only the files this case has."""
        d = {"patient_id": self.patient_id, "ct": str(self.ct)}
        if self.pet is not None:
            d["pet"] = str(self.pet)
        if self.label is not None:
            d["label"] = str(self.label)
        return d


@dataclass(frozen=True)
class Cohort:
    root: Path
    cases: tuple[Case, ...]
    clinical: pd.DataFrame | None
    endpoints: pd.DataFrame | None
    ignored: tuple[str, ...] = ()
    """Files in imagesTr that match no <ID>__CT / <ID>__PT name (and are therefore not read)."""
    classes: Classes = HECKTOR
    """The foreground classes its labels hold (HECKTOR's; an nnU-Net dataset's from dataset.json)."""
    described_by: tuple[Path, ...] = ()
    """Files that name the channels, classes or centres (an nnU-Net dataset.json, centres.csv): part
    of the fingerprint, since they change what the images mean."""

    def centres(self) -> dict[str, list[Case]]:
        out: dict[str, list[Case]] = {}
        for case in self.cases:
            out.setdefault(case.centre, []).append(case)
        return out

    def fingerprint(self) -> str:
        """Hash of every file's name, size and first MiB: cheap on real data, stable across copies."""
        h = hashlib.sha1()
        files = [p for c in self.cases for p in (c.ct, c.pet, c.label) if p is not None]
        files += [self.root / n for n in (CLINICAL_CSV, ENDPOINT_CSV) if (self.root / n).exists()]
        files += list(self.described_by)
        for path in sorted(files):
            h.update(str(path.relative_to(self.root)).encode())
            h.update(str(path.stat().st_size).encode())
            with path.open("rb") as f:
                h.update(f.read(1 << 20))
        return h.hexdigest()[:12]


def read_cohort(root: Path | str, images: str = "imagesTr") -> Cohort:
    """A cohort in the HECKTOR layout, or an nnU-Net v2 raw dataset (a folder with a dataset.json:
    pemma/data/nnunet.py): `images` (imagesTr, or imagesTs for a test set) and the matching labels
    folder (labelsTr / labelsTs; a case without a label file has none)."""
    root = Path(root)
    if (root / "dataset.json").is_file():
        from pemma.data.nnunet import read_nnunet

        return read_nnunet(root, images)
    labels = root / images.replace("images", "labels", 1)
    folder = images
    images = root / images
    if not images.is_dir():
        raise CohortError(
            f"{root}: no {folder}/ folder; expected the HECKTOR 2022 layout "
            f"({folder}/<ID>__CT.nii.gz, {folder}/<ID>__PT.nii.gz, {labels.name}/<ID>.nii.gz)"
        )
    found: dict[str, dict[str, Path]] = {}
    ignored = []
    for path in sorted(images.iterdir()):
        m = IMAGE_PATTERN.match(path.name)
        if m is None:
            ignored.append(path.name)
            continue
        pid, mod = m["id"], m["mod"]
        if not path.is_file():
            raise CohortError(f"{path}: not a readable file (a folder, or a link to nothing)")
        if not ID_PATTERN.match(pid):
            raise CohortError(
                f"{path}: patient ID {pid!r} names no centre (expected CENTRE-NNN, e.g. CHUM-001)"
            )
        slot = found.setdefault(pid, {})
        if mod in slot:
            raise CohortError(f"{path}: duplicate {mod} image for patient {pid} (also {slot[mod].name})")
        slot[mod] = path
    folded: dict[str, str] = {}
    for pid in found:  # one patient under two spellings would be tested and trained on at once
        other = folded.setdefault(pid.casefold(), pid)
        if other != pid:
            raise CohortError(
                f"{images}: patients {other} and {pid} differ only in case: one patient twice? "
                "(IDs are compared without case)"
            )
    cases = []
    for pid, mods in found.items():
        if "CT" not in mods:
            raise CohortError(
                f"patient {pid}: PET image {mods['PT']} has no CT beside it "
                f"(expected {images / (pid + '__CT.nii.gz')})"
            )
        label = next((p for p in (labels / f"{pid}.nii.gz", labels / f"{pid}.nii") if p.exists()), None)
        cases.append(Case(pid, centre_of(pid), mods["CT"], mods.get("PT"), label))
    if not cases:
        if any(re.search(r"_\d{4}\.nii(\.gz)?$", name) for name in ignored):
            raise CohortError(
                f"{images}: files named <case>_0000.nii.gz, as in an nnU-Net raw dataset, but no "
                f"{root / 'dataset.json'} names their channels"
            )
        raise CohortError(f"{images}: no images named <ID>__CT.nii.gz; the cohort is empty")
    clinical, endpoints = check_tables(root)
    return Cohort(root, tuple(cases), clinical, endpoints, tuple(ignored))


def check_tables(root: Path) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The clinical and endpoint tables beside the images, where present, checked."""
    clinical = _read_table(root / CLINICAL_CSV, ("PatientID",))
    if clinical is not None:
        _check_clinical(root / CLINICAL_CSV, clinical)
    endpoints = _read_table(root / ENDPOINT_CSV, ENDPOINT_COLUMNS)
    if endpoints is not None:
        _check_endpoints(root / ENDPOINT_CSV, endpoints)
    return clinical, endpoints


PLAUSIBLE = {
    "Age": (0, 120),  # years
    "Weight": (20, 350),  # kg
    "Tobacco": (0, 1),
    "Alcohol": (0, 1),
    "Performance status": (0, 4),  # ECOG
    "HPV status (0=-, 1=+)": (0, 1),
    "Surgery": (0, 1),
    "Chemotherapy": (0, 1),
}
"""Documented ranges of the HECKTOR 2022 clinical columns; a value outside is an error, never used."""


def _check_clinical(path: Path, table: pd.DataFrame) -> None:
    """Every clinical value is empty (missing) or a number in its plausible range; Gender M or F."""
    for column, (low, high) in PLAUSIBLE.items():
        if column not in table:
            continue
        raw = table[column]
        value = pd.to_numeric(raw, errors="coerce")
        text = raw.notna() & value.isna()
        if text.any():
            pid, bad = table["PatientID"][text].iloc[0], raw[text].iloc[0]
            raise CohortError(
                f"{path}: patient {pid}: {column} = {bad!r} is not a number ({int(text.sum())} such)"
            )
        outside = value.notna() & ((value < low) | (value > high))
        if outside.any():
            pid, bad = table["PatientID"][outside].iloc[0], value[outside].iloc[0]
            raise CohortError(
                f"{path}: patient {pid}: {column} = {bad:g} is outside its plausible range [{low}, {high}]"
            )
    if "Gender" in table:
        gender = table["Gender"]
        bad = gender.notna() & ~gender.astype(str).str.upper().isin(["M", "F"])
        if bad.any():
            pid, value = table["PatientID"][bad].iloc[0], gender[bad].iloc[0]
            raise CohortError(f"{path}: patient {pid}: Gender = {value!r} (expected M or F)")


ENDPOINT_COLUMNS = ("PatientID", "Relapse", "RFS")


def _read_table(path: Path, required: tuple[str, ...]) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise CohortError(f"{path}: unreadable CSV ({err})") from err
    missing = [c for c in required if c not in table.columns]
    delimiter = next((d for d in ";\t|" if d in str(table.columns[0])), None)
    if missing and delimiter:
        # the first column's name holds another delimiter: a ';'- (or tab-) separated file, as
        # spreadsheets in many locales save it; read it with that delimiter
        try:
            table = pd.read_csv(path, sep=delimiter)
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise CohortError(f"{path}: unreadable CSV with delimiter {delimiter!r} ({err})") from err
        missing = [c for c in required if c not in table.columns]
    if missing:
        raise CohortError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(table.columns)})"
        )
    duplicated = sorted(set(table["PatientID"][table["PatientID"].duplicated()]))
    if duplicated:
        raise CohortError(f"{path}: duplicate PatientID(s) {', '.join(map(str, duplicated[:5]))}")
    return table


def _check_endpoints(path: Path, table: pd.DataFrame) -> None:
    def offenders(mask: pd.Series) -> str:
        return ", ".join(map(str, table["PatientID"][mask].head(5)))

    rfs = pd.to_numeric(table["RFS"], errors="coerce")
    bad_time = rfs.isna() | (rfs < 0)
    if bad_time.any():
        raise CohortError(
            f"{path}: RFS must be a non-negative number of days; patient(s) {offenders(bad_time)}"
        )
    bad_event = ~pd.to_numeric(table["Relapse"], errors="coerce").isin([0, 1])
    if bad_event.any():
        raise CohortError(f"{path}: Relapse must be 0 or 1; patient(s) {offenders(bad_event)}")
