"""Training figures, through the public training API only (build_dls, make_learner; train_model in the stage):

- overhead: one epoch of our learner against a plain PyTorch loop over the same DataLoaders (same model copy,
  same batches, Adam with decoupled weight decay, one-cycle schedule, a validation pass with accuracy);
- loader vs step: images/s the training DataLoader delivers, and images/s of the model's own step;
- startup: wall time of the real `python -m stages.sweep` (on the decode stage's file, as in the pipeline) minus
  the train_time_s it reports.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]
ARCH, SIZE, BATCH, LR, SEED, THREADS = "resnet18", 64, 64, 2e-3, 42, 2
METRICS = ("train_time_s", "accuracy", "valid_loss")
# over the project's params.yaml, so keys added there later reach the training code too
OVERRIDES = {
    "base": {"seed": SEED, "threads": THREADS},
    "runtime": {"num_workers": 0, "resume": False},
    "train": dict(batch_size=BATCH, img_size=SIZE, lr=LR, pretrained=False, precision="fp32"),
    "sweep": {"epochs": 1, "archs": [ARCH]},
    "export": {"model": f"{ARCH}-{SEED}"},
}


def params() -> dict[str, Any]:
    """The project's params with OVERRIDES applied section by section."""
    out = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in OVERRIDES.items():
        out[section].update(values)
    return out


def median(runs: list[tuple[Any, float, float]], i: int) -> float:
    """The median of field `i` of timed() results, rounded."""
    return round(statistics.median(r[i] for r in runs), 3)


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(fn(), wall seconds, CPU seconds of this process and its finished children)."""

    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    wall, c = time.perf_counter(), cpu()
    result = fn()
    return result, time.perf_counter() - wall, cpu() - c


def images(root: Path, n_classes: int = 10, per_class: int = 64) -> list[Path]:
    """Demo-style images stored as the data stages store them (64 px shorter side, one folder per class)."""
    from demo.synthetic import draw, jpeg_bytes
    from imgclf.sources.images import clean_image, encode_jpeg

    for c in range(n_classes):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            jpeg = jpeg_bytes(draw(f"bench/{c}/{n}", c))
            (root / f"class{c:02d}" / f"{n:03d}.jpg").write_bytes(encode_jpeg(clean_image(jpeg, size=SIZE)))
    return sorted(root.glob("*/*.jpg"))


def learner(files: list[Path]):
    """Our learner for ARCH on `files`, built as train_model builds it (untrained, CPU, THREADS threads)."""
    import torch
    from fastai.vision.all import set_seed

    from imgclf.training.archs import model_setup
    from imgclf.training.learner import build_dls, make_learner

    torch.set_num_threads(THREADS)
    set_seed(SEED, reproducible=True)
    setup = model_setup(ARCH, SIZE)
    train, labels = params()["train"], [f.parent.name for f in files]
    split = dict(valid_pct=train["valid_pct"], seed=SEED, batch_size=BATCH, num_workers=0, device="cpu")
    dls = build_dls(files, labels, size=setup["size"], mean=setup["mean"], std=setup["std"], **split)
    return make_learner(ARCH, dls, train, setup)


def our_epoch(learn) -> float:
    """One unfrozen epoch as fine_tune runs it (discriminative rates, pct_start 0.3, div 5); the accuracy."""
    learn.unfreeze()
    with learn.no_bar(), contextlib.redirect_stdout(io.StringIO()):
        learn.fit_one_cycle(1, slice(LR / 2 / 100, LR / 2), pct_start=0.3, div=5.0)
    return float(learn.recorder.values[-1][2])


def plain_epoch(model, dls) -> float:
    """One epoch of a hand-written PyTorch loop over the same DataLoaders (batches as plain tensors, as any
    PyTorch code would take them); returns the validation accuracy."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=LR / 2, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR / 2, total_steps=len(dls.train), pct_start=0.3, div_factor=5.0, final_div_factor=1e5 / 5.0
    )
    model.train()
    for xb, yb in dls.train:
        F.cross_entropy(model(xb.as_subclass(torch.Tensor)), yb.as_subclass(torch.Tensor)).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for xb, yb in dls.valid:
            out, yb = model(xb.as_subclass(torch.Tensor)), yb.as_subclass(torch.Tensor)
            F.cross_entropy(out, yb)  # the validation loss fastai's Recorder computes
            correct, total = correct + int((out.argmax(1) == yb).sum()), total + len(yb)
    return correct / total


def overhead(work: Path, repeats: int = 3) -> dict[str, Any]:
    """Median wall and CPU seconds per epoch, ours vs plain, after a warm-up epoch each, in alternating order
    so drifting machine load hits both sides alike; then DataLoader and model-step throughput."""
    files = images(work / "images")
    learn = learner(files)
    model = copy.deepcopy(learn.model)
    sides: dict[str, Callable[[], float]] = {
        "ours": lambda: our_epoch(learn),
        "plain": lambda: plain_epoch(model, learn.dls),
    }
    for fn in sides.values():
        fn()  # warm-up
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in sides}
    for r in range(repeats):
        for name in sorted(sides, reverse=r % 2 == 1):
            runs[name].append(timed(sides[name]))
    med = {name: dict(wall_s=median(v, 1), cpu_s=median(v, 2), accuracy=round(v[-1][0], 4)) for name, v in runs.items()}
    ratio = {f"ratio_{k}": round(med["ours"][f"{k}_s"] / med["plain"][f"{k}_s"], 3) for k in ("wall", "cpu")}
    setup = dict(arch=ARCH, img_size=SIZE, batch_size=BATCH, threads=THREADS, images=len(files), repeats=repeats)
    return {**setup, "steps_per_epoch": len(learn.dls.train), **med, **ratio, **throughput(learn)}


def throughput(learn, repeats: int = 3) -> dict[str, float]:
    """Images/s of one pass over the training DataLoader, and of the model step (forward, backward, optimizer
    step) on one batch already loaded: which of the two bounds an epoch."""
    import torch

    dl = learn.dls.train
    n = len(dl) * dl.bs
    loader = median([timed(lambda: sum(1 for _ in dl)) for _ in range(repeats)], 1)
    xb, yb = (t.as_subclass(torch.Tensor) for t in dl.one_batch())
    model, opt = learn.model.train(), learn.opt

    def steps() -> None:
        for _ in range(len(dl)):
            learn.loss_func(model(xb), yb).backward()
            opt.step()
            opt.zero_grad()

    step = median([timed(steps) for _ in range(repeats)], 1)
    return {"loader_images_per_s": round(n / loader, 1), "step_images_per_s": round(n / step, 1)}


def startup(work: Path, repeats: int = 2) -> dict[str, Any]:
    """The real sweep stage from a fresh interpreter, after the decode stage: wall seconds minus the
    train_time_s it reports is what a stage costs beyond training (imports, data and learner set-up,
    predictions, saving)."""
    ws = work / "stage"
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(params(), sort_keys=False))
    data = work / "images"
    images(data)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    decode = [sys.executable, "-m", "stages.decode", "--data", str(data), "--out", "decoded.safetensors"]
    subprocess.run(decode, cwd=ws, env=env, capture_output=True, text=True, check=True)
    cmd = [sys.executable, "-m", "stages.sweep", "--arch", ARCH, "--data", "decoded.safetensors"]
    cmd += "--out model --record record.json --metrics metrics.json --curves live --confusion confusion.csv".split()
    runs = []
    for _ in range(repeats):
        res, wall, cpu = timed(lambda: subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True))
        if res.returncode:
            raise RuntimeError(f"stages.sweep failed:\n{res.stderr[-3000:]}")
        m = json.loads((ws / "record.json").read_text())
        runs.append(dict(wall_s=round(wall, 2), cpu_s=round(cpu, 2), **{k: m[k] for k in METRICS}))
    return {"startup_s": round(statistics.median(r["wall_s"] - r["train_time_s"] for r in runs), 2), "runs": runs}
