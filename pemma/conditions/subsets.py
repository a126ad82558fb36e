"""The three input subsets as conditions: a modality left out, nothing else changed."""

from pemma.conditions.base import CONDITIONS, Condition
from pemma.modalities import CT, CTPET, PET

for _subset, _text in (
    (CTPET, "both images, as acquired"),
    (CT, "CT alone (PET missing)"),
    (PET, "PET alone (CT missing)"),
):
    CONDITIONS.add(_subset, Condition(_subset, _text, _subset))
