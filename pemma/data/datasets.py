"""Preprocessed datasets of one cohort, cached on disk by cohort fingerprint and preprocessing config."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import monai
from monai.data import Dataset, PersistentDataset
from monai.transforms import Compose

from pemma.config import DataConfig, stable_hash
from pemma.data.hecktor import Case
from pemma.data.transforms import ORIGINAL_CT, ORIGINAL_LABEL, augment, preprocess
from pemma.files import save_json

log = logging.getLogger(__name__)


class CohortData:
    def __init__(self, cfg: DataConfig, fingerprint: str, cache_root: Path) -> None:
        self.cfg = cfg
        self.fingerprint = fingerprint
        self.cache_root = Path(cache_root)

    def _cache_dir(self, keys: tuple[str, ...]) -> Path:
        """One folder per (cohort, preprocessing); a folder whose recorded config differs is rebuilt."""
        prep = {
            "layout": 2,  # items keep the working grid's affine and the original files' paths
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
        items = _items(cases, keys)
        return PersistentDataset(
            items, preprocess(keys, self.cfg.spacing, self.cfg.ct_window), cache_dir=self._cache_dir(keys)
        )

    def crops(
        self, cases: list[Case], keys: tuple[str, ...], roi: tuple[int, int, int], seed: int
    ) -> Dataset:
        """Random training crops; the deterministic prefix is shared with `volumes` on disk."""
        items = _items(cases, keys)
        pipeline = Compose(
            [
                *preprocess(keys, self.cfg.spacing, self.cfg.ct_window).transforms,
                *augment(keys, roi).transforms,
            ]
        )
        pipeline.set_random_state(seed=seed)
        return PersistentDataset(items, pipeline, cache_dir=self._cache_dir(keys))


def _items(cases: list[Case], keys: tuple[str, ...]) -> list[dict[str, str]]:
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
