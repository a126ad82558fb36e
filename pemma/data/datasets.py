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
from pemma.data.transforms import augment, preprocess
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
        items = [{k: v for k, v in c.item().items() if k in (*keys, "patient_id")} for c in cases]
        return PersistentDataset(
            items, preprocess(keys, self.cfg.spacing, self.cfg.ct_window), cache_dir=self._cache_dir(keys)
        )

    def crops(
        self, cases: list[Case], keys: tuple[str, ...], roi: tuple[int, int, int], seed: int
    ) -> Dataset:
        """Random training crops; the deterministic prefix is shared with `volumes` on disk."""
        items = [{k: v for k, v in c.item().items() if k in (*keys, "patient_id")} for c in cases]
        pipeline = Compose(
            [
                *preprocess(keys, self.cfg.spacing, self.cfg.ct_window).transforms,
                *augment(keys, roi).transforms,
            ]
        )
        pipeline.set_random_state(seed=seed)
        return PersistentDataset(items, pipeline, cache_dir=self._cache_dir(keys))
