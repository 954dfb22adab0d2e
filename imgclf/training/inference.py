"""What a trained model costs to run: forward GMACs, throughput at a fixed batch and latency at batch 1, on the
device it trained on and at the precision it trained in, as timm's benchmark tables report them.

The timing runs after the entry's weights and predictions are written, in eval mode under no_grad, on constant
inputs: it draws no random number and leaves the model as it found it, so it cannot change what the entry
trained. Timings mean nothing while other processes use the same device: then nothing is timed, and the record
says "not measured (shared)". On a CPU that nothing is known to share, the CPU time other processes used while the
timing ran is measured (Linux's /proc/stat against this process's own): past BUSY_LIMIT of the cores the figures are
dropped and the record says "not measured (cpu busy: ...)". Without /proc/stat the load average stands in.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable

# the throughput batch, fixed per kind of device: never the training batch, which an out-of-memory retry may halve
INFER_BATCH = {"cuda": 64, "cpu": 8}
WARMUP = 2  # untimed runs before each measurement (cuDNN autotuning, the allocator, caches)
TIMED = 5  # timed runs of the batch; batch 1 gets 2 * TIMED, for its median and p90
NOT_MEASURED = "not measured (shared)"
BUSY_LIMIT = 0.1  # the share of the CPU's cores other processes may use while a CPU timing runs
BUSY_WINDOW_S = 0.5  # the least time that share is measured over
TIMING_KEYS = ("infer_images_per_s", "infer_latency_ms", "infer_latency_p90_ms")


def forward_flops(model, size: int) -> float:
    """FLOPs of one forward pass of `model` on one image of `size` x `size` (torch's FlopCounterMode), on the
    model's own device: the meta device (no memory, no weights) or a real one."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    # with autograd on: under no_grad, FlopCounterMode's module tracker fails on some models (timm's test_vit3:
    # "Expected gradient function to be set"); one image's graph is small and is freed on return
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size, device=device))
    return float(counter.get_total_flops())


def inference_cost(model, size: int, device: str, precision: str, *, shared: bool) -> dict[str, Any]:
    """The record's inference fields for a trained `model` on `device`: `gmacs` (forward FLOPs / 2, one image),
    and unless `shared`, `infer_images_per_s` at the device's INFER_BATCH and `infer_latency_ms` (median) and
    `infer_latency_p90_ms` at batch 1, with `infer_status` saying which."""
    import torch

    was_training = model.training
    model.eval()
    try:
        n = INFER_BATCH[device]
        cost: dict[str, Any] = {"gmacs": round(forward_flops(model, size) / 2e9, 4), "infer_batch": n}
        if shared:
            return {**cost, "infer_status": NOT_MEASURED, **dict.fromkeys(TIMING_KEYS)}
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        autocast = torch.autocast("cuda", dtype=dtype) if device == "cuda" and dtype else contextlib.nullcontext()
        fmt = torch.channels_last if device == "cuda" else torch.contiguous_format

        def zeros(batch: int):
            return torch.zeros(batch, 3, size, size, device=device).to(memory_format=fmt)

        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        before = cpu_times() if device == "cpu" else None
        with torch.no_grad(), autocast:
            x, x1 = zeros(n), zeros(1)
            batch = seconds_per_call(lambda: model(x), TIMED, sync=sync)
            one = sorted(seconds_per_call(lambda: model(x1), 2 * TIMED, sync=sync))
        if before is not None:  # a window of at least BUSY_WINDOW_S, so that the clock ticks resolve the share
            time.sleep(max(0.0, BUSY_WINDOW_S - (time.perf_counter() - before[0])))
        busy = others_busy(before, cpu_times()) if device == "cpu" else None
        if busy is not None and busy > BUSY_LIMIT:
            status = f"not measured (cpu busy: other processes used {busy:.0%} of the cores while timing)"
            return {**cost, "infer_status": status, **dict.fromkeys(TIMING_KEYS)}
        return {
            **cost,
            "infer_status": "measured",
            "infer_images_per_s": round(n / statistics.median(batch), 2),
            "infer_latency_ms": round(1000 * statistics.median(one), 3),
            "infer_latency_p90_ms": round(1000 * one[int(0.9 * (len(one) - 1))], 3),
        }
    finally:
        model.train(was_training)


def cpu_times() -> tuple[float, float, float, int] | None:
    """(wall clock, busy CPU seconds of the whole machine, this process's CPU seconds, cores) now, from Linux's
    /proc/stat; None where there is none."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    ticks = [int(v) for v in lines[0].split()[1:]]  # user nice system idle iowait irq softirq steal ...
    cores = sum(1 for line in lines if re.match(r"cpu\d", line))
    busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system, cores


def others_busy(before, after) -> float | None:
    """The share of the cores that other processes used between two `cpu_times()` readings; without them, the
    1-minute load average less this process, over the cores."""
    if before is None or after is None:
        if not hasattr(os, "getloadavg"):
            return None
        cores = os.cpu_count() or 1
        return max(0.0, os.getloadavg()[0] - 1) / cores
    wall = after[0] - before[0]
    others = (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, others) / (wall * after[3]) if wall > 0 else None


def seconds_per_call(call: Callable[[], Any], runs: int, warmup: int = WARMUP, sync: Callable[[], Any] = lambda: None):
    """Seconds of each of `runs` calls of `call`, after `warmup` untimed ones; `sync` waits for the device (CUDA)
    before each clock reading. Both the sweep's timing and the ONNX export's use it."""
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return times
