"""What a trained model costs to run: forward GMACs, throughput at a fixed batch and latency at batch 1, on the
device it trained on and at the precision it trained in, as timm's benchmark tables report them.

The timing runs after the entry's weights and predictions are written, in eval mode under no_grad, on constant
inputs: it draws no random number and leaves the model as it found it, so it cannot change what the entry
trained. Timings mean nothing while other processes use the same device: then nothing is timed, and the record
says "not measured (shared)".
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable

# the throughput batch, fixed per kind of device: never the training batch, which an out-of-memory retry may halve
INFER_BATCH = {"cuda": 64, "cpu": 8}
WARMUP = 2  # untimed runs before each measurement (cuDNN autotuning, the allocator, caches)
TIMED = 5  # timed runs of the batch; batch 1 gets 2 * TIMED, for its median and p90
NOT_MEASURED = "not measured (shared)"
TIMING_KEYS = ("infer_images_per_s", "infer_latency_ms", "infer_latency_p90_ms")


def forward_flops(model, size: int) -> float:
    """FLOPs of one forward pass of `model` on one image of `size` x `size` (torch's FlopCounterMode), on the
    model's own device: the meta device (no memory, no weights) or a real one."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
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
        with torch.no_grad(), autocast:
            x, x1 = zeros(n), zeros(1)
            batch = seconds_per_call(lambda: model(x), TIMED, sync=sync)
            one = sorted(seconds_per_call(lambda: model(x1), 2 * TIMED, sync=sync))
        return {
            **cost,
            "infer_status": "measured",
            "infer_images_per_s": round(n / statistics.median(batch), 2),
            "infer_latency_ms": round(1000 * statistics.median(one), 3),
            "infer_latency_p90_ms": round(1000 * one[int(0.9 * (len(one) - 1))], 3),
        }
    finally:
        model.train(was_training)


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
