"""pet-blur: a coarser PET reconstruction: the PET convolved with a 3D Gaussian of the given FWHM (mm),
sigma per axis from the FWHM and the working grid's spacing. The magnitude is the added kernel's FWHM;
the result's resolution is about sqrt(native^2 + added^2) (the native FWHM of real scanners is 4-7 mm,
of the synthetic cohort's scanners 5-7.5 mm)."""

import numpy as np

from pemma.conditions.base import as_like, register_condition, spacing_of

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@register_condition(
    "pet-blur",
    "PET convolved with a Gaussian of the given FWHM (a coarser reconstruction or an older scanner)",
    parameter="added FWHM",
    unit="mm",
    magnitudes=(0.0, 6.0, 8.0, 10.0),
)
def pet_blur(item: dict, fwhm: float, rng: np.random.Generator) -> dict:
    from scipy.ndimage import gaussian_filter

    sigma = fwhm / FWHM_PER_SIGMA / spacing_of(item)
    pet = item["pet"].detach().cpu().numpy()
    item["pet"] = as_like(gaussian_filter(pet, (0.0, *sigma), mode="constant", cval=0.0), item["pet"])
    return item
