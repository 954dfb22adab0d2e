"""Sections 1 and 3: our fine-tune epoch against a plain PyTorch loop doing the same work, and what bounds an
epoch (the DataLoader or the model's own step).

Both sides train the same module (one copy each of what `make_learner` builds: timm resnet18 body + fastai
head, pretrained=False) on the same 640 JPEGs, 64 px, batch 64, 2 torch threads, num_workers 0, with the same
per-item work (decode, RGB, Resize's crop at a random place in training and the centre in validation, bilinear
resize to 64, uint8 CHW), the same batches (drop_last in training), float/255 + normalize on the batch,
cross-entropy, Adam with decoupled weight decay, a one-cycle schedule, and a validation pass with accuracy.
"""
from __future__ import annotations

import contextlib
import copy
import io
import random
from pathlib import Path
from typing import Any

from bench.common import THREADS, Sample, median, ratio, summary, timed, training_images

ARCH = "resnet18"
SIZE = 64
BATCH = 64
LR = 2e-3  # train.lr: fine_tune's base_lr
VALID_PCT = 0.2
SEED = 42
# stage_result with stages/training.py as committed before the speed-ups (dev machine, 2 cores); the current
# code reproduced these exactly, with bit-identical weights and predictions
BEFORE = {"accuracy": 0.163636, "valid_loss": 2.386214}


def _train_cfg() -> tuple[dict[str, Any], dict[str, Any]]:
    train = {"valid_pct": VALID_PCT, "batch_size": BATCH, "img_size": SIZE, "lr": LR, "pretrained": False,
             "weights": None, "precision": "fp32"}
    base = {"seed": SEED, "num_workers": 0, "threads": THREADS}
    return train, base


def our_learner(files: list[Path], live_dir: Path):
    """The learner exactly as `stages.training.train_model` builds it (threads, seed, DataLoaders, learner,
    DVCLive callback), ready for its unfrozen epoch."""
    import torch
    from fastai.vision.all import set_seed

    from imgclf.training.learner import _live_callback, build_dls, make_learner, model_setup

    train, base = _train_cfg()
    torch.set_num_threads(THREADS)
    set_seed(SEED, reproducible=True)
    setup = model_setup(ARCH, SIZE)
    labels = [f.parent.name for f in files]
    dls = build_dls(files, labels, size=setup["size"], mean=setup["mean"], std=setup["std"], valid_pct=VALID_PCT,
                    seed=SEED, batch_size=BATCH, num_workers=0, device="cpu")
    learn = make_learner(ARCH, dls, train, setup)
    learn.add_cb(_live_callback(live_dir))
    return learn, setup


def our_epoch(learn) -> None:
    """One unfrozen epoch the way `fine_tune` runs it (fit_one_cycle with its discriminative learning rates,
    pct_start and div), without a progress bar (as under `dvc repro` with output to a file or CI)."""
    learn.unfreeze()
    with learn.no_bar(), contextlib.redirect_stdout(io.StringIO()):  # the epoch table is still built
        learn.fit_one_cycle(1, slice(LR / 2 / 100, LR / 2), pct_start=0.3, div=5.0)


class PlainLoop:
    """A hand-written PyTorch training loop: PIL + torch only, no fastai, no callbacks."""

    def __init__(self, model, train_items: list[Path], valid_items: list[Path], vocab: list[str],
                 mean: list[float], std: list[float]):
        import torch

        self.model = model
        self.train_items, self.valid_items = train_items, valid_items
        self.label = {str(p): vocab.index(p.parent.name) for p in train_items + valid_items}
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.steps = len(train_items) // BATCH
        # fastai's Adam defaults (betas 0.9/0.99, eps 1e-5, decoupled wd 0.01) and fit_one_cycle's schedule
        self.opt = torch.optim.AdamW(model.parameters(), lr=LR / 2, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
        self.rng = random.Random(SEED)

    def _schedule(self):
        import torch

        return torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=LR / 2, total_steps=self.steps, pct_start=0.3,
                                                   div_factor=5.0, final_div_factor=1e5 / 5.0, base_momentum=0.85,
                                                   max_momentum=0.95)

    def load(self, path: Path, train: bool):
        """Decode, crop a square (random place in training, centre in validation) and resize, like Resize."""
        import numpy as np
        import torch
        from PIL import Image

        img = Image.open(path).convert("RGB")
        w, h = img.size
        side = min(w, h)
        px, py = (self.rng.random(), self.rng.random()) if train else (0.5, 0.5)
        left, top = int(px * (w - side)), int(py * (h - side))
        img = img.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(img)).permute(2, 0, 1)

    def batch(self, paths: list[Path], train: bool):
        import torch

        x = torch.stack([self.load(p, train) for p in paths]).float().div_(255)
        return (x - self.mean) / self.std, torch.tensor([self.label[str(p)] for p in paths])

    def epoch(self) -> float:
        """Train one epoch (shuffled, drop_last) and validate; return the validation accuracy."""
        import torch
        import torch.nn.functional as F

        sched = self._schedule()
        self.model.train()
        order = torch.randperm(len(self.train_items)).tolist()
        for i in range(self.steps):
            x, y = self.batch([self.train_items[j] for j in order[i * BATCH:(i + 1) * BATCH]], True)
            F.cross_entropy(self.model(x), y).backward()
            self.opt.step()
            sched.step()
            self.opt.zero_grad()
        self.model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(self.valid_items), BATCH):
                x, y = self.batch(self.valid_items[i:i + BATCH], False)
                out = self.model(x)
                F.cross_entropy(out, y)  # the validation loss fastai's Recorder computes
                correct += int((out.argmax(1) == y).sum())
        return correct / len(self.valid_items)


def train_overhead(work: Path, repeats: int = 5) -> tuple[dict[str, Any], Any]:
    """Section 1: wall and CPU time per epoch, ours vs the plain loop, after one warm-up epoch each, in
    alternating order (ours first on even repeats) so drifting machine load hits both sides alike.
    Returns the figures and the learner (section 3 reuses it)."""
    files = training_images(work / "train_images")
    learn, setup = our_learner(files, work / "live")
    dls = learn.dls
    plain = PlainLoop(copy.deepcopy(learn.model), list(dls.train.items), list(dls.valid.items), list(dls.vocab),
                      setup["mean"], setup["std"])
    if plain.steps != len(dls.train):
        raise RuntimeError(f"the plain loop would take {plain.steps} steps, fastai {len(dls.train)}")
    timed(lambda: our_epoch(learn))
    timed(plain.epoch)
    ours: list[Sample] = []
    theirs: list[Sample] = []
    plain_acc = 0.0
    for r in range(repeats):
        for side in (("ours", "plain") if r % 2 == 0 else ("plain", "ours")):
            if side == "ours":
                ours.append(timed(lambda: our_epoch(learn))[1])
            else:
                plain_acc, sample = timed(plain.epoch)
                theirs.append(sample)
    o, p = summary(ours), summary(theirs)
    return {
        "images": len(files), "n_train": len(dls.train.items), "n_valid": len(dls.valid.items),
        "steps_per_epoch": len(dls.train), "batch_size": BATCH, "img_size": SIZE, "arch": ARCH, "threads": THREADS,
        "repeats": repeats, "ours": o, "plain": p,
        "ratio_wall": ratio(o["wall_s"], p["wall_s"]), "ratio_cpu": ratio(o["cpu_s"], p["cpu_s"]),
        "ratio_wall_min": ratio(o["wall_min_s"], p["wall_min_s"]),
        "ours_accuracy": round(float(learn.recorder.values[-1][2]), 4), "plain_accuracy": round(plain_acc, 4),
    }, learn


def trained_learner(work: Path):
    """Our learner after one unfrozen epoch (so its optimizer exists), for section 3 run on its own."""
    learn, _ = our_learner(training_images(work / "train_images"), work / "live")
    our_epoch(learn)
    return learn


def input_vs_compute(learn, repeats: int = 3) -> dict[str, Any]:
    """Section 3: images/s the training DataLoader delivers (batch transforms included) against images/s of
    the model's own step (forward, backward, optimizer step, zero_grad) on one pre-loaded batch."""
    import torch

    dl = learn.dls.train
    n = len(dl) * dl.bs
    loader = [timed(lambda: sum(1 for _ in dl))[1] for _ in range(repeats)]
    x, y = dl.one_batch()
    x, y = x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)
    model, opt = learn.model, learn.opt
    model.train()

    def steps() -> None:
        for _ in range(len(dl)):
            learn.loss_func(model(x), y).backward()
            opt.step()
            opt.zero_grad()

    compute = [timed(steps)[1] for _ in range(repeats)]
    lw, cw = median([s.wall for s in loader]), median([s.wall for s in compute])
    lc, cc = median([s.cpu for s in loader]), median([s.cpu for s in compute])
    return {"images": n, "loader": summary(loader), "step": summary(compute),
            "loader_images_per_s": round(n / lw, 1), "step_images_per_s": round(n / cw, 1),
            "loader_images_per_cpu_s": round(n / lc, 1), "step_images_per_cpu_s": round(n / cc, 1),
            "loader_share_of_epoch": round(lw / (lw + cw), 3), "loader_share_of_epoch_cpu": round(lc / (lc + cc), 3)}


def stage_result(work: Path) -> dict[str, Any]:
    """The real `train_model` (fine_tune, 1 frozen + 1 unfrozen epoch) on the same images: its accuracy and
    validation loss show whether a speed change altered results."""
    from imgclf.training.learner import train_model

    files = training_images(work / "train_images")
    train, base = _train_cfg()
    with contextlib.redirect_stdout(io.StringIO()):
        m = train_model(ARCH, files, [f.parent.name for f in files], epochs=1, train=train, base=base,
                        out_dir=work / "stage_model")
    return {k: m[k] for k in ("accuracy", "valid_loss", "train_time_s", "n_train", "n_valid")}


def step_seconds() -> None:
    """Child process for `omp_wait_policy_effect`: median seconds of 5 training steps (resnet18, a random
    64 px batch of 64, AdamW, 2 threads) after one warm-up step, printed as one number."""
    import statistics
    import time

    import timm
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    model = timm.create_model(ARCH, num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(BATCH, 3, SIZE, SIZE), torch.randint(0, 10, (BATCH,))
    times = []
    for _ in range(6):
        start = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    print(statistics.median(times[1:]))


def omp_wait_policy_effect() -> dict[str, Any]:
    """Seconds per training step with OpenMP's default wait policy (idle threads spin) and with PASSIVE (they
    sleep), each in a fresh process: on a machine other jobs share, spinning can dominate an epoch."""
    import os
    import subprocess
    import sys

    out: dict[str, Any] = {}
    for policy in ("default", "PASSIVE"):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        (res, sample) = timed(lambda: subprocess.run(
            [sys.executable, "-c", "from bench.training import step_seconds; step_seconds()"], env=env,
            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1]))
        out[policy] = {"step_s": round(float(res.stdout.split()[-1]), 3), "others_share": round(sample.others, 3)}
    out["default_over_passive"] = ratio(out["default"]["step_s"], out["PASSIVE"]["step_s"])
    return out
