"""The training data path against a modelled accelerator: what one crop costs, stage by stage, and how
long a consumer that steps in `step_ms` per batch waits for data with 0, 1, 2 ... loader workers.

The volumes are HECKTOR-sized phantoms (200 x 200 x 250 mm of head and neck at the profile's voxel
size: 1 mm at the paper profile, 10 million voxels) saved the way the preprocessing cache saves an
item, so the numbers are the warm cache's, as in every epoch after the first. The consumer sleeps for
its step (the GIL is free meanwhile, as during a CUDA step), so the data-wait share is what a GPU this
fast would see on this host's cores; no accelerator is needed to ask the question.
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.data import list_data_collate
from monai.transforms import Compose

from pemma.data.keys import WORKING_AFFINE
from pemma.data.transforms import BG_INDICES, FG_INDICES, augment, indices
from pemma.training.loop import SeededBatches, plain

HECKTOR_EXTENT_MM = np.array([200.0, 200.0, 250.0])
"""A head-and-neck CT/PET field of view after HECKTOR's usual crop."""
KEYS = ("ct", "pet", "label")


def phantom(spacing: tuple[float, float, float], seed: int) -> dict:
    """One preprocessed item: CT and PET (z-scored body with noise), a label with a 30 ml GTVp and a
    10 ml GTVn (0.4% of the voxels, as in HECKTOR), float32 like the cache's entries."""
    shape = phantom_shape(spacing)
    rng = np.random.default_rng(seed)
    grid = np.stack(
        np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    )
    centre = HECKTOR_EXTENT_MM / 2
    body = (((grid - centre[:, None, None, None]) / (centre * 0.8)[:, None, None, None]) ** 2).sum(0) < 1
    label = np.zeros(shape, dtype=np.float32)
    for value, ml, offset in ((1, 30.0, (0, 20, 10)), (2, 10.0, (30, -20, -10))):
        radius = (3 * ml * 1000 / (4 * np.pi)) ** (1 / 3)
        at = centre + np.asarray(offset, dtype=float)
        label[((grid - at[:, None, None, None]) ** 2).sum(0) < radius**2] = value
    ct = np.where(body, 0.2 + 0.05 * rng.standard_normal(shape), -1.0).astype(np.float32)
    pet = (np.where(body, 0.1 * rng.standard_normal(shape), 0.0) + 3.0 * (label > 0)).astype(np.float32)
    return {
        "ct": torch.from_numpy(ct)[None],
        "pet": torch.from_numpy(pet)[None],
        "label": torch.from_numpy(label)[None],
        WORKING_AFFINE: torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64)),
    }


class CachedItems(torch.utils.data.Dataset):
    """Items saved as the preprocessing cache saves them, read back (whole, or memory-mapped as the
    harness's cache reads them) and sent through `transform`, as a warm cache does on every read."""

    def __init__(self, files: list[Path], transform: Compose, mmap: bool) -> None:
        self.files, self.transform, self.mmap = files, transform, mmap

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        return self.transform(torch.load(self.files[i], weights_only=False, mmap=self.mmap))


def _mean_ms(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return 1000.0 * (time.perf_counter() - t0) / n


def stage_times(
    files: list[Path],
    indexed: list[Path],
    roi: tuple[int, int, int],
    batch_size: int,
    device: torch.device,
    draws: int,
) -> pd.DataFrame:
    """Milliseconds per crop (collate and copy: per batch) of each stage of the training data path:
    the whole volume read and its label scanned on every draw (as before), or the entry memory-mapped
    with the label's indices cached in it (`indexed`, as the harness's cache now holds them)."""
    pipeline = augment(KEYS, roi)
    crop, pad, rest = pipeline.transforms[0], pipeline.transforms[1], Compose(pipeline.transforms[2:])
    cached_crop = augment(KEYS, roi, cached_indices=True).transforms[0]
    for t in (crop, cached_crop, rest):
        t.set_random_state(seed=0)
    items = [torch.load(f, weights_only=False) for f in files]
    scan = indices()
    with_indices = [scan(item) for item in items]
    cycle = iter(range(10**9))

    def each(fn):
        return lambda: fn(next(cycle) % len(items))

    crops = [pad(crop(item)[0]) for item in items]
    ready = [rest(c) for c in crops]
    batch = list_data_collate([ready[i % len(ready)] for i in range(batch_size)])
    pinned = {k: v.pin_memory() for k, v in batch.items()} if device.type == "cuda" else batch

    def to_device():
        for k in KEYS:
            plain(pinned[k], device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    mapped = [torch.load(f, weights_only=False, mmap=True) for f in indexed]
    rows = {
        "load from cache (whole volume)": _mean_ms(
            each(lambda i: torch.load(files[i], weights_only=False)), draws
        ),
        "load from cache (memory-mapped)": _mean_ms(
            each(lambda i: torch.load(indexed[i], weights_only=False, mmap=True)), draws
        ),
        "indices (label scan)": _mean_ms(each(lambda i: scan(items[i])), draws),
        "crop (scans the label)": _mean_ms(each(lambda i: pad(crop(items[i])[0])), draws),
        "crop (indices given)": _mean_ms(each(lambda i: pad(cached_crop(with_indices[i])[0])), draws),
        "crop (memory-mapped, indices given)": _mean_ms(
            each(lambda i: pad(cached_crop(mapped[i])[0])), draws
        ),
        "flip + to tensor": _mean_ms(each(lambda i: rest(crops[i])), draws),
        "collate (per batch)": _mean_ms(lambda: list_data_collate(ready[:1] * batch_size), draws),
        "host to device (per batch)": _mean_ms(to_device, draws),
    }
    item_mb = sum(v.numel() * v.element_size() for k, v in items[0].items() if k in KEYS) / 2**20
    index_mb = sum(
        with_indices[0][k].numel() * with_indices[0][k].element_size() for k in (FG_INDICES, BG_INDICES)
    )
    index_mb /= 2**20
    table = pd.DataFrame({"stage": list(rows), "ms": list(rows.values())})
    table.attrs.update({"item MB": item_mb, "indices MB": index_mb})
    return table


def _waits(stream, workers: int, step_ms: float, batches: int, device: torch.device) -> tuple[float, ...]:
    """(data wait share, wait ms per batch, release ms per batch, batches/s) of a consumer that takes
    a batch, moves it to `device`, sleeps `step_ms` and lets the batch go, over `batches` batches once
    the workers' first ones are ready. Letting go is timed apart from the wait: a batch from workers
    lives in shared memory, which the training thread frees here, while on CUDA the pin-memory
    thread drops it and the training thread frees pinned memory, which torch's host allocator keeps."""
    for _ in range(max(2, workers)):
        next(stream)
    waited, released, t0 = 0.0, 0.0, time.perf_counter()
    for _ in range(batches):
        t = time.perf_counter()
        batch = next(stream)
        waited += time.perf_counter() - t
        for k in KEYS:
            plain(batch[k], device)
        time.sleep(step_ms / 1000.0)
        t = time.perf_counter()
        del batch
        released += time.perf_counter() - t
    total = time.perf_counter() - t0
    return waited / total, 1000.0 * waited / batches, 1000.0 * released / batches, batches / total


class _Received:
    """Batches taken from a stream by a background thread, up to `depth` ahead: what torch's
    pin-memory thread does on CUDA (it receives each batch from the loader workers, then pins it),
    without the pinning, so that a CPU host can model where a CUDA run receives its batches."""

    def __init__(self, stream: SeededBatches, depth: int = 2) -> None:
        self.stream, self.queue, self.stop = stream, queue.Queue(depth), threading.Event()
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.stop.is_set():
            try:
                item = next(self.stream)
            except Exception as err:  # handed to the consumer, which raises it
                item = err
            while not self.stop.is_set():
                with contextlib.suppress(queue.Full):
                    self.queue.put(item, timeout=0.1)
                    break
            if isinstance(item, Exception):
                return

    def __next__(self) -> dict:
        item = self.queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.stream.close()


def loader_waits(
    files: list[Path],
    indexed: list[Path],
    roi: tuple[int, int, int],
    batch_size: int,
    device: torch.device,
    step_ms: float,
    workers: list[int],
    batches: int,
) -> pd.DataFrame:
    """The share of a modelled step (sleep `step_ms`, then the next batch) spent waiting for data,
    for each number of loader workers: the whole entry read and its label scanned on every draw (as
    before), or memory-mapped with the indices cached (as now). Where the batches from workers are
    received: on CUDA by torch's pin-memory thread; elsewhere by the training thread, and, to model
    a CUDA host on this one, also by a thread that does what the pin-memory thread does (`_Received`)."""
    cuda = device.type == "cuda"
    rows = []
    for cached in (False, True):
        dataset = CachedItems(indexed if cached else files, augment(KEYS, roi, cached_indices=cached), cached)
        for n in workers:
            # with workers on a host without CUDA, the modelled receiving thread beside the real one
            for threaded in (False, True) if cached and n and not cuda else (False,):
                stream = SeededBatches(dataset, batch_size, 0, n, cuda)
                if threaded:
                    stream = _Received(stream)  # closing it stops its thread, then the stream
                try:
                    share, per_batch, release, rate = _waits(stream, n, step_ms, batches, device)
                finally:
                    stream.close()
                if not n:
                    received = "-"
                elif cuda:
                    received = "pin-memory thread"
                else:
                    received = "a thread (as CUDA's pin-memory thread)" if threaded else "training thread"
                rows.append(
                    {
                        "cache read": "mapped, indices cached" if cached else "whole, label scanned",
                        "loader workers": n,
                        "received by": received,
                        "data wait share": share,
                        "wait ms per batch": per_batch,
                        "release ms per batch": release,
                        "batches/s": rate,
                    }
                )
    return pd.DataFrame(rows)


def data_path(
    spacing: tuple[float, float, float],
    roi: tuple[int, int, int],
    batch_size: int,
    device: torch.device,
    step_ms: float,
    workers: list[int],
    volumes: int = 4,
    draws: int = 20,
    batches: int = 30,
    scratch: Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(stage table, worker table) on `volumes` phantoms written under `scratch` (a temporary folder)."""
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        files, indexed = [], []
        scan = indices()
        for i in range(volumes):
            item = phantom(spacing, seed=i)
            files.append(Path(folder) / f"{i}.pt")
            torch.save(item, files[-1])
            indexed.append(Path(folder) / f"{i}-indexed.pt")
            torch.save(scan(item), indexed[-1])
        stages = stage_times(files, indexed, roi, batch_size, device, draws)
        stages.attrs["volume"] = "x".join(str(n) for n in phantom_shape(spacing))
        waits = loader_waits(files, indexed, roi, batch_size, device, step_ms, workers, batches)
    waits.attrs["cores"] = len(os.sched_getaffinity(0))
    return stages, waits


def phantom_shape(spacing: tuple[float, float, float]) -> tuple[int, ...]:
    return tuple(int(n) for n in np.round(HECKTOR_EXTENT_MM / np.asarray(spacing)))
