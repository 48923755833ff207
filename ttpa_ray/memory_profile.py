"""Peak memory held by live tensors over a window of a process: the counterpart of
``torch.cuda.max_memory_allocated`` that also works on the CPU, where RSS mixes tensors with
libraries, the allocator's retained pages and fragmentation.

    prof = TensorMemoryProfile("cpu"); prof.start()
    ...  # build the model, train a few steps
    peak_mb = prof.stop()

On the CPU it reads torch.profiler's memory timeline (every allocation and free of the
window; tensors that existed before it are counted from their first use in the window, so a
training step counts the parameters, gradients and optimizer states it touches); on a GPU it
reads the CUDA allocator's own peak. Profiling costs time and memory (it keeps every event
with its stack): use it for one step.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch


class TensorMemoryProfile:
    def __init__(self, device: str = "cpu"):
        self.device = device
        self._prof: torch.profiler.profile | None = None

    def start(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        from torch.profiler import ProfilerActivity, profile

        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                             with_stack=True)
        self._prof.start()

    def stop(self) -> float:
        """Peak MB (2**20 bytes) of live tensors on the device during the window."""
        if self.device.startswith("cuda"):
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        assert self._prof is not None, "start() first"
        self._prof.stop()
        with tempfile.TemporaryDirectory(prefix="ttpa-mem-") as tmp:
            path = Path(tmp) / "timeline.json"
            self._prof.export_memory_timeline(str(path), device="cpu")
            _times, sizes = json.loads(path.read_text())  # sizes: per event, bytes by category
        self._prof = None
        return max((sum(row) for row in sizes), default=0) / 2**20
