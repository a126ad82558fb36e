"""Frozen run configuration: dataclass defaults < profile < suite file < command line.

Every section checks its own ranges in ``__post_init__`` so that a bad value fails when the
configuration is built, naming the key, not deep inside training.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from pemma.resources import DATA_PLANS, PROFILES, did_you_mean, read_yaml


class ConfigError(ValueError):
    """A configuration value or key that cannot be used."""


RUN_KEY, ADAPTATION_KEY = "run", "adaptation"
KEYS = frozenset({RUN_KEY, ADAPTATION_KEY})
"""The keys a config value can be part of: the run key (a unit's identity, tracking.run_key) and the
adaptation key (a kept stage-0 adaptation other units may load, tasks/segmentation/adapted.py)."""
LABEL = {"keys": frozenset()}
"""Field metadata: a label or a setting that never changes a result (suite name, data folder, plan file
name, checkpoint cadence, activation checkpointing): part of no key."""
EVALUATED = {"keys": frozenset()}
"""Field metadata: what a finished unit evaluates besides what it was trained and scored for (the
test-time conditions): part of no key; the task scores what a finished run lacks (Task.pending)."""
STAGES = {"keys": frozenset({RUN_KEY})}
"""Field metadata: the continual stages after the adaptation: the unit's own, not its adaptation's."""


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class DataConfig:
    root: str | None = field(default=None, metadata=LABEL)
    """A HECKTOR-layout cohort folder; None means the built-in synthetic cohort."""
    synth_scale: float = 0.15
    synth_seed: int = 0
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """The common grid CT, PET and label are brought onto (1 mm isotropic as published)."""
    ct_window: tuple[float, float] = (-200.0, 250.0)
    plan: str | None = field(default=None, metadata=LABEL)
    """A centre-plan YAML (pretrain / adapt / continual) or a shipped plan's name; fills the three
    fields below, which otherwise hold PEMMA's published plan (plans/hecktor2022.yaml)."""
    pretrain_centres: tuple[str, ...] = ("CHUS", "CHUV", "CHUM", "CHUP")
    adapt_centre: str = "MDA"
    continual_centres: tuple[str, ...] = ("HGJ", "HMR")
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_seed: int = 0
    split_follows_seed: bool = False
    """Draw each unit's train / val / test split with the unit's seed instead of `split_seed`, so
    that the spread over seeds includes the split's variance (suites meant for reporting set it)."""

    def __post_init__(self) -> None:
        _require(self.synth_scale > 0, "data.synth_scale", f"must be > 0, got {self.synth_scale}")
        _require(self.split_seed >= 0, "data.split_seed", f"must be >= 0, got {self.split_seed}")
        _require(self.synth_seed >= 0, "data.synth_seed", f"must be >= 0, got {self.synth_seed}")
        _require(all(s > 0 for s in self.spacing), "data.spacing", f"must be positive, got {self.spacing}")
        _require(self.ct_window[0] < self.ct_window[1], "data.ct_window", "lower bound must be below upper")
        _require(
            abs(sum(self.split) - 1.0) < 1e-6 and min(self.split) >= 0,
            "data.split",
            f"train/val/test fractions must be >= 0 and sum to 1, got {self.split}",
        )
        _require(self.split[2] > 0, "data.split", "the test fraction must be > 0")
        _require(len(self.pretrain_centres) > 0, "data.pretrain_centres", "name at least one centre")
        _require(
            self.adapt_centre not in self.pretrain_centres,
            "data.adapt_centre",
            f"{self.adapt_centre} is also a CT pretraining centre",
        )


@dataclass(frozen=True)
class ModelConfig:
    roi: tuple[int, int, int] = (48, 48, 48)
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int = 768
    feature_size: int = 16
    num_classes: int = 3
    """Output channels: background + the cohort's classes (HECKTOR: GTVp, GTVn). Set from the cohort
    when a run leaves it unset (suites.expand); a run that sets it must match the cohort."""
    sdpa: bool = True
    """Use PyTorch scaled-dot-product attention in the transformer blocks."""
    channels_last: bool = True
    """Hold the 3D convolutions' weights (and so their activations) channels-last (NDHWC): the layout
    oneDNN (CPU) and cuDNN run fastest; off: PyTorch's default NCDHW, as the public code runs. Results
    agree to float rounding (tested), not bitwise."""
    swin_depths: tuple[int, ...] = (2, 2, 2, 2)
    """Swin UNETR: blocks per stage (feature_size is its embedding width, a multiple of 12)."""
    swin_heads: tuple[int, ...] = (3, 6, 12, 24)
    swin_window: int = 7

    def __post_init__(self) -> None:
        _require(
            self.hidden_size % self.num_heads == 0,
            "model.hidden_size",
            f"{self.hidden_size} is not divisible by model.num_heads={self.num_heads}",
        )
        _require(self.num_layers >= 1, "model.num_layers", "must be >= 1")
        _require(all(r > 0 for r in self.roi), "model.roi", f"must be positive, got {self.roi}")
        _require(
            self.num_classes >= 2,
            "model.num_classes",
            f"background and at least one class, got {self.num_classes}",
        )
        _require(
            len(self.swin_depths) == 4 and len(self.swin_heads) == 4,
            "model.swin_depths",
            f"Swin UNETR has four stages: give four depths and four head counts, got {self.swin_depths} "
            f"and {self.swin_heads}",
        )
        _require(self.swin_window >= 1, "model.swin_window", f"must be >= 1, got {self.swin_window}")


ADAPTER_TARGETS = ("qkv", "qv", "attn", "attn-mlp")
"""Adapter target sets every backbone maps to module patterns: fused qkv; q and v only (the fused
projection split into three, as the public code had it); qkv + output projection; those + the MLP."""


@dataclass(frozen=True)
class AdapterConfig:
    rank: int = 8
    alpha: float = 16.0
    alpha_ratio: float | None = None
    """If set, the LoRA alpha is alpha_ratio x rank (the rank ablation's "alpha = 2 x rank")."""
    dropout: float = 0.1
    targets: str = "qkv"
    """Which frozen layers get adapters: qkv | qv | attn | attn-mlp (see ADAPTER_TARGETS)."""
    beta: str = "learned"
    """PET skip weight: learned | fixed (1.0) | absent (no PET skip pathways)."""
    beta_init: float = 1.0
    pet_init: str = "copy"
    """PET patch embedding at adaptation start: copy of the CT one, or random."""
    skip_levels: str = "all"
    """PET skip pathways at every skip level (all) or at the input level only (input). Swin UNETR
    fuses PET at the embedding, so its PET skip exists at the input level only, whatever this says."""
    head_trainable: bool = False
    pet_route: str = "shared"
    """PET-only inference (and PET-only training batches): `shared` sends the PET skip inputs through
    the frozen CT skip encoders and adds the PET branches (the published design); `branch` uses the
    PET branches alone where a level has one (the PET-only ablation)."""

    swin_single: str = "adapter"
    """Swin UNETR with one modality present: that modality's adapter fills the merge's input
    (`adapter`, this harness's design) or the missing modality's half is zeros (`zeros`: the merge
    alone, no modality adapters; the adapter-layer ablation)."""

    def __post_init__(self) -> None:
        _require(self.rank >= 1, "adapter.rank", f"must be >= 1, got {self.rank}")
        _require(self.alpha > 0, "adapter.alpha", f"must be > 0, got {self.alpha}")
        _require(self.alpha_ratio is None or self.alpha_ratio > 0, "adapter.alpha_ratio", "must be > 0")
        _require(0 <= self.dropout < 1, "adapter.dropout", f"must be in [0, 1), got {self.dropout}")
        _require(
            self.targets in ADAPTER_TARGETS,
            "adapter.targets",
            f"unknown target set {self.targets!r}; known: {', '.join(ADAPTER_TARGETS)}",
        )
        _require(
            self.beta in ("learned", "fixed", "absent"),
            "adapter.beta",
            f"expected learned, fixed or absent, got {self.beta!r}",
        )
        _require(
            self.pet_init in ("copy", "random"),
            "adapter.pet_init",
            f"expected copy or random, got {self.pet_init!r}",
        )
        _require(
            self.pet_route in ("shared", "branch"),
            "adapter.pet_route",
            f"expected shared or branch, got {self.pet_route!r}",
        )
        _require(
            self.swin_single in ("adapter", "zeros"),
            "adapter.swin_single",
            f"expected adapter or zeros, got {self.swin_single!r}",
        )
        _require(
            self.skip_levels in ("all", "input"),
            "adapter.skip_levels",
            f"expected all or input, got {self.skip_levels!r}",
        )

    @property
    def lora_alpha(self) -> float:
        return self.alpha_ratio * self.rank if self.alpha_ratio is not None else self.alpha


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-5
    class_weights: tuple[float, ...] = (1.0, 2.0, 5.0)
    modality_dropout: tuple[float, float, float] = (0.6, 0.2, 0.2)
    """Probabilities of CT+PET / CT / PET batches, for methods that train on single modalities."""
    modality_warmup_steps: int = 0
    """A curriculum: the first steps use CT+PET only, then modality dropout begins."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    warmup_steps: int = 3
    """Steps left out of the throughput figure (first-call overheads)."""
    checkpoint_every: int = field(default=500, metadata=LABEL)
    """Save a resumable checkpoint every this many steps (0: only at the end of a stage). Not part
    of a unit's identity: it never changes results."""
    activation_checkpointing: bool = field(default=False, metadata=LABEL)
    """Recompute the transformer blocks' activations in the backward pass instead of keeping them
    (torch.utils.checkpoint; frozen and trainable blocks alike): less memory, more compute. Not part
    of a unit's identity: the gradients are the same."""
    frozen_bf16: bool = False
    """Store the weights a method freezes in bf16 and compute under bf16 autocast (on CPU too): less
    memory for methods with a frozen base. After training the frozen weights return to fp32 holding
    their bf16-rounded values, which evaluation then uses."""
    compile: bool = False
    """torch.compile the model for training (one graph per input subset; evaluation runs eager)."""
    pet_shift_mm: float = 0.0
    """Training-time misregistration (an ablation of robustness to pet-shift): with probability
    `pet_shift_prob`, each training crop's PET is translated against its CT by a random world vector
    of length uniform in [0, pet_shift_mm] mm (direction uniform on the sphere). 0: off."""
    pet_shift_prob: float = 0.5
    augment_seeding: str = "stream"
    """Where a training crop's randomness comes from. `sample` (every shipped profile): the epoch's
    order and each crop's draws are functions of (seed, epoch, position in the epoch), so any number
    of loader workers gives the same batches. `stream`: one random stream in the training process, in
    the order crops are drawn (the harness before loader workers; kept so older runs keep their keys
    and can be reproduced; no loader workers)."""
    loader_workers: int = field(default=0, metadata=LABEL)
    """Data loader worker processes preparing training crops while the model steps (0: in the
    training process). Not part of a unit's identity: with `augment_seeding: sample` the batches are
    the same for any number."""

    def __post_init__(self) -> None:
        _require(self.steps >= 1, "train.steps", f"must be >= 1, got {self.steps}")
        _require(
            self.augment_seeding in ("stream", "sample"),
            "train.augment_seeding",
            f"expected sample or stream, got {self.augment_seeding!r}",
        )
        _require(self.loader_workers >= 0, "train.loader_workers", f"must be >= 0, got {self.loader_workers}")
        _require(
            self.loader_workers == 0 or self.augment_seeding == "sample",
            "train.loader_workers",
            "loader workers need train.augment_seeding=sample (with one shared stream, the crops would "
            "depend on how the workers are scheduled)",
        )
        _require(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(math.isfinite(self.lr) and self.lr > 0, "train.lr", f"must be finite and > 0, got {self.lr}")
        _require(
            math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            "train.weight_decay",
            f"must be finite and >= 0, got {self.weight_decay}",
        )
        _require(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
        _require(
            math.isfinite(self.pet_shift_mm) and 0 <= self.pet_shift_mm <= 50,
            "train.pet_shift_mm",
            f"must lie in [0, 50] mm, got {self.pet_shift_mm}",
        )
        _require(
            0 < self.pet_shift_prob <= 1,
            "train.pet_shift_prob",
            f"must lie in (0, 1], got {self.pet_shift_prob}",
        )
        _require(self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(
            self.modality_warmup_steps >= 0,
            "train.modality_warmup_steps",
            f"must be >= 0, got {self.modality_warmup_steps}",
        )
        p = self.modality_dropout
        _require(
            min(p) >= 0 and abs(sum(p) - 1) < 1e-6,
            "train.modality_dropout",
            f"CT+PET / CT / PET probabilities must be >= 0 and sum to 1, got {p}",
        )
        _require(
            len(self.class_weights) >= 2 and min(self.class_weights) > 0,
            "train.class_weights",
            f"one positive weight per class, background first, got {self.class_weights}",
        )


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 300
    batch_size: int = 2
    lr: float = 2e-3
    checkpoint: str | None = None
    """A user's own CT-pretrained state dict (.pt) used instead of training one."""

    def __post_init__(self) -> None:
        _require(self.steps >= 1, "pretrain.steps", f"must be >= 1, got {self.steps}")
        _require(self.batch_size >= 1, "pretrain.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(
            math.isfinite(self.lr) and self.lr > 0, "pretrain.lr", f"must be finite and > 0, got {self.lr}"
        )


@dataclass(frozen=True)
class ContinualConfig:
    """Continual learning after the adaptation centre: further centres, one stage each."""

    order: tuple[str, ...] = ()
    """Centres in training order; empty means no continual stages."""
    inputs: str = "ctpet"
    """What each stage's data holds: ctpet | ct | pet (a CT-only update should not erase PET)."""
    steps: int = 100

    def __post_init__(self) -> None:
        _require(
            self.inputs in ("ctpet", "ct", "pet"),
            "continual.inputs",
            f"expected ctpet, ct or pet, got {self.inputs!r}",
        )
        _require(self.steps >= 1, "continual.steps", f"must be >= 1, got {self.steps}")
        _require(
            len(set(self.order)) == len(self.order), "continual.order", f"a centre repeats in {self.order}"
        )


@dataclass(frozen=True)
class EvalConfig:
    sw_batch_size: int = 4
    overlap: float = 0.25
    mode: str = "gaussian"
    nsd_tolerance_mm: float = 3.0
    """The normalised surface Dice's tolerance (mm): boundary within this distance counts as agreeing
    (metrics/segmentation.py says why 3 mm)."""
    predictions: bool = field(default=True, metadata=LABEL)
    """Write each test patient's prediction on its original CT grid as NIfTI, per evaluation pass
    (results/<suite>/predictions/<run key>/<pass>/<PatientID>.nii.gz; uint8 0 background, then the
    cohort's class values: 1 GTVp, 2 GTVn on HECKTOR), and log them as the run's artifacts. Off in
    the ci profile. Never changes a number."""
    conditions: tuple[str, ...] = field(default=(), metadata=EVALUATED)
    """Test-time conditions scored after training besides the input subsets (`pemma-bench
    conditions`): a name with its default magnitudes (`pet-shift`) or with its own (`pet-shift=0,4,8`;
    quoted inside a bracketed list on the command line: `--set 'eval.conditions=["pet-shift=0,8"]'`).
    Part of no key: a finished unit asked for more conditions scores only those, from its saved
    trained state (the run's `conditions_evaluated` tag says which it has)."""

    def __post_init__(self) -> None:
        _require(0 <= self.overlap < 1, "eval.overlap", f"must be in [0, 1), got {self.overlap}")
        _require(self.mode in ("gaussian", "constant"), "eval.mode", "expected gaussian or constant")
        _require(
            math.isfinite(self.nsd_tolerance_mm) and self.nsd_tolerance_mm > 0,
            "eval.nsd_tolerance_mm",
            f"must be > 0 mm, got {self.nsd_tolerance_mm}",
        )


@dataclass(frozen=True)
class PrognosisConfig:
    """Prognosis units (`task: prognosis`): a survival head on the method's encoder, Cox loss."""

    ehr: bool = False
    """Add the clinical variables as tokens (CT+PET+EHR); off: images only."""
    steps: int = 150
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-2
    mix: str = "mean"
    """How the head combines image and EHR tokens: mean (linear in each token) | attention."""
    horizons: tuple[float, ...] = (365.0, 730.0, 1095.0)
    """Days at which time-dependent AUC is reported (those inside the follow-up)."""
    bootstrap: int = 500
    amp: bool = True

    def __post_init__(self) -> None:
        _require(self.steps >= 1, "prognosis.steps", f"must be >= 1, got {self.steps}")
        _require(self.batch_size >= 2, "prognosis.batch_size", "a Cox batch needs at least 2 patients")
        _require(
            self.mix in ("mean", "attention"),
            "prognosis.mix",
            f"expected mean or attention, got {self.mix!r}",
        )
        _require(self.bootstrap >= 0, "prognosis.bootstrap", "must be >= 0")


@dataclass(frozen=True)
class RunConfig:
    suite: str = field(default="adhoc", metadata=LABEL)
    method: str = "pemma-lora"
    backbone: str = "unetr"
    seed: int = 0
    profile: str = "smoke"
    task: str = "segmentation"
    """A registered task (`pemma-bench tasks`): segmentation (Dice) or prognosis (C-index)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig, metadata=STAGES)
    prognosis: PrognosisConfig = field(default_factory=PrognosisConfig)

    def __post_init__(self) -> None:
        _require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        _require(
            len(self.train.class_weights) == self.model.num_classes,
            "train.class_weights",
            f"{len(self.train.class_weights)} weights for model.num_classes={self.model.num_classes} "
            "(one per class, background first)",
        )
        outside = set(self.continual.order) - set(self.data.continual_centres)
        _require(
            not outside,
            "continual.order",
            f"{', '.join(sorted(outside))} not among the plan's continual centres "
            f"{self.data.continual_centres}",
        )
        clash = set(self.continual.order) & {*self.data.pretrain_centres, self.data.adapt_centre}
        _require(
            not clash,
            "continual.order",
            f"{', '.join(sorted(clash))} already serve(s) pretraining or adaptation",
        )

    @property
    def split_seed(self) -> int:
        """The seed the unit's splits are drawn with (see data.split_follows_seed)."""
        return self.seed if self.data.split_follows_seed else self.data.split_seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        return flatten(self.to_dict())

    def identity(self, key: str = RUN_KEY) -> dict[str, Any]:
        """What decides the result a key names: every value in the key's scope (see key_scopes) that
        differs from the code's defaults, and always method, backbone, seed and profile.

        Leaving defaults out keeps keys stable when an option is added (off by default), so finished
        runs stay valid; the price is that a default must never change meaning: add an option instead.
        """
        scopes, defaults = key_scopes(), RunConfig().flat()
        keep = ("method", "backbone", "seed", "profile")
        return {k: v for k, v in self.flat().items() if key in scopes[k] and (k in keep or v != defaults[k])}


def key_scopes(
    cls: type | None = None, prefix: str = "", keys: frozenset[str] = KEYS
) -> dict[str, frozenset[str]]:
    """Every flat config key -> the keys it is part of: a field's `metadata` (LABEL, STAGES) says, a
    section's metadata holds for its fields, and a field without one is part of every key."""
    out: dict[str, frozenset[str]] = {}
    for f in dataclasses.fields(cls or RunConfig):
        mine = f.metadata.get("keys", keys)
        section = f.default_factory
        if isinstance(section, type) and dataclasses.is_dataclass(section):
            out.update(key_scopes(section, f"{prefix}{f.name}.", mine))
        else:
            out[f"{prefix}{f.name}"] = mine
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def stable_hash(obj: Any, length: int = 8) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return build(tp, value, prefix=key + ".")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a (partial) mapping, refusing unknown keys with a did-you-mean."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            hint = did_you_mean(prefix + key, [prefix + n for n in names], n=1)
            raise ConfigError(f"unknown config key {prefix + key!r}{hint}")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{prefix or 'config'}: {err}") from err


def parse_override(text: str) -> dict[str, Any]:
    """``train.steps=10`` -> {"train": {"steps": 10}}; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.steps=10")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem})") from err
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def from_logged(params: dict[str, str]) -> RunConfig:
    """A unit's configuration rebuilt from the parameters its MLflow run logged (RunConfig.flat, each
    value as its str: Python literals, or plain text for strings)."""
    nested: dict[str, Any] = {}
    for key, text in params.items():
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return build(RunConfig, nested)


REPORTING_PROFILES = ("paper", "paper-harness")
"""Profiles whose runs are tagged for_reporting."""


def load_profile(name: str) -> dict[str, Any]:
    """A shipped profile (pemma/profiles/NAME.yaml); `include: other` starts from another profile."""
    doc = read_yaml(PROFILES.find(name, ConfigError), "profile", ConfigError) or {}
    parent = doc.pop("include", None)
    return deep_merge(load_profile(parent), doc) if parent else doc


def resolve(*layers: dict[str, Any]) -> RunConfig:
    """Merge layers (later wins) on top of the profile that the merged layers name.

    A profile's ``backbones:`` section holds per-backbone sizes (Swin UNETR needs crops divisible by
    32 and a feature size divisible by 12); they apply on top of the profile, below every layer.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    profile = merged.get("profile", RunConfig.profile)
    backbone = merged.get("backbone", RunConfig.backbone)
    sizes = load_profile(profile)
    by_backbone = sizes.pop("backbones", None) or {}
    sizes = deep_merge(sizes, by_backbone.get(backbone, {}))
    merged = deep_merge(deep_merge({"profile": profile}, sizes), merged)
    plan = (merged.get("data") or {}).get("plan")
    if plan:
        merged = deep_merge(merged, {"data": load_plan(plan)})
    return build(RunConfig, merged)


def load_plan(name_or_path: str) -> dict[str, Any]:
    """A plan file's centres as data-config values; a bad file is an error naming it."""
    try:
        path = DATA_PLANS.find(name_or_path, ConfigError)
    except ConfigError as err:
        raise ConfigError(f"data.plan: {err}") from err
    doc = read_yaml(path, "data plan", ConfigError) or {}
    unknown = set(doc) - {"pretrain", "adapt", "continual", "description"}
    if unknown or "pretrain" not in doc or "adapt" not in doc:
        raise ConfigError(
            f"data.plan {name_or_path}: expected keys pretrain (list), adapt (a centre) and "
            f"optionally continual (list); got {', '.join(sorted(doc)) or 'nothing'}"
        )
    if not isinstance(doc["pretrain"], list) or not isinstance(doc["adapt"], str):
        raise ConfigError(
            f"data.plan {name_or_path}: pretrain must be a list of centres and adapt one centre"
        )
    return {
        "pretrain_centres": doc["pretrain"],
        "adapt_centre": doc["adapt"],
        "continual_centres": doc.get("continual") or [],
    }
