"""Fine-tuning shared by the finetune and sweep stages: per-architecture data setup, training, metrics and
safe artifacts (safetensors weights plus a JSON description; never a pickle)."""
from __future__ import annotations

import contextlib
import logging
import resource
import sys
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from imgclf.common import PipelineError, atomic_write_text, is_valid_item
from imgclf.training import checkpoint
from imgclf.training.archs import check_arch, model_setup, weights_file
from imgclf.training.artifacts import save_model

log = logging.getLogger(__name__)


def resolve_device(precision: str) -> tuple[str, str]:
    """('cuda'|'cpu', precision actually used): mixed precision only on CUDA."""
    import torch

    if torch.cuda.is_available():
        return "cuda", ("fp16" if precision == "auto" else precision)
    if precision in ("fp16", "bf16"):
        log.warning("train.precision is %s but there is no CUDA device: training in fp32", precision)
    return "cpu", "fp32"


def build_dls(files: list[Path], labels: list[str], *, size: int, mean: list[float], std: list[float],
              valid_pct: float, seed: int, batch_size: int, num_workers: int, device: str):
    """Fresh fastai DataLoaders for one model: stable hash split by file stem, Resize to `size`, and the
    model's own normalization (set here, so fastai never reuses another model's statistics)."""
    from fastai.vision.all import CategoryBlock, DataBlock, FuncSplitter, ImageBlock, Normalize

    if not files:
        raise PipelineError("no images found: run the data stages first (`dvc repro`).")
    valid = [is_valid_item(Path(f).stem, seed, valid_pct) for f in files]
    n_valid = sum(valid)
    if n_valid == 0 or n_valid == len(files):
        raise PipelineError(f"{len(files)} images cannot be split into train and valid with "
                            f"train.valid_pct={valid_pct}: add images or change valid_pct.")
    label_of = {str(f): y for f, y in zip(files, labels)}
    valid_set = {str(f) for f, v in zip(files, valid) if v}
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_y=lambda f: label_of[str(f)],
        splitter=FuncSplitter(lambda f: str(f) in valid_set),
        item_tfms=crop_resize(size),
        batch_tfms=Normalize.from_stats(mean, std),
    )
    bs = min(batch_size, len(files) - n_valid)
    return block.dataloaders([Path(f) for f in files], bs=bs, num_workers=num_workers, device=device, seed=seed)


def crop_resize(size: int):
    """fastai's `Resize(size)` (its default crop method) with the same crop boxes from the same random draws
    and the same bilinear resize, so the same pixels, at less cost per image; see `_crop_resize_class`."""
    return _crop_resize_class()(size)


@lru_cache(maxsize=1)
def _crop_resize_class():
    """A `Resize` subclass, built on first use so that importing this module does not import fastai.

    fastai's Resize pads every crop that touches the image's edge (all of them, for a crop method) by zero
    pixels through a numpy round trip, and resizes a crop that already has the target size; together that
    was about two thirds of the item pipeline's time on 64 px images. Dropping both changes no pixel."""
    from fastai.vision.all import PILMask, Resize, ResizeMethod
    from PIL import Image

    def _encodes(self, x):
        # Resize.encodes for the crop method: the largest box of the target's aspect ratio, placed by `pcts`
        # (random in training, the centre in validation), then resized to the target.
        resample = self.mode_mask if isinstance(x, PILMask) else self.mode
        w, h = x.size
        tw, th = self.size
        m = w / tw if w / tw < h / th else h / th
        cw, ch = int(m * tw), int(m * th)
        left, top = int(self.pcts[0] * (w - cw)), int(self.pcts[1] * (h - ch))
        x = x.crop((left, top, min(left + cw, w), min(top + ch, h)))
        return x if x.size == (tw, th) else x.resize((tw, th), resample)  # same size: Pillow would copy

    # fastai dispatches on the annotation; set it as a class, not the string this module's annotations are
    _encodes.__annotations__ = {"x": Image.Image}
    _encodes.__name__ = "encodes"

    class CropResize(Resize):
        encodes = _encodes  # fastai's Transform metaclass merges it with Resize's; the narrower type wins

        def __init__(self, size: int):
            super().__init__(size, method=ResizeMethod.Crop)

    CropResize.__qualname__ = "CropResize"  # how fastai names it in a pipeline's repr
    return CropResize


def train_model(arch: str, files: list[Path], labels: list[str], *, epochs: int, train: dict[str, Any],
                base: dict[str, Any], out_dir: Path, curves_dir: Path | None = None,
                confusion_csv: Path | None = None, checkpoint_dir: Path | None = None) -> dict[str, Any]:
    """Fine-tune `arch` (fastai `vision_learner` + `fine_tune`) and save its artifacts in `out_dir`, the
    per-epoch curves (DVCLive) in `curves_dir` and (actual, predicted) validation pairs in `confusion_csv`
    (by default both inside `out_dir`). With train.resume and a `checkpoint_dir` (which must not be a DVC
    output: DVC deletes those before a run), a checkpoint is kept after every epoch and an interrupted run
    with the same inputs resumes from it.
    Returns the metrics: accuracy, error rate, validation loss and what the model cost."""
    import torch
    from fastai.vision.all import set_seed

    check_arch(arch, train["pretrained"])
    if base["threads"]:
        torch.set_num_threads(base["threads"])
    set_seed(base["seed"], reproducible=True)
    device, precision = resolve_device(train["precision"])
    setup = model_setup(arch, train["img_size"])
    dls = build_dls(files, labels, size=setup["size"], mean=setup["mean"], std=setup["std"],
                    valid_pct=train["valid_pct"], seed=base["seed"], batch_size=train["batch_size"],
                    num_workers=base["num_workers"], device=device)
    learn = make_learner(arch, dls, train, setup)
    if device == "cuda" and precision != "fp32":
        learn.to_channelslast(amp_mode=precision)  # channels_last memory format + AMP
    curves_dir = curves_dir or out_dir / "live"
    learn.add_cb(_live_callback(curves_dir))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # progress bars only on a terminal: in CI and logs they are noise (the epoch table stays)
    with learn.no_bar() if not sys.stdout.isatty() else contextlib.nullcontext():
        start = time.perf_counter()
        if checkpoint_dir is not None and train.get("resume"):
            key = checkpoint.checkpoint_key(arch, epochs, train, base["seed"], files, labels)
            trained = fine_tune(learn, epochs, train["lr"], checkpoint_dir, key)
        else:
            learn.fine_tune(epochs, base_lr=train["lr"])
            trained = epochs + 1  # fine_tune = 1 frozen + `epochs`
        seconds = time.perf_counter() - start
        preds, targs, losses = learn.get_preds(with_loss=True)
    metrics = _metrics(learn, preds, targs, float(losses.mean()), seconds, epochs, trained, device, precision,
                       setup["size"])
    save_model(learn.model, out_dir, arch=arch, classes=list(dls.vocab), setup=setup)
    confused = _write_predictions(confusion_csv or out_dir / "predictions.csv", preds, targs, list(dls.vocab))
    atomic_write_text(out_dir / "most_confused.csv",
                      "actual,predicted,count\n" + "".join(f"{a},{p},{n}\n" for a, p, n in confused))
    if confused:
        log.info("most confused: %s", ", ".join(f"{a} as {p} ({n})" for a, p, n in confused[:5]))
    # DVCLive's summary and params duplicate our metrics file and params.yaml, and a dict-shaped JSON in a
    # plots folder breaks `dvc plots show`: keep only the per-epoch curves.
    for extra in ("metrics.json", "params.yaml"):
        (curves_dir / extra).unlink(missing_ok=True)
    if checkpoint_dir is not None:
        checkpoint.discard(checkpoint_dir)  # the model is in out_dir now
    return metrics


FREEZE_EPOCHS, LR_MULT, PCT_START, DIV = 1, 100, 0.3, 5.0  # fastai fine_tune's defaults


def fine_tune(learn, epochs: int, base_lr: float, folder: Path, key: str) -> int:
    """fastai's `Learner.fine_tune(epochs, base_lr)` written out phase by phase (the same schedules, so the same
    training), with a checkpoint in `folder` after every epoch, resuming from the one there if its key is `key`.
    Returns the number of epochs trained here. (Named `fine_tune` on purpose: DVCLive looks for that name on
    the call stack to tell the end of the frozen phase from the end of training.)"""
    resume = checkpoint.load_checkpoint(folder, key)
    if resume:
        log.info("resuming from the checkpoint after %d %s epoch(s) in %s", resume.done, resume.phase, folder)
        checkpoint.restore_weights(learn, resume)
    phases = [("frozen", FREEZE_EPOCHS, learn.freeze, {"lr_max": slice(base_lr), "pct_start": 0.99}),
              ("unfrozen", epochs, learn.unfreeze,
               {"lr_max": slice(base_lr / 2 / LR_MULT, base_lr / 2), "pct_start": PCT_START, "div": DIV})]
    order = [name for name, *_ in phases]
    saver = _checkpoint_callback_class()(folder, key, resume)
    for name, n_epoch, setup, kwargs in phases:
        setup()  # freeze/unfreeze; unfreeze clears the optimizer state, as in fastai's fine_tune
        start = 0
        if resume and order.index(name) < order.index(resume.phase):
            start = n_epoch  # finished before the checkpoint: every epoch is skipped
        elif resume and name == resume.phase:
            checkpoint.restore_optimizer(learn, resume)
            start = resume.done
        saver.phase, saver.start = name, start
        # a fully skipped phase still runs fit's begin/end events, which DVCLive counts to find the end
        learn.fit_one_cycle(n_epoch, cbs=saver, start_epoch=start, **kwargs)
    return saver.trained


@lru_cache(maxsize=1)
def _checkpoint_callback_class():
    """A fastai callback that saves a checkpoint after each trained epoch and restores the RNG states just
    before the first epoch a resumed run trains (built on first use: importing this module skips fastai)."""
    from fastai.callback.core import Callback

    class CheckpointCallback(Callback):
        order = 90  # after the Recorder and DVCLive: an epoch is saved once everything about it is done

        def __init__(self, folder: Path, key: str, resume):
            self.folder, self.key, self.resume = folder, key, resume
            self.phase, self.start, self.trained = "frozen", 0, 0

        def before_epoch(self):
            # the first epoch trained after a resume: continue the random streams where the checkpoint left them
            if self.resume is not None and self.epoch >= self.start:
                checkpoint.restore_rng(self.learn, self.resume)
                self.resume = None

        def after_epoch(self):
            if self.epoch >= self.start:  # epochs skipped by start_epoch also end with after_epoch
                self.trained += 1
                checkpoint.save_checkpoint(self.folder, self.key, self.learn, self.phase, self.epoch + 1)

    return CheckpointCallback


def make_learner(arch: str, dls, train: dict[str, Any], setup: dict[str, Any]):
    """fastai `vision_learner` for a timm `arch`, with weights from the hub, a local file
    (train.weights), or none (train.pretrained: false)."""
    from fastai.vision.all import accuracy, error_rate, vision_learner

    kwargs = dict(setup["model_kwargs"])
    local = weights_file(train["weights"], arch) if train["pretrained"] else None
    if local:
        kwargs["pretrained_cfg_overlay"] = {"file": str(local)}
    try:
        # normalize=False: build_dls already added this model's own statistics
        return vision_learner(dls, arch, pretrained=train["pretrained"], normalize=False, opt_func=adam,
                              metrics=[accuracy, error_rate], **kwargs)
    except (OSError, RuntimeError) as e:
        if train["pretrained"] and not local and _looks_like_download_error(e):
            raise PipelineError(f"could not get pretrained weights for {arch!r} from the Hugging Face hub "
                                f"({type(e).__name__}: {e}). Check the network, or set train.weights to a local "
                                "file or folder of weights, or train.pretrained: false.") from None
        raise


def adam(params, lr: float, mom: float = 0.9, sqr_mom: float = 0.99, eps: float = 1e-5, wd: float = 0.01):
    """fastai's `Adam` (the same callbacks, defaults and decoupled weight decay) whose final step computes its
    denominator in place: fastai's allocates two parameter-sized temporaries per parameter per step. The
    updates are bit-identical; an optimizer step takes about a fifth less time on CPU."""
    from functools import partial

    from fastai.optimizer import Optimizer, average_grad, average_sqr_grad, step_stat, weight_decay

    return Optimizer(params, [weight_decay, partial(average_grad, dampening=True), average_sqr_grad, step_stat,
                              _adam_step], lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd)


def _adam_step(p, lr, mom, step, sqr_mom, grad_avg, sqr_avg, eps, **kwargs):
    """fastai.optimizer.adam_step with `(sqr_avg / debias2).sqrt() + eps` done in one temporary."""
    debias1 = (1 - mom) * (1 - mom**step) / (1 - mom)  # fastai's debias(mom, 1 - mom, step), same float ops
    debias2 = (1 - sqr_mom) * (1 - sqr_mom**step) / (1 - sqr_mom)
    p.data.addcdiv_(grad_avg, sqr_avg.div(debias2).sqrt_().add_(eps), value=-lr / debias1)
    return p


def _looks_like_download_error(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in ("connect", "offline", "resolve", "huggingface", "hub", "network", "timed out"))


def _live_callback(folder: Path):
    """DVCLive per-epoch curves in `folder`, without touching the project's dvc.yaml or git."""
    from dvclive import Live
    from dvclive.fastai import DVCLiveCallback

    return DVCLiveCallback(live=Live(str(folder), dvcyaml=None, save_dvc_exp=False, report=None))


def _metrics(learn, preds, targs, valid_loss: float, seconds: float, epochs: int, trained: int, device: str,
             precision: str, size: int) -> dict[str, Any]:
    import torch

    acc = float((preds.argmax(dim=1) == targs).float().mean())
    n_train = len(learn.dls.train.dataset)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {
        "accuracy": round(acc, 6), "error_rate": round(1 - acc, 6), "valid_loss": round(valid_loss, 6),
        "train_time_s": round(seconds, 3), "epochs": epochs,
        "images_per_s": round(n_train * trained / seconds, 2),  # `trained`: epochs run here (fewer if resumed)
        "params_m": round(sum(p.numel() for p in learn.model.parameters()) / 1e6, 4),
        "peak_memory_mb": round(peak, 1), "device": device, "precision": precision, "img_size": size,
        "n_train": n_train, "n_valid": len(learn.dls.valid.dataset),
    }


def _write_predictions(path: Path, preds, targs, vocab: list[str]) -> list[tuple[str, str, int]]:
    """Write the (actual, predicted) validation pairs for DVC's confusion plot; return the most-confused
    pairs (actual, predicted, count), most frequent first."""
    pairs = [(vocab[t], vocab[p]) for t, p in zip(targs.tolist(), preds.argmax(1).tolist())]
    atomic_write_text(path, "actual,predicted\n" + "".join(f"{a},{p}\n" for a, p in pairs))
    counts = Counter((a, p) for a, p in pairs if a != p)
    return [(a, p, n) for (a, p), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
