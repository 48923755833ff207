"""Peak memory held by live tensors over a window of a process: the counterpart of
``torch.cuda.max_memory_allocated`` that also works on the CPU, where RSS mixes tensors with
libraries, the allocator's retained pages and fragmentation.

    prof = TensorMemoryProfile("cpu"); prof.start()
    ...  # one training step
    peak_mb = prof.stop()

On the CPU: the bytes of every tensor storage alive when the window opens (found through the
garbage collector: parameters, gradients, optimizer states, DeepSpeed's flat buffers), plus
the running sum of the allocations and frees torch.profiler records during the window, at
its highest. On a GPU it reads the CUDA allocator's own peak. Profiling slows the window
down: use it for one step.
"""

from __future__ import annotations

import gc

import torch


def live_tensor_bytes(device: str = "cpu") -> int:
    """Bytes of the distinct storages of the tensors Python can reach on ``device``."""
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == device and not obj.is_meta:
                storage = obj.untyped_storage()
                seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        except Exception:  # noqa: BLE001, S112 - objects that only look like tensors
            continue
    return sum(n for ptr, n in seen.items() if ptr)


class TensorMemoryProfile:
    def __init__(self, device: str = "cpu"):
        self.device = device
        self._prof: torch.profiler.profile | None = None
        self._baseline: int | None = None

    @property
    def start_mb(self) -> float | None:
        """CPU: MB of live tensors when the window opened (between steps: the model states)."""
        return None if self._baseline is None else self._baseline / 2**20

    def start(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        from torch.profiler import ProfilerActivity, profile

        self._baseline = live_tensor_bytes("cpu")
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.start()

    def stop(self) -> float:
        """Peak MB (2**20 bytes) of live tensors on the device during the window."""
        if self.device.startswith("cuda"):
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        assert self._prof is not None, "start() first"
        self._prof.stop()
        events = self._prof.profiler.kineto_results.events()  # every allocation and free, in bytes
        deltas = sorted((e.start_ns(), e.nbytes()) for e in events
                        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
        self._prof = None
        live = peak = 0
        for _, delta in deltas:
            live += delta
            peak = max(peak, live)
        return (self._baseline + peak) / 2**20
