"""Where training runs, what to do when the GPU runs out of memory, and the failures recorded as results."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

MIN_BATCH = 8  # below this, batch statistics (BatchNorm) are too noisy for a result worth recording
# make sweep's workers add it to an entry's command: write a machine-dependent failure (the runner keeps it out of
# the run-cache); without it, stages.sweep fails on one, so that a plain `dvc repro` neither records nor caches it
RUNNER_FLAG = "--record-machine-failure"
SHARED_EXIT = 75  # EX_TEMPFAIL: the parallel sweep runner reruns entries that exit with it, one at a time
SHARED_MESSAGE = "out of memory while sharing the GPU: rerun this entry alone"

# How cuDNN, cuBLAS and the CUDA runtime report running out of memory when no dedicated exception type says so.
OUT_OF_MEMORY_MESSAGES = ("out of memory", "cudnn_status_not_enough_memory", "cublas_status_alloc_failed")
CUDA_ERROR_MEMORY_ALLOCATION = 2  # cudaErrorMemoryAllocation (HIP's hipErrorOutOfMemory has the same value)


class MachineFailure(Exception):
    """A failure that says more about the machine than the model (`cause`): recorded failed and machine-dependent,
    with the batch it trained at and the device, so that a bigger or faster machine trains the entry again."""

    cause = "machine"

    def __init__(self, message: str, *, batch_size: int, device: str):
        super().__init__(message)
        self.batch_size, self.device = batch_size, device


class OutOfMemoryAtMinBatch(MachineFailure):
    """The model does not fit even at MIN_BATCH on this GPU."""

    cause = "out_of_memory"


class TimeLimitReached(MachineFailure):
    """The entry ran past sweep.time_limit_s on this machine."""

    cause = "time_limit"


class OutOfMemoryWhileShared(Exception):
    """Out of memory while other processes use the GPU: their memory is not ours to record. Rerun alone."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is the accelerator running out of memory, in any of its forms: torch's `OutOfMemoryError`
    (the caching allocator; `torch.cuda.OutOfMemoryError` is the same class), `torch.AcceleratorError` with
    CUDA's allocation-failure code (where this torch has it), or a RuntimeError whose message says so (cuDNN's
    CUDNN_STATUS_NOT_ENOUGH_MEMORY, cuBLAS's CUBLAS_STATUS_ALLOC_FAILED, the runtime's "out of memory").
    Matched, not assumed: timm retries any RuntimeError (timm/utils/decay_batch.py), which would record a model
    that fails for its own reasons as out of memory, and so as the machine's fault, to be retrained forever."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        if getattr(exc, "error_code", None) == CUDA_ERROR_MEMORY_ALLOCATION:
            return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in OUT_OF_MEMORY_MESSAGES)


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
    """The machine's name for `device` ('cuda' -> the GPU's name), as metrics records and failure reasons
    quote it."""
    if device == "cuda":
        return gpu_name()
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def current_device_name() -> str:
    """The name of the device training runs on here (the GPU where CUDA is available, else the CPU)."""
    import torch

    return device_name("cuda" if torch.cuda.is_available() else "cpu")


_nvml_warned = False  # gpu_shared warns once per process when NVML cannot answer
CPU_SHARED_FLAG = "IMGCLF_CPU_SHARED"  # set to 1 by `make sweep` for CPU workers that share the cores


def device_shared(device: str) -> bool:
    """Whether other processes use `device` now, so that timings on it mean nothing: the GPU (`gpu_shared`), or
    the CPU's cores when `make sweep` runs several CPU workers (IMGCLF_CPU_SHARED=1)."""
    return gpu_shared() if device == "cuda" else os.environ.get(CPU_SHARED_FLAG) == "1"


def gpu_shared() -> bool:
    """Whether other processes use this GPU. IMGCLF_GPU_SHARED=1 says it is (the parallel sweep runner sets it
    for workers that share a GPU; it also serves setups where NVML cannot see the other processes), =0 that this
    process has it alone. Unset: more than one compute process on the GPU according to NVML.
    Counted, not matched by PID: inside a container NVML reports host PIDs, so our own process cannot be told
    apart by its PID. Without CUDA there is nothing to share; when NVML fails, a warning says so (once) and the
    GPU counts as not shared."""
    global _nvml_warned
    flag = os.environ.get("IMGCLF_GPU_SHARED")
    if flag in ("0", "1"):
        return flag == "1"
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            index = torch.cuda.current_device()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return len(pynvml.nvmlDeviceGetComputeRunningProcesses(handle)) > 1
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001 - any NVML failure: only the runner's variable can say
        if not _nvml_warned:
            _nvml_warned = True
            log.warning(
                "cannot list the processes on the GPU with NVML (%s: %s): counting it as not shared; "
                "set IMGCLF_GPU_SHARED=1 if other processes use it",
                type(e).__name__,
                e,
            )
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
