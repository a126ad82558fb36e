"""MONAI pipelines: bring PET and label onto the CT grid at the target spacing, then crop for training."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from monai import transforms as T
from monai.data import MetaTensor

from pemma.data.keys import WORKING_AFFINE

ORIGINAL_CT, ORIGINAL_LABEL = "original_ct", "original_label"
"""Item keys of the original CT and label files: evaluation on the CT's own grid reads them. (No key
may start with an image key and "_": MONAI's Spacingd takes such keys for that image's metadata.)"""


class KeepAffined(T.MapTransform):
    """Store the CT's current affine under WORKING_AFFINE before metadata is dropped."""

    def __init__(self) -> None:
        super().__init__(keys=["ct"])

    def __call__(self, data):
        d = dict(data)
        d[WORKING_AFFINE] = torch.as_tensor(d["ct"].affine, dtype=torch.float64).clone()
        return d


def preprocess(
    keys: tuple[str, ...],
    spacing: tuple[float, float, float],
    ct_window: tuple[float, float],
    label_indices: bool = False,
) -> T.Compose:
    """Deterministic part (cached on disk): load, reorient, resample, normalise, drop metadata; with
    `label_indices`, the label's foreground / background voxel indices too (`indices()`)."""
    others = [k for k in keys if k != "ct"]
    steps = [
        T.LoadImaged(keys=list(keys), image_only=True, ensure_channel_first=True),
        T.Orientationd(keys=list(keys), axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        T.Spacingd(keys=["ct"], pixdim=spacing, mode="bilinear"),
    ]
    if "pet" in others:
        steps.append(T.ResampleToMatchd(keys=["pet"], key_dst="ct", mode="bilinear"))
    if "label" in others:
        steps.append(T.ResampleToMatchd(keys=["label"], key_dst="ct", mode="nearest"))
    steps.append(
        T.ScaleIntensityRanged(
            keys=["ct"], a_min=ct_window[0], a_max=ct_window[1], b_min=0.0, b_max=1.0, clip=True
        )
    )
    if "pet" in others:
        steps.append(T.NormalizeIntensityd(keys=["pet"], nonzero=True))
    images = [k for k in keys if k != "label"]
    steps.append(KeepAffined())
    steps.append(T.EnsureTyped(keys=images, dtype="float32", track_meta=False))
    if "label" in keys:
        steps.append(T.EnsureTyped(keys=["label"], dtype="uint8", track_meta=False))
        if label_indices:
            steps.extend(indices().transforms)
    return T.Compose(steps)


class RandPETShiftd(T.Randomizable, T.MapTransform):
    """Training-time misregistration: with probability `prob`, the crop's PET translated against its
    CT and label by a world-space vector of length uniform in [0, `max_mm`] mm and direction uniform
    on the sphere (mapped to voxels through WORKING_AFFINE, trilinear, 0 outside: the z-scored PET's
    background). Every call draws the same numbers whether it shifts or not, so the stream does not
    depend on the outcome. It acts on the crop (cheap), so up to `max_mm` of one face is background."""

    def __init__(self, max_mm: float, prob: float) -> None:
        T.MapTransform.__init__(self, keys=["pet"])
        self.max_mm, self.prob = float(max_mm), float(prob)
        self._world = np.zeros(3)
        self._do = False

    def randomize(self, data=None) -> None:
        self._do = self.R.random_sample() < self.prob
        direction = self.R.normal(size=3)
        self._world = self.R.uniform(0.0, self.max_mm) * direction / np.linalg.norm(direction)

    def __call__(self, data):
        self.randomize()
        d = dict(data)
        if not self._do or "pet" not in d:
            return d
        from scipy.ndimage import shift

        linear = np.asarray(d[WORKING_AFFINE], dtype=float)[:3, :3]
        voxels = np.linalg.solve(linear, self._world)
        pet = torch.as_tensor(d["pet"])
        moved = shift(pet.numpy(), (0.0, *voxels), order=1, mode="constant", cval=0.0)
        d["pet"] = torch.as_tensor(moved, dtype=pet.dtype)
        return d


FG_INDICES, BG_INDICES = "label_fg_indices", "label_bg_indices"
"""Item keys of the label's foreground / background voxel indices where the cached part holds them
(`indices()`): the crop then reads them instead of scanning the volume on every draw."""


def indices() -> T.Compose:
    """The label's foreground and background voxel indices, as RandCropByPosNegLabeld would compute
    them on every call (so the crops drawn are the same), as int32: 4 bytes a voxel of the volume,
    against the 4 + 4 + 1 of its CT, PET and label."""
    return T.Compose(
        [
            T.FgBgToIndicesd(
                keys="label",
                fg_postfix=FG_INDICES.removeprefix("label"),
                bg_postfix=BG_INDICES.removeprefix("label"),
            ),
            T.CastToTyped(keys=[FG_INDICES, BG_INDICES], dtype=np.int32),
        ]
    )


def augment(
    keys: tuple[str, ...],
    roi: tuple[int, int, int],
    pet_shift_mm: float = 0.0,
    pet_shift_prob: float = 0.5,
    cached_indices: bool = False,
) -> T.Compose:
    """Random part: positive/negative-balanced crops as in the published setup, and left-right flips;
    with `pet_shift_mm` > 0, a random PET misregistration too (RandPETShiftd; absent otherwise, so
    the default pipeline draws exactly what it always drew).

    A volume smaller than the crop in some axis is cropped to what it has there, then padded to the
    crop size. (Padding before the crop would land in the cached deterministic prefix, which crops
    share with whole-volume evaluation: an entry written unpadded by evaluation would then reach the
    crop unpadded.) `cached_indices`: the items hold the label's indices (`indices()`)."""
    where = {"fg_indices_key": FG_INDICES, "bg_indices_key": BG_INDICES} if cached_indices else {}
    steps = [
        T.RandCropByPosNegLabeld(
            keys=list(keys),
            label_key="label",
            spatial_size=roi,
            pos=2,
            neg=1,
            num_samples=1,
            allow_smaller=True,
            **where,
        ),
        T.SpatialPadd(keys=list(keys), spatial_size=roi),
    ]
    if pet_shift_mm > 0 and "pet" in keys:
        steps.append(RandPETShiftd(pet_shift_mm, pet_shift_prob))
    steps += [
        T.RandFlipd(keys=list(keys), spatial_axis=0, prob=0.5),
        T.EnsureTyped(keys=list(keys), track_meta=False),
    ]
    return T.Compose(steps)


def _grid_of(path: str) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """A NIfTI file's affine and shape, from its header only."""
    header = nib.load(path)
    return torch.as_tensor(header.affine, dtype=torch.float64), tuple(int(n) for n in header.shape[:3])


def to_original_grid(probabilities: torch.Tensor, working_affine: torch.Tensor, ct_file: str) -> torch.Tensor:
    """Class probabilities (C, *working grid) resampled (trilinear) onto the CT file's own grid, then
    argmax: a label map (1, *CT grid). Resampling probabilities rather than the argmax keeps thin
    structures and boundaries where a nearest-neighbour copy of labels would shift them by up to
    half a working voxel."""
    affine, shape = _grid_of(ct_file)
    moved = T.SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)(
        MetaTensor(probabilities.float().cpu(), affine=working_affine), dst_affine=affine, spatial_size=shape
    )
    return moved.as_tensor().argmax(dim=0, keepdim=True)


def on_ct_grid(image_file: str, ct_file: str, mode: str = "nearest") -> torch.Tensor:
    """An image file's values (1, *CT grid) on the CT file's own grid, resampled (`mode`: nearest or
    bilinear) where the image has another grid; float32."""
    image = nib.load(image_file)
    values = torch.as_tensor(np.asanyarray(image.dataobj), dtype=torch.float32)[None]
    affine, shape = _grid_of(ct_file)
    if tuple(values.shape[1:]) == shape and np.allclose(image.affine, affine.numpy(), atol=1e-4):
        return values
    moved = T.SpatialResample(mode=mode, padding_mode="zeros", dtype=torch.float32)(
        MetaTensor(values, affine=torch.as_tensor(image.affine, dtype=torch.float64)),
        dst_affine=affine,
        spatial_size=shape,
    )
    return moved.as_tensor()


def original_label(label_file: str, ct_file: str) -> torch.Tensor:
    """The ground truth on the CT file's own grid (nearest-neighbour if the label has another grid)."""
    return on_ct_grid(label_file, ct_file, "nearest").round().to(torch.uint8)


class Reseeder:
    """Seeds a MONAI pipeline's random transforms for one item, as `transform.set_random_state(seed=s)`
    does, at a fiftieth of the cost: MONAI builds a new `np.random.RandomState` for every random
    transform on every call (67 us each, 0.37 ms a training crop), where reseeding the existing ones
    in place (`RandomState.seed`, 1.3 us) gives the same states. A Compose seeds its random children
    from its own state in order; a random transform passes its seed on to the random transforms it
    wraps (MONAI's croppers and flippers do). Whether that reproduces MONAI's own seeding is checked
    on this pipeline when the reseeder is made (every state compared, two seeds); where it does not
    (another MONAI, a transform that seeds otherwise), MONAI's own method is used."""

    def __init__(self, transform: T.Randomizable) -> None:
        import copy

        transform.set_random_state(seed=0)  # a state per transform (before: one class-wide state)
        self.transform = transform
        trial = copy.deepcopy(transform)
        objects = list(_random_parts(trial))
        self.fast = len({id(o.R) for o in objects}) == len(objects) and all(
            _states(_reseed(copy.deepcopy(trial), s))
            == _states(copy.deepcopy(trial).set_random_state(seed=s))
            for s in (1, 2**31 + 7)
        )

    def __call__(self, seed: int) -> None:
        if self.fast:
            _reseed(self.transform, seed)
        else:
            self.transform.set_random_state(seed=seed)


def _random_parts(transform: T.Randomizable):
    """The random transforms in the order the reseeding visits them: each, then what it holds."""
    yield transform
    held = transform.transforms if isinstance(transform, T.Compose) else vars(transform).values()
    for part in held:
        if isinstance(part, T.Randomizable):
            yield from _random_parts(part)


def _reseed(transform: T.Randomizable, seed: int) -> T.Randomizable:
    from monai.utils import MAX_SEED

    transform.R.seed(int(seed) % MAX_SEED)
    if isinstance(transform, T.Compose):
        for part in transform.transforms:
            if isinstance(part, T.Randomizable):
                _reseed(part, int(transform.R.randint(MAX_SEED, dtype="uint32")))
    else:
        for part in vars(transform).values():
            if isinstance(part, T.Randomizable):
                _reseed(part, seed)
    return transform


def _states(transform: T.Randomizable) -> list:
    out = []
    for part in _random_parts(transform):
        name, keys, pos, has_gauss, gauss = part.R.get_state()
        out.append((name, keys.tobytes(), pos, has_gauss, gauss))
    return out
