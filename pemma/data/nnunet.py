"""Read a cohort kept as an nnU-Net v2 raw dataset: `DatasetXXX_Name/imagesTr/<case>_0000.nii.gz`
(one file per channel), `labelsTr/<case>.nii.gz`, and a `dataset.json` naming the channels, the labels
and the file ending. HECKTOR is often converted to it, and so are the autoPET FDG-PET/CT datasets.

The channels are mapped to CT and PET from `channel_names` (case-insensitive "CT"; "PET" or "PT"); a
dataset whose channels cannot be mapped is refused, naming them. Centres come from `centres.csv`
beside `dataset.json` where it names the case (columns `case`, `centre`), else from the case ID where
it carries one (`CHUM-001`), else from a centre column of the clinical file (`centre`, `center` or
HECKTOR's `CenterID`, any case); a case without a centre is an error naming it. The clinical and
endpoint tables of the HECKTOR layout are read from the same folder when present. Both readers
produce the same Cohort, so everything downstream is the same code.

Classes come from `labels`: `background` 0 and the foreground classes numbered 1, 2, ... in order,
as nnU-Net v2 requires; their names become the metrics' names (`GTVp` -> `dice_hecktor/ctpet/gtvp`,
autoPET's `lesion` -> `.../lesion`). Region-based labels (a list of values per name) are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pemma.classes import HECKTOR, Classes
from pemma.data.centres import centre_of
from pemma.data.hecktor import (
    CLINICAL_CSV,
    ID_PATTERN,
    Case,
    Cohort,
    CohortError,
    check_tables,
)

DATASET_JSON = "dataset.json"
CENTRES_CSV = "centres.csv"
MODALITIES = {"ct": "CT", "pet": "PET", "pt": "PET"}


def is_nnunet(root: Path) -> bool:
    return (Path(root) / DATASET_JSON).is_file()


def classes_at(root: Path) -> Classes:
    """The classes of the cohort folder `root` from its description alone (no image is read): an
    nnU-Net dataset's `labels`, HECKTOR's for the HECKTOR layout."""
    if not is_nnunet(root):
        return HECKTOR
    return read_classes(read_dataset_json(root), Path(root) / DATASET_JSON)


def read_dataset_json(root: Path) -> dict:
    path = Path(root) / DATASET_JSON
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CohortError(
            f"{root}: no {DATASET_JSON}; an nnU-Net raw dataset names its channels there"
        ) from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CohortError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(spec, dict):
        raise CohortError(f"{path}: expected a JSON object with channel_names, labels, file_ending")
    missing = [k for k in ("channel_names", "labels", "file_ending") if k not in spec]
    if missing:
        raise CohortError(f"{path}: no {', '.join(missing)} (nnU-Net v2's dataset.json names them)")
    return spec


def channels(spec: dict, path: Path) -> dict[str, str]:
    """'CT' / 'PET' -> the channel's four-digit suffix (`0000`)."""
    names = spec["channel_names"]
    found: dict[str, str] = {}
    for index, name in names.items():
        modality = MODALITIES.get(str(name).strip().lower())
        if modality is None:
            continue
        if modality in found:
            raise CohortError(f"{path}: two channels are {modality} ({names})")
        found[modality] = f"{int(index):04d}"
    if "CT" not in found:
        raise CohortError(
            f"{path}: channel_names {names} name no CT channel (expected 'CT', and 'PET' or 'PT' for PET)"
        )
    return found


def read_classes(spec: dict, path: Path) -> Classes:
    """The foreground classes `labels` names: background 0, then 1..n without a gap, one name each."""
    labels = spec["labels"]
    if not isinstance(labels, dict) or not labels:
        raise CohortError(f"{path}: labels must map each class name to its value, got {labels!r}")
    regions = [name for name, value in labels.items() if isinstance(value, list | tuple)]
    if regions:
        raise CohortError(
            f"{path}: labels {', '.join(regions)} are regions (lists of values); this harness scores one "
            "value per class"
        )
    if any(not isinstance(v, int) or isinstance(v, bool) for v in labels.values()):
        raise CohortError(f"{path}: label values must be integers, got {labels}")
    by_value = {v: str(name) for name, v in labels.items()}
    if by_value.get(0, "").strip().lower() != "background":
        raise CohortError(f"{path}: labels {labels}: value 0 must be 'background'")
    count = len(labels) - 1
    if len(by_value) != len(labels) or sorted(by_value) != list(range(count + 1)):
        raise CohortError(
            f"{path}: labels {labels}: values must be 0 (background), then 1..{count} each once, as "
            "nnU-Net v2 requires"
        )
    if count == 0:
        raise CohortError(f"{path}: labels {labels} name no class besides background")
    try:
        return Classes.from_labels([by_value[v] for v in range(1, count + 1)])
    except ValueError as err:
        raise CohortError(f"{path}: labels {labels}: {err}") from err


CENTRE_COLUMNS = ("centre", "center", "centreid", "centerid")
"""Names (any case) of a clinical-file column that gives each case its centre (HECKTOR's `CenterID`)."""


def _clinical_centres(clinical: pd.DataFrame | None) -> tuple[dict[str, str], str]:
    """Case -> centre from a column of the clinical file, where it has one; and where it came from."""
    if clinical is None:
        return {}, ""
    column = next((c for c in clinical.columns if str(c).strip().lower() in CENTRE_COLUMNS), None)
    if column is None:
        return {}, ""
    named = clinical[clinical[column].notna()]
    values = named[column].map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
    return dict(
        zip(named["PatientID"].astype(str), values.str.strip(), strict=True)
    ), f"{column} of {CLINICAL_CSV}"


def _centres(root: Path, cases: list[str], clinical: pd.DataFrame | None) -> dict[str, str]:
    """Each case's centre: from centres.csv where it names the case, else from the case ID
    (CENTRE-NNN), else from a centre column of the clinical file; a case with none is an error."""
    table_path = root / CENTRES_CSV
    table: dict[str, str] = {}
    if table_path.is_file():
        frame = pd.read_csv(table_path, dtype=str, sep=None, engine="python")
        if not {"case", "centre"} <= set(frame.columns):
            raise CohortError(
                f"{table_path}: expected columns case, centre; found {', '.join(frame.columns)}"
            )
        table = dict(zip(frame["case"].str.strip(), frame["centre"].str.strip(), strict=True))
    from_clinical, source = _clinical_centres(clinical)
    out = {}
    for case in cases:
        if case in table:
            out[case] = table[case]
        elif ID_PATTERN.match(case):
            out[case] = centre_of(case)
        elif case in from_clinical:
            out[case] = from_clinical[case]
        else:
            where = (
                f"not in {table_path}" if table else f"and there is no {CENTRES_CSV} beside {DATASET_JSON}"
            )
            where += f", nor in {source}" if source else ""
            raise CohortError(f"case {case}: no centre: its ID names none (CENTRE-NNN) {where}")
    return out


def read_nnunet(root: Path | str, images: str = "imagesTr") -> Cohort:
    root = Path(root)
    spec = read_dataset_json(root)
    spec_path = root / DATASET_JSON
    mapping = channels(spec, spec_path)
    classes = read_classes(spec, spec_path)
    ending = str(spec["file_ending"])
    folder = root / images
    labels = root / images.replace("images", "labels", 1)
    if not folder.is_dir():
        raise CohortError(f"{root}: no {images}/ folder")
    files: dict[str, dict[str, Path]] = {}
    ignored = []
    suffixes = {suffix: modality for modality, suffix in mapping.items()}
    for path in sorted(folder.iterdir()):
        name = path.name
        if not name.endswith(ending):
            ignored.append(name)
            continue
        stem = name[: -len(ending)]
        case, _, suffix = stem.rpartition("_")
        if not case or len(suffix) != 4 or not suffix.isdigit():
            ignored.append(name)
            continue
        if suffix in suffixes:
            files.setdefault(case, {})[suffixes[suffix]] = path
    if not files:
        other = sorted({Path(n).suffix for n in ignored})
        raise CohortError(
            f"{folder}: no image named <case>_<channel>{ending} (file_ending in {spec_path}); "
            + (f"found files ending in {', '.join(other)}" if other else "the folder is empty")
        )
    clinical, endpoints = check_tables(root)
    centres = _centres(root, sorted(files), clinical)
    cases = []
    for case, found in files.items():
        for modality in mapping:
            if modality not in found:
                expected = folder / f"{case}_{mapping[modality]}{ending}"
                raise CohortError(f"case {case}: no {modality} channel (expected {expected})")
        label = labels / f"{case}{ending}"
        cases.append(
            Case(case, centres[case], found["CT"], found.get("PET"), label if label.exists() else None)
        )
    described = tuple(p for p in (spec_path, root / CENTRES_CSV) if p.is_file())
    return Cohort(root, tuple(cases), clinical, endpoints, tuple(ignored), classes, described)


def layout_of(root: Path) -> str:
    """What `data check` says of a cohort folder's layout: HECKTOR, or nnU-Net with its channels."""
    root = Path(root)
    if not is_nnunet(root):
        return "HECKTOR 2022 (imagesTr/<ID>__CT|PT.nii.gz, labelsTr/<ID>.nii.gz)"
    spec = read_dataset_json(root)
    mapped = channels(spec, root / DATASET_JSON)
    centres = "centres from " + (
        f"{CENTRES_CSV}, then the case IDs" if (root / CENTRES_CSV).is_file() else "the case IDs"
    )
    return (
        f"nnU-Net v2 raw dataset: channels {', '.join(f'{m} = _{s}' for m, s in mapped.items())} "
        f"(of {dict(spec['channel_names'])}), labels {dict(spec['labels'])}, file ending "
        f"{spec['file_ending']}, {centres}"
    )


def write_dataset_json(root: Path, cases: int, pet: bool = True, classes: Classes = HECKTOR) -> None:
    spec = {
        "channel_names": {"0": "CT", **({"1": "PET"} if pet else {})},
        "labels": {"background": 0, **{t: v for t, v in zip(classes.titles, classes.values, strict=True)}},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (Path(root) / DATASET_JSON).write_text(json.dumps(spec, indent=2) + "\n")
