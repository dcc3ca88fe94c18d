"""Memory measurement and model teardown: the only place in the project that releases memory.

On CUDA the truth is NVML's per-process figure: CTranslate2 allocates outside torch, so torch's
counters alone would miss most of a Whisper model. torch's allocated/reserved are reported beside it
for the torch stages. On CPU the same code reports the process's resident set size, so the teardown
path runs (and is tested) on machines without a GPU.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import psutil

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class MemorySample:
    """Memory held by this process at one instant, in bytes (None where not measurable)."""

    device: str
    rss_bytes: int
    nvml_process_bytes: int | None = None
    nvml_device_used_bytes: int | None = None
    torch_allocated_bytes: int | None = None
    torch_reserved_bytes: int | None = None

    @property
    def primary_bytes(self) -> int:
        """The figure a residue is judged on: GPU memory on CUDA, resident memory on CPU."""
        if self.device.startswith("cuda"):
            if self.nvml_process_bytes is not None:
                return self.nvml_process_bytes
            if self.nvml_device_used_bytes is not None:
                return self.nvml_device_used_bytes
            return self.torch_reserved_bytes or 0
        return self.rss_bytes


@dataclass(frozen=True)
class TeardownReport:
    """Memory before the model's load (baseline), after it, just before its teardown and after it, in bytes."""

    model: str
    device: str
    baseline: MemorySample
    loaded: MemorySample
    before: MemorySample
    after: MemorySample
    seconds: float
    # Memory other models in this process took (+) or gave back (-) between this model's load and its
    # teardown: another model loaded later and still held is not this model's residue.
    others_bytes: int = 0

    @property
    def residue_bytes(self) -> int:
        """What is left above the pre-load baseline once other models' memory is accounted for."""
        return self.after.primary_bytes - self.baseline.primary_bytes - self.others_bytes

    @property
    def freed_bytes(self) -> int:
        """What the teardown gave back."""
        return self.before.primary_bytes - self.after.primary_bytes

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "device": self.device,
            "baseline": asdict(self.baseline),
            "loaded": asdict(self.loaded),
            "before": asdict(self.before),
            "after": asdict(self.after),
            "residue_bytes": self.residue_bytes,
            "freed_bytes": self.freed_bytes,
            "others_bytes": self.others_bytes,
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        return (
            f"teardown of {self.model} on {self.device}: baseline {self.baseline.primary_bytes / MIB:.1f} MiB, "
            f"loaded {self.loaded.primary_bytes / MIB:.1f} MiB, before teardown {self.before.primary_bytes / MIB:.1f}"
            f" MiB, after {self.after.primary_bytes / MIB:.1f} MiB, freed {self.freed_bytes / MIB:.1f} MiB, "
            f"residue {self.residue_bytes / MIB:+.1f} MiB in {self.seconds:.2f} s"
        )


def _torch_cuda():
    """torch.cuda if torch is imported and CUDA was initialised in this process, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


def _device_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def _nvml_figures(device: str) -> tuple[int | None, int | None]:
    """(bytes used by this process, bytes used on the whole device) from NVML, None where unknown."""
    try:
        import pynvml
    except ImportError:
        return None, None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None, None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(_device_index(device))
        device_used = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        process_used = None
        pid = os.getpid()
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            # Inside a container without the host PID namespace the pid may not match: then only
            # the device figure is known.
            if proc.pid == pid and proc.usedGpuMemory is not None:
                process_used = int(proc.usedGpuMemory)
        return process_used, device_used
    except pynvml.NVMLError:
        return None, None
    finally:
        pynvml.nvmlShutdown()


def measure(device: str) -> MemorySample:
    """Sample this process's memory now: RSS always, NVML and torch figures on CUDA."""
    rss = psutil.Process().memory_info().rss
    if not device.startswith("cuda"):
        return MemorySample(device=device, rss_bytes=rss)
    process_used, device_used = _nvml_figures(device)
    allocated = reserved = None
    cuda = _torch_cuda()
    if cuda is not None:
        index = _device_index(device)
        allocated = int(cuda.memory_allocated(index))
        reserved = int(cuda.memory_reserved(index))
    return MemorySample(
        device=device,
        rss_bytes=rss,
        nvml_process_bytes=process_used,
        nvml_device_used_bytes=device_used,
        torch_allocated_bytes=allocated,
        torch_reserved_bytes=reserved,
    )


def total_bytes(device: str) -> int | None:
    """Total memory of a CUDA device in bytes, or None on CPU or when it cannot be read."""
    if not device.startswith("cuda"):
        return None
    cuda = _torch_cuda()
    if cuda is None:
        return None
    try:
        return int(cuda.mem_get_info(_device_index(device))[1])
    except RuntimeError:
        return None


def free_bytes(device: str) -> int | None:
    """Free memory on a CUDA device in bytes, or None on CPU or when it cannot be read."""
    if not device.startswith("cuda"):
        return None
    cuda = _torch_cuda()
    if cuda is not None:
        free, _total = cuda.mem_get_info(_device_index(device))
        return int(free)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(_device_index(device))
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML means "unknown", not an error
        return None


def prepare_device(device: str, memory_fraction: float | None = None) -> None:
    """Create the CUDA context before the baseline is taken, and cap torch's share of the device.

    The context (a few hundred MiB) can never be freed in-process, so it belongs to the baseline,
    not to a model's residue. The cap keeps a torch stage inside the GPU share Ray gave its replica.
    """
    if not device.startswith("cuda"):
        return
    import torch

    index = _device_index(device)
    torch.cuda.set_device(index)
    torch.cuda.init()
    torch.empty(1, device=device)  # the first allocation is what creates the context
    if memory_fraction is not None:
        torch.cuda.set_per_process_memory_fraction(memory_fraction, index)


def require_free(device: str, needed_mib: float, what: str) -> None:
    """Refuse to load `what` when the device has less free memory than it needs (instead of crashing
    a neighbour replica with an out-of-memory error halfway through the load)."""
    free = free_bytes(device)
    if needed_mib <= 0 or free is None or free >= needed_mib * MIB:
        return
    from core.errors import ModelUnavailable

    raise ModelUnavailable(f"not loading {what}: {device} has {free / MIB:.0f} MiB free and it needs "
                           f"about {needed_mib:.0f} MiB")


def _return_freed_heap_to_os() -> None:
    """Ask glibc to give freed heap pages back, so resident memory reflects what is still held.

    Without it glibc keeps freed arenas mapped and a CPU teardown looks like a leak of hundreds of MiB.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to ask
        return
    libc.malloc_trim(0)


def teardown(model: str, device: str, drop_references: Callable[[], None], baseline: MemorySample,
             loaded: MemorySample, others_bytes: int = 0) -> TeardownReport:
    """Release a model and measure what came back.

    `drop_references` must unload what the library can unload (CTranslate2's `unload_model()`)
    and clear every attribute that points at the model, its pipelines and caches. After it, one
    garbage collection breaks reference cycles (torch modules and pipelines have them) and one
    `empty_cache()` hands torch's cached blocks back to the driver. Repeating either frees nothing
    more: what is left after this is held by something still referenced, or is the CUDA context.
    `others_bytes` is what other models' loads and unloads changed since this model's load.
    """
    before = measure(device)
    started = time.perf_counter()
    drop_references()
    gc.collect()
    cuda = _torch_cuda()
    if cuda is not None:
        cuda.empty_cache()
    _return_freed_heap_to_os()
    after = measure(device)
    report = TeardownReport(model=model, device=device, baseline=baseline, loaded=loaded, before=before,
                            after=after, seconds=time.perf_counter() - started, others_bytes=others_bytes)
    logger.info(report.summary())
    return report
