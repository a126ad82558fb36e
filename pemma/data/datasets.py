"""Preprocessed datasets of one cohort, cached on disk by cohort fingerprint and preprocessing config."""

from __future__ import annotations

from pathlib import Path

import monai
from monai.data import Dataset, PersistentDataset
from monai.transforms import Compose

from pemma.config import DataConfig, stable_hash
from pemma.data.hecktor import Case
from pemma.data.transforms import augment, preprocess


class CohortData:
    def __init__(self, cfg: DataConfig, fingerprint: str, cache_root: Path) -> None:
        self.cfg = cfg
        self.fingerprint = fingerprint
        self.cache_root = Path(cache_root)

    def _cache_dir(self, keys: tuple[str, ...]) -> Path:
        prep = {
            "spacing": self.cfg.spacing,
            "ct_window": self.cfg.ct_window,
            "keys": keys,
            "monai": monai.__version__,
        }
        path = self.cache_root / f"{self.fingerprint}-{stable_hash(prep)}"
        path.mkdir(parents=True, exist_ok=True)
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
