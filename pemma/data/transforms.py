"""MONAI pipelines: bring PET and label onto the CT grid at the target spacing, then crop for training."""

from __future__ import annotations

from monai import transforms as T


def preprocess(
    keys: tuple[str, ...], spacing: tuple[float, float, float], ct_window: tuple[float, float]
) -> T.Compose:
    """Deterministic part (cached on disk): load, reorient, resample, normalise, drop metadata."""
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
    steps.append(T.EnsureTyped(keys=images, dtype="float32", track_meta=False))
    if "label" in keys:
        steps.append(T.EnsureTyped(keys=["label"], dtype="uint8", track_meta=False))
    return T.Compose(steps)


def augment(keys: tuple[str, ...], roi: tuple[int, int, int]) -> T.Compose:
    """Random part: positive/negative-balanced crops as in the published setup, and left-right flips."""
    return T.Compose(
        [
            T.SpatialPadd(keys=list(keys), spatial_size=roi),
            T.RandCropByPosNegLabeld(
                keys=list(keys),
                label_key="label",
                spatial_size=roi,
                pos=2,
                neg=1,
                num_samples=1,
                allow_smaller=False,
            ),
            T.RandFlipd(keys=list(keys), spatial_axis=0, prob=0.5),
            T.EnsureTyped(keys=list(keys), track_meta=False),
        ]
    )
