"""The `gpu` section of `make bench` (CUDA only): how close the training stage comes to the GPU's own speed.

    python -m bench.gpu [WORK_DIR]     # prints the section as JSON

On 1,500 generated five-class JPEGs (320x256, like scraped images), resnet34 at 224 px, batch 64,
`precision: auto`, not pretrained (no network needed):
- `in_stage_over_step_alone`: images/s of `train_model`'s fit against the same model's training step alone on
  one batch already on the GPU (forward, backward, optimizer step, same precision and memory format);
- `util_mean`: GPU utilisation from NVML, sampled at 20 Hz over the fit window;
- `train_overhead_ratio`: seconds per epoch of our fastai training against a plain PyTorch loop on the same
  DataLoaders (same decoded images, batches and model; AdamW with one-cycle; a validation pass);
- `startup_s`: wall time of `python -m stages.sweep` minus the `train_time_s` it writes (the entry reads the
  decode stage's file, as in the pipeline);
- `default_archs`: every `sweep.archs` entry of params.yaml run as a stage one after another (4 epochs), with
  the sum of their wall times plus the decode stage's (`decode_s`, once for all of them).
Absolute images/s stand beside every ratio.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ARCH, SIZE, BATCH, N_PER_CLASS, CLASSES = "resnet34", 224, 64, 300, 5


def _images(folder: Path) -> tuple[list[Path], list[str]]:
    from demo.synthetic import draw, jpeg_bytes

    for c in range(CLASSES):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
        for n in range(N_PER_CLASS):
            path = folder / f"class{c}" / f"{n:04d}.jpg"
            if not path.exists():
                path.write_bytes(jpeg_bytes(draw(f"gpu/{c}/{n}", c, size=(320, 256))))
    files = sorted(folder.rglob("*.jpg"))
    return files, [f.parent.name for f in files]


def _params(epochs: int = 2) -> dict[str, Any]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(pretrained=False, img_size=SIZE, batch_size=BATCH, precision="auto")
    params["base"].update(num_workers=min(12, os.cpu_count() or 1))
    params["sweep"].update(epochs=epochs)
    return params


class _Utilisation:
    """NVML GPU utilisation samples (time, percent) at 20 Hz while running."""

    def __init__(self):
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.perf_counter(), self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu))
            time.sleep(0.05)

    def mean(self, start: float, end: float) -> float:
        window = [u for t, u in self.samples if start <= t <= end]
        return round(sum(window) / len(window), 1) if window else float("nan")


def in_stage(files: list[Path], labels: list[str], work: Path) -> dict[str, Any]:
    """`train_model` as the sweep stage runs it, with NVML sampled over its fit (marked by a callback)."""
    from fastai.callback.core import Callback

    from imgclf.training import learner

    marks: dict[str, float] = {}

    class FitWindow(Callback):
        order = 100

        def before_fit(self):
            marks.setdefault("start", time.perf_counter())

        def after_fit(self):
            marks["end"] = time.perf_counter()

    real = learner.make_learner

    def make(*args, **kwargs):
        learn = real(*args, **kwargs)
        learn.add_cb(FitWindow())
        return learn

    params, util = _params(), _Utilisation()
    util.thread.start()
    learner.make_learner = make
    try:
        m = learner.train_model(
            ARCH,
            files,
            labels,
            epochs=params["sweep"]["epochs"],
            train=params["train"],
            base=params["base"],
            out_dir=work / "in_stage",
        )
    finally:
        learner.make_learner = real
        util.stop.set()
    return {
        "images_per_s": m["images_per_s"],
        "train_time_s": m["train_time_s"],
        "precision": m["precision"],
        "util_mean": util.mean(marks["start"], marks["end"]),
        "util_samples": len(util.samples),
    }


def _learner_and_dls(files: list[Path], labels: list[str]):
    import fastai.callback.channelslast
    import fastai.callback.progress
    import fastai.callback.schedule  # noqa: F401 - Learner.fit_one_cycle

    from imgclf.training.archs import model_setup
    from imgclf.training.device import resolve_device
    from imgclf.training.learner import build_dls, make_learner

    params = _params()
    device, precision = resolve_device("auto")
    setup = model_setup(ARCH, SIZE)
    dls = build_dls(
        files,
        labels,
        size=SIZE,
        mean=setup["mean"],
        std=setup["std"],
        valid_pct=0.2,
        seed=42,
        batch_size=BATCH,
        num_workers=params["base"]["num_workers"],
        device=device,
    )
    learn = make_learner(ARCH, dls, params["train"], setup)
    learn.to_channelslast(amp_mode=precision)
    return learn, dls, precision


def step_alone(learn, precision: str, steps: int = 50) -> dict[str, Any]:
    """Images/s of the bare training step on one batch already on the GPU."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    model = copy.deepcopy(learn.model).cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    x, y = learn.dls.train.one_batch()
    x = x.as_subclass(torch.Tensor).contiguous(memory_format=torch.channels_last)
    y = y.as_subclass(torch.Tensor)

    def step():
        with torch.autocast("cuda", dtype=dtype):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return {"images_per_s": round(steps * len(y) / (time.perf_counter() - start), 1)}


def plain_epoch(model, dls, precision: str, lr: float = 2e-3) -> tuple[float, float]:
    """(seconds, validation accuracy) of one epoch of a hand-written loop on `dls`, same precision."""
    import torch
    import torch.nn.functional as F

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=len(dls.train))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    torch.cuda.synchronize()
    start = time.perf_counter()
    model.train()
    for x, y in dls.train:
        with torch.autocast("cuda", dtype=dtype):
            loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        correct = sum(
            int((model(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y).sum()) for x, y in dls.valid
        )
    torch.cuda.synchronize()
    return time.perf_counter() - start, correct / len(dls.valid.dataset)


def overhead(learn, dls, precision: str, repeats: int = 3) -> dict[str, Any]:
    """Our one-epoch fit_one_cycle against `plain_epoch`, alternating, after a warm-up of each."""
    import contextlib
    import io

    import torch

    plain_model = copy.deepcopy(learn.model).cuda().to(memory_format=torch.channels_last)

    def ours() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with learn.no_bar(), contextlib.redirect_stdout(io.StringIO()):
            learn.fit_one_cycle(1, 2e-3)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    ours()
    plain_epoch(plain_model, dls, precision)
    o, p = [], []
    for _ in range(repeats):
        o.append(ours())
        p.append(plain_epoch(plain_model, dls, precision)[0])
    n = len(dls.train) * dls.train.bs
    return {
        "ours_s": round(min(o), 3),
        "plain_s": round(min(p), 3),
        "ours_images_per_s": round(n / min(o), 1),
        "plain_images_per_s": round(n / min(p), 1),
        "train_overhead_ratio": round(min(o) / min(p), 3),
    }


def decode_run(image_dir: Path, work: Path) -> tuple[Path, float]:
    """`python -m stages.decode` as the pipeline runs it before the sweep: (its file, wall seconds)."""
    ws = work / "stage_ws"
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(_params()))
    out = ws / "decoded.safetensors"
    cmd = [sys.executable, "-m", "stages.decode", "--data", str(image_dir), "--out", str(out)]
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=ws, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"stages.decode failed:\n{res.stderr[-3000:]}")
    return out, round(time.perf_counter() - start, 2)


def stage_runs(decoded: Path, work: Path, archs: list[str], epochs: int) -> dict[str, Any]:
    """`python -m stages.sweep` on the decode stage's file for each arch, one after another: wall,
    train_time_s and start-up of each."""
    ws = work / "stage_ws"
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(_params(epochs)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = {}
    for arch in archs:
        out = ws / "runs" / arch
        start = time.perf_counter()
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "stages.sweep",
                "--arch",
                arch,
                "--data",
                str(decoded),
                "--out",
                str(out / "model"),
                "--metrics",
                str(out / "metrics.json"),
                "--curves",
                str(out / "live"),
                "--confusion",
                str(out / "confusion.csv"),
            ],
            cwd=ws,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if res.returncode:
            raise RuntimeError(f"stages.sweep --arch {arch} failed:\n{res.stderr[-3000:]}")
        m = json.loads((out / "metrics.json").read_text())
        runs[arch] = {
            "wall_s": round(wall, 2),
            "status": m["status"],
            "train_time_s": m.get("train_time_s"),
            "images_per_s": m.get("images_per_s"),
            "startup_s": round(wall - (m.get("train_time_s") or 0), 2),
        }
    return runs


def gpu_section(work: Path | None = None) -> dict[str, Any]:
    """The whole section (an empty dict without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    work = work or Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    files, labels = _images(work / "images")
    stage = in_stage(files, labels, work)
    learn, dls, precision = _learner_and_dls(files, labels)
    alone = step_alone(learn, precision)
    loop = overhead(learn, dls, precision)
    decoded, decode_s = decode_run(work / "images", work)
    one = stage_runs(decoded, work, [ARCH], 2)[ARCH]
    archs = yaml.safe_load((ROOT / "params.yaml").read_text())["sweep"]["archs"]
    default = stage_runs(decoded, work, archs, 4)
    return {
        "device": torch.cuda.get_device_name(),
        "precision": precision,
        "arch": ARCH,
        "img_size": SIZE,
        "batch_size": BATCH,
        "images": len(files),
        "in_stage_images_per_s": stage["images_per_s"],
        "step_alone_images_per_s": alone["images_per_s"],
        "in_stage_over_step_alone": round(stage["images_per_s"] / alone["images_per_s"], 3),
        "util_mean": stage["util_mean"],
        "util_samples": stage["util_samples"],
        "train_overhead_ratio": loop["train_overhead_ratio"],
        "overhead": loop,
        "startup_s": one["startup_s"],
        "startup_run": one,
        "default_archs": default,
        "decode_s": decode_s,
        "default_archs_wall_s": round(decode_s + sum(r["wall_s"] for r in default.values()), 1),
    }


run = gpu_section  # the name bench/run.py calls


if __name__ == "__main__":
    print(json.dumps(gpu_section(Path(sys.argv[1]) if len(sys.argv) > 1 else None), indent=2))
