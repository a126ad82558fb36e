"""The CT-pretrained base: trained once per (backbone, model, pretraining, data, seed), cached by hash."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.config import ConfigError, ModelConfig, PretrainConfig, RunConfig, stable_hash
from pemma.data.datasets import CohortData
from pemma.data.splits import Plan
from pemma.files import CorruptFile, load_state, save_json, save_state
from pemma.locks import locked
from pemma.modalities import CT
from pemma.models.backbones import BACKBONES
from pemma.models.fusion import CTOnly
from pemma.models.networks import set_memory_format
from pemma.tasks.segmentation.evaluation import evaluate
from pemma.training.loop import train

log = logging.getLogger(__name__)
CT_KEYS = ("ct", "label")


def _changed(section, default) -> dict:
    """A section's values that differ from its defaults: adding an option keeps cached bases valid."""
    ref = asdict(default)
    return {k: v for k, v in asdict(section).items() if v != ref[k]}


def check_pretrained(path: str) -> None:
    """A user's CT-pretrained state (pretrain.checkpoint): a file torch loads as plain weights (a
    state dict of tensors), checked before any data step; a ConfigError naming it otherwise. Loading
    never falls back to unpickling code (weights_only stays on)."""
    if not Path(path).is_file():
        raise ConfigError(f"pretrain.checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for code, RuntimeError / EOFError for other files
        raise ConfigError(
            f"pretrain.checkpoint {path}: not a plain weights file (a state dict of tensors): "
            f"{type(err).__name__}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"pretrain.checkpoint {path}: not a state dict of tensors")


def base_key(cfg: RunConfig, data_fingerprint: str) -> str:
    d = cfg.data
    return stable_hash(
        {
            "backbone": cfg.backbone,
            "model": _changed(cfg.model, ModelConfig()),
            "pretrain": _changed(cfg.pretrain, PretrainConfig()),
            "data": data_fingerprint,
            "spacing": d.spacing,
            "ct_window": d.ct_window,
            "centres": d.pretrain_centres,
            "split": d.split,
            "split_seed": cfg.split_seed,
            "seed": cfg.seed,
            "class_weights": cfg.train.class_weights,
            # crops seeded per sample are other crops; the old stream is left out (older bases keep keys)
            **({"seeding": cfg.train.augment_seeding} if cfg.train.augment_seeding != "stream" else {}),
        },
        length=12,
    )


def base_folder(cfg: RunConfig, data_fingerprint: str, cache_root: Path) -> Path:
    """Where the CT base of `cfg` is cached (base.pt, base.json)."""
    return Path(cache_root) / f"{cfg.backbone}-{base_key(cfg, data_fingerprint)}"


def is_cached(folder: Path) -> bool:
    return (folder / "base.pt").exists() and (folder / "base.json").exists()


def pretrained_base(
    cfg: RunConfig,
    data: CohortData,
    plan: Plan,
    cache_root: Path,
    device: torch.device,
    stage: Callable[[str, int], Callable[[int, float], None] | None] | None = None,
    checkpoint_root: Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The CT base for `cfg`: the user's checkpoint, the cached one, or trained now and cached.

    Training resumes from `checkpoint_root`/base-<key>/pretrain.pt after a crash; the checkpoint
    goes once the base is cached.
    """
    backbone = BACKBONES.get(cfg.backbone)
    torch.manual_seed(cfg.seed)
    net = backbone.build(cfg.model, 1)
    if cfg.pretrain.checkpoint:
        net.load_state_dict(load_state(Path(cfg.pretrain.checkpoint)))
        return net, {"source": cfg.pretrain.checkpoint}
    folder = base_folder(cfg, data.fingerprint, cache_root)
    with locked(Path(cache_root), folder.name):  # one process trains a base; the others wait, then load it
        return _cached_or_trained(cfg, net, folder, data, plan, device, stage, checkpoint_root)


def _cached_or_trained(cfg, net, folder, data, plan, device, stage, checkpoint_root):
    if is_cached(folder):
        try:
            net.load_state_dict(load_state(folder / "base.pt"))
            return net, json.loads((folder / "base.json").read_text())
        except (CorruptFile, ValueError) as err:  # ValueError: JSONDecodeError of a broken base.json
            log.warning("the cached CT base is broken (%s); training it again", err)
            shutil.rmtree(folder)
    set_memory_format(net, cfg.model.channels_last)
    model = CTOnly(net)
    crops = data.crops(plan.pretrain["train"], CT_KEYS, cfg.model.roi, seed=cfg.seed)
    # The adaptation's numerics options (frozen bf16, compile) are not the base's: its key holds neither.
    budget = replace(
        cfg.train,
        steps=cfg.pretrain.steps,
        batch_size=cfg.pretrain.batch_size,
        lr=cfg.pretrain.lr,
        frozen_bf16=False,
        compile=False,
    )
    resume = Path(checkpoint_root) / f"base-{folder.name}" if checkpoint_root else None
    stats = train(
        model,
        crops,
        budget,
        subsets=(CT,),
        probabilities=(1.0,),
        seed=cfg.seed,
        device=device,
        on_step=stage("CT pretraining", cfg.pretrain.steps) if stage else None,
        checkpoint=resume / "pretrain.pt" if resume else None,
    )
    check_cases = plan.pretrain["val"] or plan.pretrain["test"]
    result = evaluate(
        model, data.volumes(check_cases, CT_KEYS), (CT,), cfg.model.roi, cfg.eval, device, cfg.train.amp,
        classes=data.classes,
    )[CT]  # fmt: skip
    missing = [c for c, v in result.aggregated.items() if c != "mean" and not v > 0]
    if missing:
        log.warning(
            "the CT base predicts no %s on its validation cases: a frozen decoder cannot learn a class "
            "the base never predicts; train it longer (pretrain.steps) or set adapter.head_trainable",
            ", ".join(missing),
        )
    info = {
        "key": folder.name,
        "train_seconds": stats.seconds,
        "final_loss": stats.final_loss,
        "val_dice_agg": result.aggregated,
        "val_cases": result.cases,
        "classes_missing": missing,
    }
    net.cpu()
    save_state(net.state_dict(), folder / "base.pt")
    save_json(info, folder / "base.json")
    if resume:
        shutil.rmtree(resume, ignore_errors=True)
    return net, info
