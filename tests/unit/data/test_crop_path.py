"""Issue 29, the last per-step costs of the training crops: the pipeline reseeded in place instead of
with new random states, and cache entries kept mapped per process. Neither may change a crop."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from monai import transforms as T

from pemma.config import DataConfig
from pemma.data.datasets import CohortData
from pemma.data.hecktor import read_cohort
from pemma.data.transforms import Reseeder, augment
from pemma.training.loop import PerSample, SeededBatches

KEYS = ("ct", "pet", "label")


def _item(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    label = torch.zeros(1, 40, 40, 30)
    label[:, 10:20, 12:22, 8:16] = 1
    label[:, 25:30, 5:9, 20:24] = 2
    return {
        "ct": torch.as_tensor(rng.random((1, 40, 40, 30), dtype=np.float32)),
        "pet": torch.as_tensor(rng.random((1, 40, 40, 30), dtype=np.float32)),
        "label": label,
        "working_affine": torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64)),
    }


@pytest.mark.parametrize("shift", [0.0, 8.0])
def test_the_in_place_reseeding_gives_monais_crops(shift):
    fast, slow = (augment(KEYS, (16, 16, 16), shift, 0.5) for _ in range(2))
    reseed = Reseeder(fast)
    assert reseed.fast, "the shipped crop pipeline should take the fast path"
    for seed in (0, 1, 12345, 2**32 - 1, 2**40 + 3):
        reseed(seed)
        slow.set_random_state(seed=seed)
        item = _item(seed % 7)
        (a,), (b,) = fast(dict(item)), slow(dict(item))  # one crop per item
        for key in KEYS:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), (seed, key)


class _SeedsItsPartOtherwise(T.Randomizable, T.Transform):
    """A random transform that seeds what it wraps with another seed than its own: the in-place
    reseeding would not reproduce it, so MONAI's own seeding must be used."""

    def __init__(self) -> None:
        self.inner = T.RandFlip(prob=0.5)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.inner.set_random_state(seed=None if seed is None else seed + 1)
        return self

    def __call__(self, data):
        return self.inner(data)


def test_a_pipeline_the_in_place_reseeding_would_not_reproduce_keeps_monais_seeding():
    pipeline = T.Compose([_SeedsItsPartOtherwise()])
    reseed = Reseeder(pipeline)
    assert not reseed.fast
    reseed(5)
    expected = T.Compose([_SeedsItsPartOtherwise()]).set_random_state(seed=5)
    assert pipeline.transforms[0].inner.R.get_state()[2] == expected.transforms[0].inner.R.get_state()[2]
    assert np.array_equal(
        pipeline.transforms[0].inner.R.get_state()[1], expected.transforms[0].inner.R.get_state()[1]
    )


def _crops(tiny_cohort, cache):
    cohort = read_cohort(tiny_cohort)
    data = CohortData(DataConfig(spacing=(4.0, 4.0, 4.0)), cohort.fingerprint(), cache)
    cases = [c for c in cohort.cases if c.centre == "MDA"]
    return data.crops(cases, KEYS, (16, 16, 16), 0, pet_shift=(8.0, 0.5))


def test_kept_cache_entries_give_the_same_batches_and_stay_as_their_files(tiny_cohort, tmp_path):
    kept, fresh = _crops(tiny_cohort, tmp_path / "cache"), _crops(tiny_cohort, tmp_path / "cache")
    fresh.mapped = None  # every draw reads its entry anew, as before
    a, b = SeededBatches(kept, 2, 3, 0, False), SeededBatches(fresh, 2, 3, 0, False)
    for _ in range(3 * len(kept)):  # three epochs: every entry drawn several times
        x, y = next(a), next(b)
        for key in KEYS:
            assert torch.equal(x[key], y[key]), key
    assert len(kept.mapped) == len(kept)
    for path, (_, volumes) in kept.mapped.items():  # nothing wrote into the kept volumes
        on_disk = torch.load(path, weights_only=False)
        for key in KEYS:
            assert torch.equal(volumes[key], on_disk[key]), (path, key)


def test_a_kept_entry_is_read_again_once_its_file_changes(tiny_cohort, tmp_path):
    crops = _crops(tiny_cohort, tmp_path / "cache")
    PerSample(crops)[(0, 0)]  # writes the entry
    PerSample(crops)[(0, 0)]  # maps it and keeps it
    ((path, (seen, volumes)),) = crops.mapped.items()
    os.utime(path, ns=(seen[2] + 10**9, seen[2] + 10**9))  # rewritten since (same bytes, its digest holds)
    PerSample(crops)[(0, 0)]
    again, _ = crops.mapped[path]
    assert again != seen and crops.mapped[path][1] is not volumes
