"""Peak memory while a block runs: CUDA max allocated on GPU; on CPU, the sampled anonymous resident
set (resident pages less file-backed and shared ones: the memory the process allocated) above what
it held when the block began. File-backed pages are left out because they are the page cache's: the
training crops read cache entries memory-mapped and keep them mapped, so the pages a crop touched
stay resident, reclaimable, and would otherwise count as training memory. Before a CPU block
starts, freed heap memory is handed back to the system (glibc malloc_trim), so a block's growth is
not hidden by memory an earlier block freed but the allocator kept: methods measured one after
another in one process are then comparable (weights already built are not counted; activations,
gradients and optimiser state are)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import threading

import torch


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            fields = f.read().split()  # size resident shared(file-backed + shmem) text lib data dt
        return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: fall back to the process's lifetime peak
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_freed_memory() -> None:
    """Collect garbage and return the C heap's free pages to the system where glibc allows it."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
            ctypes.CDLL(name).malloc_trim(0)


class PeakMemory:
    """Context manager; ``.peak_mb`` after exit."""

    def __init__(self, device: torch.device, interval_s: float = 0.05) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            release_freed_memory()
            self._start = self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, _rss_bytes())

    def so_far_mb(self) -> float:
        """The peak so far, while the block still runs."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return (max(self._peak, _rss_bytes()) - self._start) / 2**20

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes())
            self.peak_mb = (self._peak - self._start) / 2**20
