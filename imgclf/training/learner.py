"""Training shared by the finetune and sweep stages: data decoded once (imgclf.training.data), fastai's
`vision_learner` with fastai's own schedules (`fine_tune` for pretrained weights, `fit_one_cycle` from scratch),
metrics, and safe artifacts (safetensors weights plus a JSON description; never a pickle)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from imgclf.common import PipelineError, atomic_write_text, csv_text, plural
from imgclf.training.archs import check_arch, model_setup, weights_file
from imgclf.training.artifacts import save_model
from imgclf.training.data import Decoded, ImageSet, dataloaders, decoded_splits
from imgclf.training.device import (
    MIN_BATCH,
    OutOfMemoryAtMinBatch,
    OutOfMemoryWhileShared,
    TimeLimitReached,
    device_name,
    device_shared,
    free_cuda_memory,
    gpu_shared,
    is_out_of_memory,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
)
from imgclf.training.inference import TIMING_KEYS, inference_cost

log = logging.getLogger(__name__)

# what the training stages import before anything else (imgclf.common.run_main says why)
TRAINING_LIBRARIES = ("torch", "timm", "fastai.vision.learner", "dvclive")


@contextlib.contextmanager
def step(name: str):
    """Names the training step an exception comes from, as its `failed_step` (the innermost step names it), so
    that a failure's record says where it failed: loading the data, building the model, training, predicting,
    saving."""
    try:
        yield
    except Exception as e:
        if not hasattr(e, "failed_step"):
            with contextlib.suppress(AttributeError):  # an exception type without a __dict__ stays unnamed
                e.failed_step = name
        raise


def build_dls(
    files: list[Path],
    labels: list[str],
    *,
    size: int,
    mean: list[float],
    std: list[float],
    valid_pct: float,
    seed: int,
    batch_size: int,
    num_workers: int,
    device: str,
    augment: str = "crop",
    data_on_device_max_mb: float = 2048,
):
    """fastai DataLoaders over images decoded once (stable hash split by file stem, `augment` per training
    batch, the model's own normalization). `num_workers` threads decode the images; batches need none."""
    train, valid = decoded_splits(
        files,
        labels,
        size=size,
        valid_pct=valid_pct,
        seed=seed,
        augment=augment,
        device=device,
        max_mb=data_on_device_max_mb,
        threads=num_workers,
    )
    return dataloaders(train, valid, batch_size=batch_size, mean=mean, std=std, device=device)


def train_model(
    arch: str,
    files: list[Path],
    labels: list[str],
    *,
    epochs: int,
    train: dict[str, Any],
    base: dict[str, Any],
    runtime: dict[str, Any],
    out_dir: Path,
    curves_dir: Path | None = None,
    confusion_csv: Path | None = None,
    checkpoint_dir: Path | None = None,
    save_weights: bool = True,
    time_limit_s: float | None = None,
    decoded: Decoded | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Train `arch` (fastai `vision_learner`; `fine_tune` with pretrained weights, `fit_one_cycle` from scratch)
    and save its artifacts in `out_dir`, the per-epoch curves (DVCLive) in `curves_dir` and (actual, predicted)
    validation pairs in `confusion_csv` (by default both inside `out_dir`). `train` and `base` are what the result
    depends on; `runtime`, how it runs (params.yaml's sections of those names). With runtime.resume and a
    `checkpoint_dir` (which must not be a DVC output: DVC deletes those before a run), a checkpoint is kept
    after every epoch and an interrupted run with the same inputs resumes from it.
    An out-of-memory error (any form `is_out_of_memory` knows) retries from the start with half the batch size
    and the same learning rate, down to MIN_BATCH (then OutOfMemoryAtMinBatch); while other processes share the
    GPU it raises OutOfMemoryWhileShared instead. The metrics' `batch_size` is the batch it trained at.
    With `time_limit_s`, training stops at the first epoch boundary past it and raises TimeLimitReached.
    `save_weights=False` writes model.json without the weights (the metrics and curves are written as usual).
    `decoded`: the images already decoded (`stages.decode`'s file, whose names and labels `files` and `labels` are).
    `seed`: the training seed (default base.seed); the train/valid split always uses base.seed.
    Returns the metrics: accuracy, error rate, validation loss, the schedule, batch size and what the model cost."""
    import torch

    check_arch(arch, train["pretrained"])
    if base["threads"]:
        torch.set_num_threads(base["threads"])
    device, precision = resolve_device(train["precision"])
    setup = model_setup(arch, train["img_size"])
    if decoded is not None and decoded.size != setup["size"]:
        setup["decoded_size"] = decoded.size  # model.json: predict resizes from this size as training did
    with step("load data"):
        sets = decoded_splits(
            files,
            labels,
            size=setup["size"],
            valid_pct=train["valid_pct"],
            seed=base["seed"],
            augment=train["augment"],
            device=device,
            max_mb=runtime["data_on_device_max_mb"],
            threads=runtime["num_workers"],
            decoded=decoded,
        )
    batch_size = min(train["batch_size"], len(sets[0]))
    while True:
        try:
            return _train(
                arch,
                (files, labels, decoded.file_bytes if decoded is not None else None),
                sets,
                batch_size,
                epochs=epochs,
                train=train,
                base=base,
                seed=base["seed"] if seed is None else seed,
                resume=runtime["resume"],
                device=device,
                precision=precision,
                setup=setup,
                out_dir=out_dir,
                curves_dir=curves_dir or out_dir / "live",
                confusion_csv=confusion_csv or out_dir / "predictions.csv",
                checkpoint_dir=checkpoint_dir,
                save_weights=save_weights,
                time_limit_s=time_limit_s,
            )
        except Exception as e:  # noqa: BLE001 - only out-of-memory errors are handled here
            if not is_out_of_memory(e):
                raise
            error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
        # handled out here: inside the except block the traceback still holds the failed attempt's GPU tensors
        free_cuda_memory()
        where = device_name(device)
        if gpu_shared():
            raise OutOfMemoryWhileShared(
                f"{arch}: out of memory at batch {batch_size} on {where} while other processes use it"
            )
        if batch_size <= MIN_BATCH:
            raise OutOfMemoryAtMinBatch(
                f"out of memory at batch {batch_size} on {where}", batch_size=batch_size, device=where
            )
        smaller = max(MIN_BATCH, batch_size // 2)
        log.warning(
            "%s: out of memory at batch %d on %s (%s): retrying at batch %d", arch, batch_size, where, error, smaller
        )
        batch_size = smaller


def _train(
    arch: str,
    items: tuple[list[Path], list[str], list[int] | None],
    sets: tuple[ImageSet, ImageSet],
    batch_size: int,
    *,
    epochs: int,
    train: dict[str, Any],
    base: dict[str, Any],
    seed: int,
    resume: bool,
    device: str,
    precision: str,
    setup: dict[str, Any],
    out_dir: Path,
    curves_dir: Path,
    confusion_csv: Path,
    checkpoint_dir: Path | None,
    save_weights: bool = True,
    time_limit_s: float | None = None,
) -> dict[str, Any]:
    """One training attempt at `batch_size`, seeded from scratch with the training `seed` (a retry does not
    depend on the failed one)."""
    import torch

    # imported for what they add to Learner: to_channelslast (+ MixedPrecision), no_bar, fit_one_cycle, fine_tune
    from fastai.callback import channelslast, progress, schedule  # noqa: F401
    from fastai.torch_core import set_seed

    from imgclf.training import checkpoint
    from imgclf.training.callbacks import EpochTable, TimeLimit, live_callback

    set_seed(seed, reproducible=True)
    if device == "cuda":
        # set_seed(reproducible=True) turns cuDNN autotuning off; CUDA runs are not bitwise reproducible anyway
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    reset_peak_memory(device)
    with step("build model"):
        dls = dataloaders(*sets, batch_size=batch_size, mean=setup["mean"], std=setup["std"], device=device)
        learn = make_learner(arch, dls, train, setup)
        if device == "cuda":
            learn.to_channelslast(use_amp=precision != "fp32", amp_mode=precision)
        learn.add_cb(live_callback(curves_dir))
    checkpoints = None
    if checkpoint_dir is not None and resume:
        run = {**train, "batch_size": batch_size, "split_seed": base["seed"]}  # the split's seed and the training's
        key = checkpoint.checkpoint_key(arch, epochs, run, seed, *items)
        checkpoints = checkpoint.Checkpoint(checkpoint_dir, key)
    fit_with = "fine_tune" if train["pretrained"] else "fit_one_cycle"
    total = epochs + (fit_with == "fine_tune")  # fine_tune = 1 frozen epoch + `epochs`
    limit = TimeLimit(time_limit_s, total) if time_limit_s is not None else None
    cbs = [cb for cb in (checkpoints, limit) if cb is not None]
    terminal = sys.stdout.isatty()
    if not terminal:
        learn.logger = EpochTable(learn)  # header + one row per epoch; on a terminal fastai's progress table
    with learn.no_bar() if not terminal else contextlib.nullcontext():
        start = time.perf_counter()
        with step("train"):
            if fit_with == "fine_tune":
                learn.fine_tune(epochs, base_lr=train["lr"], cbs=cbs)
            else:  # from scratch: no frozen random body (vision_learner only freezes pretrained models)
                learn.fit_one_cycle(epochs, train["lr"], cbs=cbs)
        seconds = time.perf_counter() - start
        if limit is not None and limit.stopped:
            where = device_name(device)
            raise TimeLimitReached(
                f"time limit after {plural(limit.epochs, 'epoch')} on {where}", batch_size=batch_size, device=where
            )
        with step("predict"):
            preds, targs, losses = learn.get_preds(with_loss=True)
    trained = checkpoints.trained if checkpoints is not None else total  # a resumed run counts the epochs it trained
    with step("predict"):
        metrics = _metrics(
            learn, preds, targs, float(losses.mean()), seconds, epochs, trained, device, precision, setup["size"]
        )
    metrics.update(schedule=fit_with, batch_size=batch_size, augment=train["augment"])
    vocab = list(dls.vocab)
    with step("save"):
        save_model(learn.model, out_dir, arch=arch, classes=vocab, setup=setup, weights=save_weights)
        confused = _write_predictions(confusion_csv, preds, targs, vocab, dls.valid.dataset.files)
        rows = [{"actual": a, "predicted": p, "count": n} for a, p, n in confused]
        atomic_write_text(out_dir / "most_confused.csv", csv_text(rows, ["actual", "predicted", "count"]))
    # after the weights and predictions are written: the timing cannot change them
    metrics.update(_cost(arch, learn.model, setup["size"], device, precision))
    if confused:
        log.info("most confused: %s", ", ".join(f"{a} as {p} ({n})" for a, p, n in confused[:5]))
    # DVCLive's summary and params duplicate our metrics file and params.yaml, and a dict-shaped JSON in a
    # plots folder breaks `dvc plots show`: keep only the per-epoch curves.
    for extra in ("metrics.json", "params.yaml"):
        (curves_dir / extra).unlink(missing_ok=True)
    if checkpoint_dir is not None:
        checkpoint.discard(checkpoint_dir)  # the model is in out_dir now
    return metrics


def _cost(arch: str, model, size: int, device: str, precision: str) -> dict[str, Any]:
    """`inference_cost`, or where measuring it fails, no figures and a status naming the error: the model has
    trained and is saved, and a failure to measure what it costs must not throw that away."""
    try:
        return inference_cost(model, size, device, precision, shared=device_shared(device))
    except Exception as e:  # noqa: BLE001 - any error of the measurement; the traceback goes to the log
        log.warning("%s: measuring the inference cost failed, the trained entry is kept", arch, exc_info=True)
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
        return {"gmacs": None, "infer_status": f"not measured (failed: {reason})", **dict.fromkeys(TIMING_KEYS)}


def make_learner(arch: str, dls, train: dict[str, Any], setup: dict[str, Any]):
    """fastai `vision_learner` for a timm `arch`, with weights from the hub, a local file
    (train.weights), or none (train.pretrained: false)."""
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy, error_rate
    from fastai.vision.learner import vision_learner

    kwargs = dict(setup["model_kwargs"])
    local = weights_file(train["weights"], arch) if train["pretrained"] else None
    if local:
        kwargs["pretrained_cfg_overlay"] = {"file": str(local)}
    try:
        # normalize=False: the DataLoaders already normalise with this model's own statistics
        return vision_learner(
            dls,
            arch,
            pretrained=train["pretrained"],
            normalize=False,
            loss_func=CrossEntropyLossFlat(),
            metrics=[accuracy, error_rate],
            **kwargs,
        )
    except (OSError, RuntimeError) as e:
        if train["pretrained"] and not local and _looks_like_download_error(e):
            raise PipelineError(
                f"could not get pretrained weights for {arch!r} from the Hugging Face hub "
                f"({type(e).__name__}: {e}). Check the network, or set train.weights to a local "
                "file or folder of weights, or train.pretrained: false."
            ) from None
        raise


def _looks_like_download_error(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in ("connect", "offline", "resolve", "huggingface", "hub", "network", "timed out"))


def _metrics(
    learn,
    preds,
    targs,
    valid_loss: float,
    seconds: float,
    epochs: int,
    trained: int,
    device: str,
    precision: str,
    size: int,
) -> dict[str, Any]:
    acc = float((preds.argmax(dim=1) == targs).float().mean())
    n_train = len(learn.dls.train.dataset)
    peak = peak_memory_mb(device)
    return {
        "accuracy": round(acc, 6),
        "error_rate": round(1 - acc, 6),
        "valid_loss": round(valid_loss, 6),
        "train_time_s": round(seconds, 3),
        "epochs": epochs,
        "images_per_s": round(n_train * trained / seconds, 2),  # `trained`: epochs run here (fewer if resumed)
        "params_m": round(sum(p.numel() for p in learn.model.parameters()) / 1e6, 4),
        "peak_memory_mb": round(peak, 1),
        "device": device_name(device),  # the GPU's or CPU's name: what the timings and the batch depend on
        "precision": precision,
        "img_size": size,
        "n_train": n_train,
        "n_valid": len(learn.dls.valid.dataset),
    }


def _write_predictions(path: Path, preds, targs, vocab: list[str], files: list[Path]) -> list[tuple[str, str, int]]:
    """Write the (actual, predicted) validation pairs for DVC's confusion plot, with the image each pair is for
    (its path as given: relative to the dataset folder in a sweep entry, so the plot stage can pair entries
    image by image); return the most-confused pairs (actual, predicted, count), most frequent first."""
    pairs = [(vocab[t], vocab[p]) for t, p in zip(targs.tolist(), preds.argmax(1).tolist())]
    rows = [{"actual": a, "predicted": p, "image": Path(f).as_posix()} for (a, p), f in zip(pairs, files, strict=True)]
    atomic_write_text(path, csv_text(rows, ["actual", "predicted", "image"]))
    counts = Counter((a, p) for a, p in pairs if a != p)
    return [(a, p, n) for (a, p), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
