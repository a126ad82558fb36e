"""Adaptations kept for reuse: what a segmentation unit trained on the adaptation centre (its stage 0),
filed under what decides it: the unit's configuration in the adaptation key's scope (all but its
continual stages), and the data.

Units that differ only in their continual stages (the continual suite's orders and input kinds, a
main-suite unit and the continual unit of the same method and seed) train that stage once; the
others load it onto the same CT base and go on from there. The file is the unit's own saved trained
state (a hard link where the file system allows, a copy otherwise) plus its training statistics.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from pemma.config import ADAPTATION_KEY, RunConfig, stable_hash
from pemma.files import CorruptFile, record_digest, save_json
from pemma.methods import Built
from pemma.models.portable import PortableStateError, load_trained
from pemma.training.loop import TrainStats, cast_frozen

log = logging.getLogger(__name__)

FOLDER = "adapted"


def adaptation_key(
    cfg: RunConfig, data_fingerprint: str, train_patients: list[str], revision: int = 0
) -> str:
    """method__backbone__s<seed>__<hash of the config in the adaptation key's scope (no continual.*),
    the data, the patients stage 0 trains on, and the model code's revision where not 0>. The patients
    are in the key, not inferred from the split settings: a unit never loads an adaptation trained on a
    patient outside its own training split (one it may test on), whatever a future plan makes the split
    depend on."""
    identity = {
        "config": cfg.identity(ADAPTATION_KEY),
        "data": data_fingerprint,
        "train": sorted(train_patients),
    }
    digest = stable_hash({**identity, **({"revision": revision} if revision else {})}, length=12)
    return f"{cfg.method}__{cfg.backbone}__s{cfg.seed}__{digest}"


def restore(built: Built, cfg: RunConfig, saved: Path) -> None:
    """Put a unit's saved trained state (models.portable.save_trained) back on `built`, a model the
    method just built on the same CT base: the model the unit scored, frozen weights rounded to bf16
    where it trained with `train.frozen_bf16` (they held those values when it was scored)."""
    if cfg.train.frozen_bf16:
        cast_frozen(built.model, torch.bfloat16)
        cast_frozen(built.model, torch.float32)
    load_trained(built.model, built.trained, saved)


def reusable(cfg: RunConfig) -> bool:
    """Frozen bf16 weights come back from training rounded, so the trained state alone does not
    rebuild the model that was scored: such units always train."""
    return not cfg.train.frozen_bf16


class Adaptations:
    def __init__(self, results: Path) -> None:
        self.folder = Path(results) / FOLDER

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.safetensors", self.folder / f"{key}.json"

    def load(self, key: str, built: Built) -> TrainStats | None:
        """Load the kept adaptation into `built.model`; None (and nothing loaded) if there is none or
        it does not fit (a warning names the file; the unit then trains)."""
        state, stats = self.paths(key)
        if not (state.exists() and stats.exists()):
            return None
        try:
            recorded = TrainStats(**json.loads(stats.read_text()))
            load_trained(built.model, built.trained, state)
        except (CorruptFile, PortableStateError, TypeError, ValueError) as err:
            log.warning("kept adaptation %s unusable (%s); training it again", key, err)
            return None
        return recorded

    def keep(self, key: str, saved: Path, stats: TrainStats) -> None:
        """File `saved` (a unit's trained state, digest recorded) and its training statistics."""
        state, json_path = self.paths(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = state.with_name(f".{state.name}.{os.getpid()}.tmp")
        try:
            os.link(saved, tmp)
        except OSError:
            shutil.copyfile(saved, tmp)
        os.replace(tmp, state)
        record_digest(state)
        save_json(asdict(stats), json_path)
