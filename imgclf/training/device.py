"""Where training runs, what to do when the GPU runs out of memory, and the failures recorded as results."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

MIN_BATCH = 8  # below this, batch statistics (BatchNorm) are too noisy for a result worth recording
SHARED_EXIT = 75  # EX_TEMPFAIL: the parallel sweep runner reruns entries that exit with it, one at a time
SHARED_MESSAGE = "out of memory while sharing the GPU: rerun this entry alone"


class OutOfMemoryAtMinBatch(Exception):
    """The model does not fit even at MIN_BATCH: a property of the model and the GPU, recorded as a failure."""


class TimeLimitReached(Exception):
    """The entry ran past sweep.time_limit_s: a property of the model and the machine, recorded as a failure."""


# Failures that are a property of the model and the machine: recorded with their message as the whole reason.
RECORDED_FAILURES = (OutOfMemoryAtMinBatch, TimeLimitReached)


class OutOfMemoryWhileShared(Exception):
    """Out of memory while other processes use the GPU: their memory is not ours to record. Rerun alone."""


def resolve_device(precision: str) -> tuple[str, str]:
    """('cuda'|'cpu', precision actually used). `auto`: bf16 where the GPU supports it, else fp16; fp32 on CPU."""
    import torch

    if torch.cuda.is_available():
        if precision == "auto":
            return "cuda", "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "cuda", precision
    if precision in ("fp16", "bf16"):
        log.warning("train.precision is %s but there is no CUDA device: training in fp32", precision)
    return "cpu", "fp32"


def gpu_name() -> str:
    """The current CUDA device's name."""
    import torch

    return torch.cuda.get_device_name()


def device_name(device: str) -> str:
    """The machine's name for `device` ('cuda' -> the GPU's name), as failure reasons quote it."""
    if device == "cuda":
        return gpu_name()
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def gpu_shared() -> bool:
    """Whether other processes use this GPU: IMGCLF_GPU_SHARED=1 (for setups where NVML cannot see them), or more
    than one compute process on it according to NVML. Counted, not matched by PID: inside a container NVML
    reports host PIDs, so our own process cannot be told apart by its PID."""
    if os.environ.get("IMGCLF_GPU_SHARED") == "1":
        return True
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        try:
            index = torch.cuda.current_device()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return len(pynvml.nvmlDeviceGetComputeRunningProcesses(handle)) > 1
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001 - no NVML: only the runner's variable can say
        log.debug("cannot list GPU processes (%s): assuming the GPU is not shared", e)
        return False


def reset_peak_memory(device: str) -> None:
    """Start counting the peak memory of `device` afresh, so that `peak_memory_mb` is this training's and not the
    process's lifetime peak (a warm sweep worker trains many entries). On CPU that is the peak resident set size,
    which Linux resets on writing 5 to /proc/self/clear_refs; where that is not possible the peak stays the
    process's own, as in a fresh process per entry."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        log.debug("cannot reset the peak resident set size (%s): it stays the process's own", e)


def peak_memory_mb(device: str) -> float:
    """MiB at the peak since `reset_peak_memory`: allocated GPU memory on CUDA, the resident set size on CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def free_cuda_memory() -> None:
    """Return the failed attempt's cached blocks, so the retry starts from an empty GPU."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
