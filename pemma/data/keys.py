"""Item keys shared by the data pipelines and what reads their items (conditions, evaluation), in a
module that imports nothing: declaring a condition must not load MONAI."""

WORKING_AFFINE = "working_affine"
"""Item key of the working grid's affine (the resampled CT's), kept to map predictions back."""
