"""TensorMemoryProfile: the peak of live tensor bytes over a window, on the CPU."""

from __future__ import annotations

import pytest
import torch

from ttpa_ray.train.memory_profile import TensorMemoryProfile


def test_cpu_peak_counts_live_tensors_not_freed_ones():
    kept = torch.ones(2**20, dtype=torch.float32)  # 4 MB allocated before the window
    prof = TensorMemoryProfile("cpu")
    prof.start()
    a = torch.zeros(10 * 2**20, dtype=torch.float32)  # 40 MB
    a.add_(kept.sum())
    del a
    b = torch.zeros(5 * 2**20, dtype=torch.float32)  # 20 MB, after the 40 MB were freed
    b.add_(kept[:1])
    peak = prof.stop()
    # what was alive at the start (the 4 MB tensor, and whatever earlier tests left alive) + 40 MB;
    # never + 40 + 20 (they were not alive together)
    assert prof.start_mb >= 4 - 0.01
    assert peak - prof.start_mb == pytest.approx(40, abs=1.0), (peak, prof.start_mb)
