"""pet-noise: a lower-count acquisition, as a percentage of the counts the image was acquired with.

Noise model: in reconstructed PET the noise standard deviation grows with the local activity and
with 1 / sqrt(counts) (the coefficient of variation of a uniform region scales as 1 / sqrt(counts);
clinical FDG images show about 10% in the liver at full counts). Keeping fraction f of the counts
raises the variance by a factor 1 / f, so the added noise has standard deviation
0.10 * sqrt(1 / f - 1) * sqrt(a * m) per voxel, with a the activity above the body's background
(the z-scored PET shifted to be non-negative inside the body) and m the mean of a there; it is
smoothed with the reconstruction's kernel (a 4 mm FWHM Gaussian, scaled to keep its standard
deviation) since reconstructed noise is spatially correlated. Outside the body nothing is added.
This is a plausible first-order model for SUV images, not a simulation of a reconstruction: it
leaves bias (e.g. from fewer iterations) out.
"""

import numpy as np

from pemma.conditions.base import as_like, register_condition, spacing_of
from pemma.conditions.pet_blur import FWHM_PER_SIGMA

FULL_COUNT_COV = 0.10
RECONSTRUCTION_FWHM_MM = 4.0


@register_condition(
    "pet-noise",
    "PET of a lower-count acquisition (percentage of the counts kept): activity-dependent noise added",
    parameter="counts kept",
    unit="pct",
    magnitudes=(100.0, 50.0, 25.0, 10.0),
    clean=100.0,
    bounds=(1.0, 100.0),
)
def pet_noise(item: dict, percent: float, rng: np.random.Generator) -> dict:
    from scipy.ndimage import gaussian_filter

    if percent >= 100.0:
        return item
    pet = item["pet"].detach().cpu().numpy().astype(np.float64)
    body = pet != 0
    if not body.any():
        return item
    activity = np.where(body, pet - pet[body].min(), 0.0)
    mean = activity[body].mean()
    sd = FULL_COUNT_COV * np.sqrt(100.0 / percent - 1.0) * np.sqrt(activity * mean)
    white = rng.standard_normal(pet.shape)
    sigma = (0.0, *(RECONSTRUCTION_FWHM_MM / FWHM_PER_SIGMA / spacing_of(item)))
    smooth = gaussian_filter(white, sigma)
    smooth /= smooth[body].std() or 1.0  # unit variance again after smoothing
    item["pet"] = as_like(np.where(body, pet + sd * smooth, 0.0), item["pet"])
    return item
