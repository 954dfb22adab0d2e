"""The `gpu` section of `make bench` (CUDA only): how close the training stage comes to the GPU's own speed.

    python -m bench.gpu [WORK_DIR]                           # prints the section as JSON
    python -m bench.gpu WORK_DIR --zoo-sample a,b,c --deadline-s 300   # times these sweep entries instead
    python -m bench.gpu WORK_DIR --smoke [...]               # tiny sizes, on the CPU too: a dry run

bench/gpu_session.sh runs both on a lent GPU machine (README, Performance, says how).

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

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 5


@dataclass(frozen=True)
class Sizes:
    """What the section measures: `arch` at `size` px, batch `batch`, `per_class` images in each of 5 classes,
    and `archs` as sweep stages (None: params.yaml's sweep.archs)."""

    arch: str = "resnet34"
    size: int = 224
    batch: int = 64
    per_class: int = 300
    archs: tuple[str, ...] | None = None


FULL = Sizes()
SMOKE = Sizes(arch="resnet18", size=64, batch=16, per_class=12, archs=("test_resnet", "test_efficientnet"))


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _autocast(precision: str):
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(_device(), dtype=dtype, enabled=precision != "fp32")


def _scaler(precision: str):
    import torch

    return torch.amp.GradScaler(_device(), enabled=precision == "fp16")


def _stage_env() -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH (and what was there kept: on a GPU machine, the
    folder the wheels went into)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _images(folder: Path, per_class: int) -> tuple[list[Path], list[str]]:
    from demo.synthetic import draw, jpeg_bytes

    for c in range(CLASSES):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            path = folder / f"class{c}" / f"{n:04d}.jpg"
            if not path.exists():
                path.write_bytes(jpeg_bytes(draw(f"gpu/{c}/{n}", c, size=(320, 256))))
    files = sorted(folder.rglob("*.jpg"))
    return files, [f.parent.name for f in files]


def _params(s: Sizes, epochs: int = 2) -> dict[str, Any]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(pretrained=False, img_size=s.size, batch_size=s.batch, precision="auto")
    params["runtime"].update(num_workers=min(12, os.cpu_count() or 1))
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


def in_stage(files: list[Path], labels: list[str], work: Path, s: Sizes) -> dict[str, Any]:
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

    params, util = _params(s), _Utilisation() if _device() == "cuda" else None
    if util:
        util.thread.start()
    learner.make_learner = make
    try:
        m = learner.train_model(
            s.arch,
            files,
            labels,
            epochs=params["sweep"]["epochs"],
            train=params["train"],
            base=params["base"],
            runtime=params["runtime"],
            out_dir=work / "in_stage",
        )
    finally:
        learner.make_learner = real
        if util:
            util.stop.set()
    return {
        "images_per_s": m["images_per_s"],
        "train_time_s": m["train_time_s"],
        "precision": m["precision"],
        "util_mean": util.mean(marks["start"], marks["end"]) if util else None,
        "util_samples": len(util.samples) if util else 0,
    }


def _learner_and_dls(files: list[Path], labels: list[str], s: Sizes):
    import fastai.callback.channelslast
    import fastai.callback.progress
    import fastai.callback.schedule  # noqa: F401 - Learner.fit_one_cycle

    from imgclf.training.archs import model_setup
    from imgclf.training.device import resolve_device
    from imgclf.training.learner import build_dls, make_learner

    params = _params(s)
    device, precision = resolve_device("auto")
    setup = model_setup(s.arch, s.size)
    dls = build_dls(
        files,
        labels,
        size=s.size,
        mean=setup["mean"],
        std=setup["std"],
        valid_pct=0.2,
        seed=42,
        batch_size=s.batch,
        num_workers=params["runtime"]["num_workers"],
        device=device,
    )
    learn = make_learner(s.arch, dls, params["train"], setup)
    if device == "cuda":  # as the stage does
        learn.to_channelslast(amp_mode=precision)
    return learn, dls, precision


def step_alone(learn, precision: str, steps: int = 50) -> dict[str, Any]:
    """Images/s of the bare training step on one batch already on the GPU."""
    import torch

    model = copy.deepcopy(learn.model).to(_device(), memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = _scaler(precision)
    x, y = learn.dls.train.one_batch()
    x = x.as_subclass(torch.Tensor).contiguous(memory_format=torch.channels_last)
    y = y.as_subclass(torch.Tensor)

    def step():
        with _autocast(precision):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(10):
        step()
    _sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    return {"images_per_s": round(steps * len(y) / (time.perf_counter() - start), 1)}


def plain_epoch(model, dls, precision: str, lr: float = 2e-3) -> tuple[float, float]:
    """(seconds, validation accuracy) of one epoch of a hand-written loop on `dls`, same precision."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=len(dls.train))
    scaler = _scaler(precision)
    _sync()
    start = time.perf_counter()
    model.train()
    for x, y in dls.train:
        with _autocast(precision):
            loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad(), _autocast(precision):
        correct = sum(
            int((model(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y).sum()) for x, y in dls.valid
        )
    _sync()
    return time.perf_counter() - start, correct / len(dls.valid.dataset)


def overhead(learn, dls, precision: str, repeats: int = 3) -> dict[str, Any]:
    """Our one-epoch fit_one_cycle against `plain_epoch`, alternating, after a warm-up of each."""
    import io

    import torch

    plain_model = copy.deepcopy(learn.model).to(_device(), memory_format=torch.channels_last)

    def ours() -> float:
        _sync()
        start = time.perf_counter()
        with learn.no_bar(), contextlib.redirect_stdout(io.StringIO()):
            learn.fit_one_cycle(1, 2e-3)
        _sync()
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


def decode_run(image_dir: Path, work: Path, s: Sizes) -> tuple[Path, float]:
    """`python -m stages.decode` as the pipeline runs it before the sweep: (its file, wall seconds)."""
    ws = work / "stage_ws"
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(_params(s)))
    out = ws / "decoded.safetensors"
    cmd = [sys.executable, "-m", "stages.decode", "--data", str(image_dir), "--out", str(out)]
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=ws, env=_stage_env(), capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"stages.decode failed:\n{res.stderr[-3000:]}")
    return out, round(time.perf_counter() - start, 2)


def stage_run(decoded: Path, ws: Path, arch: str, timeout_s: float | None = None) -> dict[str, Any]:
    """`python -m stages.sweep --arch <arch>` on the decode stage's file, in `ws` (with its params.yaml), its
    record in ws/records/<arch>.json: wall, status, train_time_s and start-up, or the error."""
    out = ws / "runs" / arch
    metrics = ws / "records" / f"{arch}.json"
    cmd = [sys.executable, "-m", "stages.sweep", "--arch", arch, "--data", str(decoded), "--out", str(out / "model")]
    cmd += ["--record", str(metrics), "--metrics", str(out / "metrics.json"), "--curves", str(out / "live")]
    cmd += ["--confusion", str(out / "confusion.csv")]
    start = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=ws, env=_stage_env(), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "wall_s": round(time.perf_counter() - start, 2)}
    wall = time.perf_counter() - start
    if res.returncode:
        return {"status": f"exit {res.returncode}", "wall_s": round(wall, 2), "error": res.stderr[-3000:]}
    m = json.loads(metrics.read_text())
    return {
        "wall_s": round(wall, 2),
        "status": m["status"],
        "reason": m.get("reason"),
        "params_m": m.get("params_m"),
        "train_time_s": m.get("train_time_s"),
        "images_per_s": m.get("images_per_s"),
        "peak_memory_mb": m.get("peak_memory_mb"),
        "startup_s": round(wall - (m.get("train_time_s") or 0), 2),
    }


def stage_runs(
    decoded: Path, work: Path, archs: list[str], epochs: int, s: Sizes, deadline: float | None = None
) -> dict[str, Any]:
    """`stage_run` for each arch, one after another, with `epochs`. With a `deadline` (time.monotonic()), the
    runs left when it passes are not started and a run still going then is stopped (status `timeout`);
    without one, a failed run raises."""
    ws = work / f"stage_ws_{epochs}"
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(_params(s, epochs)))
    runs = {}
    for arch in archs:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        runs[arch] = stage_run(decoded, ws, arch, left)
        if deadline is None and runs[arch]["status"] != "ok":
            raise RuntimeError(f"stages.sweep --arch {arch}: {runs[arch]}")
    return runs


def _prepared(work: Path, s: Sizes) -> tuple[list[Path], list[str], Path, float]:
    """The generated images and the decode stage's file made from them (with its wall seconds)."""
    files, labels = _images(work / "images", s.per_class)
    decoded, decode_s = decode_run(work / "images", work, s)
    return files, labels, decoded, decode_s


def gpu_section(work: Path | None = None, s: Sizes = FULL, smoke: bool = False) -> dict[str, Any]:
    """The whole section (an empty dict without CUDA, unless `smoke`). What is measured so far is also in
    work/partial.json, for a run stopped by its time limit."""
    import torch

    if not torch.cuda.is_available() and not smoke:
        return {}
    work = work or Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "arch": s.arch,
        "img_size": s.size,
        "batch_size": s.batch,
    }

    def measured(**figures: Any) -> None:
        out.update(figures)
        work.mkdir(parents=True, exist_ok=True)
        (work / "partial.json").write_text(json.dumps(out, indent=2))

    files, labels, decoded, decode_s = _prepared(work, s)
    stage = in_stage(files, labels, work, s)
    measured(
        images=len(files),
        decode_s=decode_s,
        precision=stage["precision"],
        in_stage_images_per_s=stage["images_per_s"],
        util_mean=stage["util_mean"],
        util_samples=stage["util_samples"],
    )
    learn, dls, precision = _learner_and_dls(files, labels, s)
    alone = step_alone(learn, precision)
    measured(
        step_alone_images_per_s=alone["images_per_s"],
        in_stage_over_step_alone=round(stage["images_per_s"] / alone["images_per_s"], 3),
    )
    loop = overhead(learn, dls, precision)
    measured(train_overhead_ratio=loop["train_overhead_ratio"], overhead=loop)
    one = stage_runs(decoded, work, [s.arch], 2, s)[s.arch]
    measured(startup_s=one["startup_s"], startup_run=one)
    archs = list(s.archs or yaml.safe_load((ROOT / "params.yaml").read_text())["sweep"]["archs"])
    default = stage_runs(decoded, work, archs, 4, s)
    measured(
        default_archs=default, default_archs_wall_s=round(decode_s + sum(r["wall_s"] for r in default.values()), 1)
    )
    return out


def zoo_sample(work: Path, archs: list[str], deadline_s: float, s: Sizes = FULL) -> dict[str, Any]:
    """Issue 15's timing: each of `archs` (`python -m stages.list_archs --sample 20`) as a sweep entry, 4 epochs
    on the generated five-class images, one after another, until `deadline_s` seconds have passed. Not
    pretrained (no network): fit_one_cycle's 4 epochs, without fine_tune's frozen one. Their records
    (work/stage_ws_4/records) feed `python -m stages.list_archs --sizes --estimate --records-dir ...`."""
    deadline = time.monotonic() + deadline_s
    _, _, decoded, decode_s = _prepared(work, s)
    runs = stage_runs(decoded, work, archs, 4, s, deadline)
    return {"decode_s": decode_s, "archs": len(archs), "ran": len(runs), "runs": runs}


run = gpu_section  # the name bench/run.py calls


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, nargs="?", help="scratch folder (default: a temporary one)")
    ap.add_argument("--zoo-sample", help="comma-separated architectures to time as sweep entries instead")
    ap.add_argument("--deadline-s", type=float, default=300, help="with --zoo-sample: stop after this long")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, on the CPU too (a dry run of the script)")
    args = ap.parse_args(argv)
    s = SMOKE if args.smoke else FULL
    with contextlib.redirect_stdout(sys.stderr):  # fastai's epoch tables: stdout is the JSON's
        if args.zoo_sample:
            work = args.work or Path(tempfile.mkdtemp(prefix="bench_zoo_"))
            out = zoo_sample(work, [a for a in args.zoo_sample.split(",") if a], args.deadline_s, s)
        else:
            out = gpu_section(args.work, s, args.smoke)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
