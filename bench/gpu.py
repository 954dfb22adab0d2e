"""The `train` section of `make bench`, and what bench/gpu_session.sh runs on a lent GPU machine: how close the
training stage comes to the device's own speed.

    python -m bench.gpu [WORK_DIR] [--smoke]                            # prints the section as JSON
    python -m bench.gpu WORK_DIR --zoo-sample a,b,c --deadline-s 300   # times these sweep entries instead

On generated JPEGs, not pretrained (offline), `precision: auto`; FULL sizes on the GPU, CPU sizes in `make bench`
without CUDA, SMOKE sizes for a dry run. `in_stage_over_step_alone`: `train_model`'s images/s against the bare
training step on one batch already on the device (with `util_mean`, NVML's GPU utilisation over the fit);
`train_overhead_ratio`: our epoch against a plain PyTorch loop on the same DataLoaders; `startup_s`: the sweep
stage's wall time minus its `train_time_s`; `default_archs`: params.yaml's sweep.archs as stages, 4 epochs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
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

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Sizes:  # `archs` run as stages (None: params.yaml's sweep.archs); `steps` of the bare step
    arch: str = "resnet34"
    size: int = 224
    batch: int = 64
    per_class: int = 300
    archs: tuple[str, ...] | None = None
    steps: int = 50


FULL = Sizes()
CPU = Sizes(arch="resnet18", size=64, batch=64, per_class=128, archs=("test_resnet", "test_efficientnet"), steps=16)
SMOKE = Sizes(arch="resnet18", size=64, batch=16, per_class=12, archs=("test_resnet", "test_efficientnet"), steps=4)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LAYOUT = torch.channels_last if DEVICE == "cuda" else torch.contiguous_format  # as the stage trains


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _amp(precision: str):
    """(autocast context, gradient scaler) for `precision`, as the stage trains."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(DEVICE, enabled=precision == "fp16")
    return torch.autocast(DEVICE, dtype=dtype, enabled=precision != "fp32"), scaler


def _images(folder: Path, per_class: int) -> tuple[list[Path], list[str]]:
    from demo.synthetic import draw, jpeg_bytes

    for c in range(5):
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


def _sample_utilisation(stop: threading.Event, samples: list[tuple[float, int]]) -> None:
    """NVML GPU utilisation samples (time, percent) at 20 Hz until `stop` is set."""
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    while not stop.is_set():
        samples.append((time.perf_counter(), pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
        time.sleep(0.05)


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
    learner.make_learner = lambda *a, **k: real(*a, **k).add_cb(FitWindow())
    samples: list[tuple[float, int]] = []  # NVML's (time, GPU utilisation %)
    stop, params = threading.Event(), _params(s)
    if DEVICE == "cuda":
        threading.Thread(target=_sample_utilisation, args=(stop, samples), daemon=True).start()
    try:
        sections = {k: params[k] for k in ("train", "base", "runtime")}
        m = learner.train_model(s.arch, files, labels, epochs=2, out_dir=work / "in_stage", **sections)
    finally:
        learner.make_learner = real
        stop.set()
    window = [u for t, u in samples if marks["start"] <= t <= marks["end"]]
    util = round(sum(window) / len(window), 1) if window else None
    return dict(images_per_s=m["images_per_s"], precision=m["precision"], util_mean=util, util_samples=len(samples))


def _learner(files: list[Path], labels: list[str], s: Sizes):
    """Our learner as the stage builds it (channels-last on the GPU), and its precision."""
    import fastai.callback.channelslast
    import fastai.callback.progress
    import fastai.callback.schedule  # noqa: F401 - Learner.fit_one_cycle

    from imgclf.training.archs import model_setup
    from imgclf.training.device import resolve_device
    from imgclf.training.learner import build_dls, make_learner

    params = _params(s)
    dev, precision = resolve_device("auto")
    setup = model_setup(s.arch, s.size)
    split = dict(valid_pct=0.2, seed=42, batch_size=s.batch, num_workers=params["runtime"]["num_workers"], device=dev)
    dls = build_dls(files, labels, size=s.size, mean=setup["mean"], std=setup["std"], **split)
    learn = make_learner(s.arch, dls, params["train"], setup)
    if dev == "cuda":
        learn.to_channelslast(amp_mode=precision)
    return learn, precision


def _plain_step(model, opt, amp, x, y) -> None:
    """One step of a hand-written PyTorch loop (`amp`: `_amp`'s pair): forward, backward, optimizer step."""
    autocast, scaler = amp
    with autocast:
        loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=LAYOUT)), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


def step_alone(learn, precision: str, steps: int) -> dict[str, Any]:
    """Images/s of the bare training step on one batch already on the device."""
    model = copy.deepcopy(learn.model).to(DEVICE, memory_format=LAYOUT).train()
    opt, amp = torch.optim.AdamW(model.parameters(), lr=1e-3), _amp(precision)
    x, y = (t.as_subclass(torch.Tensor) for t in learn.dls.train.one_batch())
    x = x.contiguous(memory_format=LAYOUT)
    for i in range(10 + steps):
        if i == 10:
            _sync()
            start = time.perf_counter()
        _plain_step(model, opt, amp, x, y)
    _sync()
    return {"images_per_s": round(steps * len(y) / (time.perf_counter() - start), 1)}


def plain_epoch(model, dls, precision: str, lr: float = 2e-3) -> float:
    """Seconds of one epoch of a hand-written loop on `dls` (AdamW, one-cycle), with a validation pass."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=len(dls.train))
    amp, start = _amp(precision), time.perf_counter()
    model.train()
    for x, y in dls.train:
        _plain_step(model, opt, amp, x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor))
        sched.step()
    model.eval()
    with torch.no_grad(), amp[0]:
        for x, _ in dls.valid:
            model(x.as_subclass(torch.Tensor).contiguous(memory_format=LAYOUT)).argmax(1)
    _sync()
    return time.perf_counter() - start


def overhead(learn, precision: str, repeats: int = 3) -> dict[str, Any]:
    """Our one-epoch fit_one_cycle against `plain_epoch`, alternating, after a warm-up of each: the fastest of each."""
    plain_model = copy.deepcopy(learn.model).to(DEVICE, memory_format=LAYOUT)

    def ours() -> float:
        start = time.perf_counter()
        with learn.no_bar(), contextlib.redirect_stdout(io.StringIO()):
            learn.fit_one_cycle(1, 2e-3)
        _sync()
        return time.perf_counter() - start

    runs = [(ours(), plain_epoch(plain_model, learn.dls, precision)) for _ in range(repeats + 1)][1:]
    o, p = min(r[0] for r in runs), min(r[1] for r in runs)
    n = len(learn.dls.train) * learn.dls.train.bs
    return dict(ours_s=round(o, 3), plain_s=round(p, 3), ours_images_per_s=round(n / o, 1),
                plain_images_per_s=round(n / p, 1), train_overhead_ratio=round(o / p, 3))  # fmt: skip


def _stage(args: list[str], ws: Path, timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """`python -m <args>` in `ws`, the checkout first on PYTHONPATH (then what was there: a GPU machine's wheels)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ws, env=env, capture_output=True, text=True, timeout=timeout_s
    )


def stage_run(decoded: Path, ws: Path, arch: str, timeout_s: float | None = None) -> dict[str, Any]:
    """`python -m stages.sweep --arch <arch>` in `ws` (its params.yaml), record in ws/records/: wall, start-up, ..."""
    out, record = ws / "runs" / arch, ws / "records" / f"{arch}.json"
    args = ["stages.sweep", "--arch", arch, "--data", str(decoded), "--out", str(out / "model"), "--record"]
    args += [str(record), "--metrics", str(out / "metrics.json"), "--curves", str(out / "live")]
    start = time.perf_counter()
    try:
        res = _stage([*args, "--confusion", str(out / "confusion.csv")], ws, timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "wall_s": round(time.perf_counter() - start, 2)}
    wall = round(time.perf_counter() - start, 2)
    if res.returncode:
        return {"status": f"exit {res.returncode}", "wall_s": wall, "error": res.stderr[-3000:]}
    m = json.loads(record.read_text())
    keys = ("status", "reason", "params_m", "train_time_s", "images_per_s", "peak_memory_mb")
    return {"wall_s": wall, **{k: m.get(k) for k in keys}, "startup_s": round(wall - (m.get("train_time_s") or 0), 2)}


def stage_runs(decoded: Path, work: Path, archs: list[str], epochs: int, s: Sizes, deadline: float | None = None):
    """`stage_run` for each arch, one after another. Past a `deadline` (time.monotonic()) nothing starts and a run
    going is stopped (status `timeout`); without one, a failed run raises."""
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
    """The generated images and `python -m stages.decode`'s file made from them, with its wall seconds."""
    files, labels = _images(work / "images", s.per_class)
    (work / "stage_ws").mkdir(parents=True, exist_ok=True)
    (work / "stage_ws/params.yaml").write_text(yaml.safe_dump(_params(s)))
    decoded, start = work / "stage_ws/decoded.safetensors", time.perf_counter()
    res = _stage(["stages.decode", "--data", str(work / "images"), "--out", str(decoded)], work / "stage_ws")
    if res.returncode:
        raise RuntimeError(f"stages.decode failed:\n{res.stderr[-3000:]}")
    return files, labels, decoded, round(time.perf_counter() - start, 2)


def gpu_section(work: Path | None = None, s: Sizes = FULL) -> dict[str, Any]:
    """The whole section, on this machine's device; what is measured so far is also in work/partial.json, for a run
    stopped by its time limit."""
    work = work or Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out: dict[str, Any] = {"device": name, "arch": s.arch, "img_size": s.size, "batch_size": s.batch}

    def measured(**figures: Any) -> None:
        out.update(figures)
        (work / "partial.json").write_text(json.dumps(out, indent=2))

    files, labels, decoded, decode_s = _prepared(work, s)
    stage = in_stage(files, labels, work, s)
    measured(images=len(files), decode_s=decode_s, in_stage_images_per_s=stage.pop("images_per_s"), **stage)
    learn, precision = _learner(files, labels, s)
    alone = step_alone(learn, precision, s.steps)["images_per_s"]
    measured(step_alone_images_per_s=alone, in_stage_over_step_alone=round(out["in_stage_images_per_s"] / alone, 3))
    loop = overhead(learn, precision)
    measured(train_overhead_ratio=loop["train_overhead_ratio"], overhead=loop)
    one = stage_runs(decoded, work, [s.arch], 2, s)[s.arch]
    measured(startup_s=one["startup_s"], startup_run=one)
    archs = list(s.archs or yaml.safe_load((ROOT / "params.yaml").read_text())["sweep"]["archs"])
    default = stage_runs(decoded, work, archs, 4, s)
    wall = round(decode_s + sum(r["wall_s"] for r in default.values()), 1)
    measured(default_archs=default, default_archs_wall_s=wall)
    return out


def section(work: Path) -> dict[str, Any]:  # `make bench`'s train section
    return gpu_section(work, FULL if DEVICE == "cuda" else CPU)


def zoo_sample(work: Path, archs: list[str], deadline_s: float, s: Sizes = FULL) -> dict[str, Any]:
    """Each of `archs` (`stages.list_archs --sample 20`) as a sweep entry, 4 epochs, until `deadline_s` has passed;
    their records (work/stage_ws_4/records) feed `python -m stages.list_archs --sizes --estimate`."""
    deadline = time.monotonic() + deadline_s
    _, _, decoded, decode_s = _prepared(work, s)
    runs = stage_runs(decoded, work, archs, 4, s, deadline)
    return {"decode_s": decode_s, "archs": len(archs), "ran": len(runs), "runs": runs}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, nargs="?", help="scratch folder (default: a temporary one)")
    ap.add_argument("--zoo-sample", help="comma-separated architectures to time as sweep entries instead")
    ap.add_argument("--deadline-s", type=float, default=300, help="with --zoo-sample: stop after this long")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (a dry run of the script, on the CPU too)")
    args = ap.parse_args(argv)
    s = SMOKE if args.smoke else FULL
    with contextlib.redirect_stdout(sys.stderr):  # fastai's epoch tables: stdout is the JSON's
        if args.zoo_sample:
            work = args.work or Path(tempfile.mkdtemp(prefix="bench_zoo_"))
            out = zoo_sample(work, [a for a in args.zoo_sample.split(",") if a], args.deadline_s, s)
        else:
            out = gpu_section(args.work, s)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
