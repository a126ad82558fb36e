"""Predictions as the field's tools read them: one NIfTI file per test patient and evaluation pass, on
the patient's original CT grid (the CT file's affine and shape), uint8 labels 0 background, then the
cohort's classes by their values (1 GTVp, 2 GTVn on HECKTOR: the HECKTOR 2022 submission format;
an nnU-Net dataset's own `labels` otherwise), which 3D Slicer, ITK-SNAP and the challenges' own
evaluation code open.

Layout: results/<suite>/predictions/<run key>/<pass>/<PatientID>.nii.gz, where a pass is an input
subset (`ctpet`, `ct`, `pet`) or a test-time condition at one magnitude (`pet-shift-8mm`). Each file is
written atomically with its sha256 beside it (`.sha256`, as every saved file); the gzip stream carries
no timestamp, so the bytes depend on the prediction alone.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from pemma.files import record_digest, write_atomic

SUFFIX = ".nii.gz"


def nifti_bytes(labels: np.ndarray, affine: np.ndarray) -> bytes:
    """`labels` (uint8, on the grid `affine` maps) as gzipped NIfTI-1 bytes, sform and qform set to
    `affine` (scanner coordinates), no timestamp."""
    image = nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), np.asarray(affine, dtype=float))
    image.header.set_data_dtype(np.uint8)
    image.set_sform(image.affine, code=1)
    image.set_qform(image.affine, code=1)
    return gzip.compress(image.to_bytes(), mtime=0)


class PredictionWriter:
    """Writes a unit's predictions under `folder` (results/<suite>/predictions/<run key>)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.written: dict[str, Path] = {}
        """Pass -> its folder, for every pass this writer wrote a file of."""

    def __call__(self, key: str, patient_id: str, labels: torch.Tensor, ct_file: str) -> Path:
        """The label map `labels` ((1, *CT grid) or (*CT grid)) of `patient_id` under pass `key`, on
        the grid of `ct_file`."""
        array = labels.detach().cpu().numpy().reshape(labels.shape[-3:]).astype(np.uint8)
        ct = nib.load(ct_file)
        if tuple(ct.shape[:3]) != array.shape:
            raise ValueError(
                f"{patient_id}: a prediction of shape {array.shape}, but the CT {ct_file} is {ct.shape[:3]}"
            )
        path = self.folder / key / f"{patient_id}{SUFFIX}"
        data = nifti_bytes(array, ct.affine)
        write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))
        record_digest(path)
        self.written[key] = path.parent
        return path
