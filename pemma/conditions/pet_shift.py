"""pet-shift: PET misregistered against CT by a rigid translation of d mm (patient motion between the
two acquisitions, or a PET registered afterwards), in a direction drawn per patient.

The translation is a world-space vector (mm) mapped through the working grid's affine to voxels and
applied with trilinear interpolation (outside the field of view: 0, the z-scored PET's background). It
acts on the preprocessed PET, i.e. after PET was resampled onto the CT's working grid: a real sub-voxel
misregistration, at the cost of one more interpolation (a slight extra blur) than shifting the PET
file's own affine before resampling would cost.
"""

import numpy as np

from pemma.conditions.base import as_like, register_condition
from pemma.data.keys import WORKING_AFFINE


def direction(rng: np.random.Generator) -> np.ndarray:
    """A direction uniform on the sphere."""
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


@register_condition(
    "pet-shift",
    "PET translated against CT by d mm, in a direction drawn per patient (the same for every method)",
    parameter="translation",
    unit="mm",
    magnitudes=(0.0, 2.0, 4.0, 8.0, 12.0),
)
def pet_shift(item: dict, mm: float, rng: np.random.Generator) -> dict:
    from scipy.ndimage import shift

    world = mm * direction(rng)
    linear = np.asarray(item[WORKING_AFFINE], dtype=float)[:3, :3]
    voxels = np.linalg.solve(linear, world)  # world offset -> voxel offset on the working grid
    pet = item["pet"].detach().cpu().numpy()
    moved = shift(pet, (0.0, *voxels), order=1, mode="constant", cval=0.0)
    item["pet"] = as_like(moved, item["pet"])
    return item
