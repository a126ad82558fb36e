"""Preprocessed datasets of one cohort, cached on disk by cohort fingerprint and preprocessing config."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path

import monai
import torch
from monai.data import Dataset, PersistentDataset, get_track_meta, set_track_meta
from monai.data.utils import pickle_hashing
from monai.transforms import Compose

from pemma.classes import HECKTOR, Classes
from pemma.config import DataConfig, stable_hash
from pemma.data.hecktor import Case
from pemma.data.transforms import BG_INDICES, FG_INDICES, ORIGINAL_CT, ORIGINAL_LABEL, augment, preprocess
from pemma.files import CorruptFile, digest_file, discard, record_digest, save_json, verify

log = logging.getLogger(__name__)


def _portable_hash(item: dict) -> bytes:
    """A cache entry's name from the patient's file names, not their absolute paths: the cache folder
    is already keyed by the cohort's fingerprint, and a moved or copied results folder keeps its cache."""
    return pickle_hashing(
        {k: Path(v).name if isinstance(v, str) and Path(v).is_absolute() else v for k, v in item.items()}
    )


_VERIFIED: dict[str, tuple[int, int, int]] = {}
"""Cache entries this process has verified, with the (inode, size, mtime) they had then: a training
loop reads each entry many times, and hashing it on every read was a share of every step."""


def _stat(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


class VerifiedCache(PersistentDataset):
    """MONAI's on-disk cache with a sha256 recorded beside every entry and checked when this process
    first reads it (and again whenever the file has changed since): an entry that differs (flipped
    bytes, truncation) is rebuilt with a warning naming it. Entries are read memory-mapped: a training
    crop reads the pages it cuts (and, from the cached label indices, its centre), not the whole
    volume (2.6 ms against 88 ms a crop at the paper profile; `bench data`). `drop`: item keys taken
    out after reading (whole volumes do not carry the label indices on).

    `keep_mapped` (the training crops): each entry is mapped once per process and kept, while its
    file is unchanged, instead of being unpickled again on every draw. The crops' transforms read
    the volumes and never write into them (a test trains with them and compares the kept volumes
    with their files); whole volumes, which test-time conditions change, are read anew each time."""

    def __init__(
        self, data, transform, cache_dir: Path, drop: tuple[str, ...] = (), keep_mapped: bool = False
    ) -> None:
        super().__init__(data, transform, cache_dir=cache_dir, hash_func=_portable_hash)
        self.drop = drop
        self.mapped: dict[str, tuple[tuple[int, int, int], dict]] | None = {} if keep_mapped else None
        self._entries: dict[int, tuple[dict, Path]] = {}

    def entry(self, item: dict) -> Path:
        """The cache file of `item` (one of this dataset's items), named once per item: hashing its
        file names on every draw was a tenth of a training crop's time."""
        known = self._entries.get(id(item))
        if known is None or known[0] is not item:
            name = f"{self.hash_func(item).decode('utf-8')}{self.transform_hash}.pt"
            known = self._entries[id(item)] = (item, self.cache_dir / name)
        return known[1]

    def _transform(self, index: int):
        out = super()._transform(index)
        for key in self.drop:
            out.pop(key, None)
        return out

    def _cachecheck(self, item_transformed):
        entry = self.entry(item_transformed)
        seen = _stat(entry) if entry.is_file() else None
        if seen is not None and _VERIFIED.get(str(entry)) != seen:
            try:
                verify(entry)
                _VERIFIED[str(entry)] = seen  # the stat from before reading: a later change re-verifies
            except CorruptFile as err:
                log.warning("%s; rebuilding this cache entry", err)
                discard(entry)
        if entry.is_file():
            kept = self.mapped.get(str(entry)) if self.mapped is not None else None
            if kept is not None and kept[0] == seen:
                return dict(kept[1])  # the item's dict anew; its volumes shared, read only
            with contextlib.suppress(RuntimeError, EOFError):  # unreadable: MONAI's reader decides below
                out = torch.load(entry, weights_only=self.weights_only, mmap=True)
                if self.mapped is not None and seen is not None:
                    self.mapped[str(entry)] = (seen, out)
                    return dict(out)
                return out
        before = get_track_meta()
        set_track_meta(
            True
        )  # preprocessing reads the images' metadata (a crop's reader may have turned it off)
        try:
            out = super()._cachecheck(item_transformed)
        finally:
            set_track_meta(before)
        if not digest_file(entry).is_file():  # MONAI wrote it just now (atomically): record what it wrote
            with contextlib.suppress(FileNotFoundError):  # another process rebuilt it meanwhile
                record_digest(entry)
        return out


class CohortData:
    def __init__(
        self, cfg: DataConfig, fingerprint: str, cache_root: Path, classes: Classes = HECKTOR
    ) -> None:
        self.cfg = cfg
        self.fingerprint = fingerprint
        self.cache_root = Path(cache_root)
        self.classes = classes
        """The cohort's foreground classes, in label order: what its volumes are scored on."""

    def _cache_dir(self, keys: tuple[str, ...]) -> Path:
        """One folder per (cohort, preprocessing); a folder whose recorded config differs is rebuilt."""
        prep = {
            "layout": 4,  # file-named entries, a sha256 beside each, the label's indices in each
            "fingerprint": self.fingerprint,
            "spacing": list(self.cfg.spacing),
            "ct_window": list(self.cfg.ct_window),
            "keys": list(keys),
            "monai": monai.__version__,
        }
        path = self.cache_root / f"{self.fingerprint}-{stable_hash(prep)}"
        record = path / "preprocessing.json"
        if path.exists() and (not record.exists() or json.loads(record.read_text()) != prep):
            log.warning("cache %s was written by another preprocessing config; rebuilding it", path)
            shutil.rmtree(path)
        if not path.exists():
            path.mkdir(parents=True)
            save_json(prep, record)
        return path

    def volumes(self, cases: list[Case], keys: tuple[str, ...]) -> Dataset:
        """Whole preprocessed volumes (for evaluation)."""
        items = items_of(cases, keys)
        indexed = "label" in keys
        return VerifiedCache(
            items,
            preprocess(keys, self.cfg.spacing, self.cfg.ct_window, label_indices=indexed),
            cache_dir=self._cache_dir(keys),
            drop=(FG_INDICES, BG_INDICES) if indexed else (),
        )

    def crops(
        self,
        cases: list[Case],
        keys: tuple[str, ...],
        roi: tuple[int, int, int],
        seed: int,
        cached: bool = True,
        pet_shift: tuple[float, float] = (0.0, 0.5),
    ) -> Dataset:
        """Random training crops; the deterministic prefix is shared with `volumes` on disk (with
        `cached=False`, every draw reads and preprocesses the files again: a benchmark's reference).
        `pet_shift`: (largest mm, probability) of a random PET misregistration per crop (0: none)."""
        items = items_of(cases, keys)
        pipeline = Compose(
            [
                *preprocess(keys, self.cfg.spacing, self.cfg.ct_window, label_indices=cached).transforms,
                *augment(keys, roi, *pet_shift, cached_indices=cached).transforms,
            ]
        )
        pipeline.set_random_state(seed=seed)
        if not cached:
            return Dataset(items, pipeline)
        return VerifiedCache(items, pipeline, cache_dir=self._cache_dir(keys), keep_mapped=True)


def items_of(cases: list[Case], keys: tuple[str, ...]) -> list[dict[str, str]]:
    """Pipeline inputs: the files of `keys`, plus the original CT and label paths, which evaluation
    on the original grid reads (they pass through the transforms untouched)."""
    items = []
    for case in cases:
        item = {k: v for k, v in case.item().items() if k in (*keys, "patient_id")}
        item[ORIGINAL_CT] = str(case.ct)
        if "label" in keys and case.label is not None:
            item[ORIGINAL_LABEL] = str(case.label)
        items.append(item)
    return items
