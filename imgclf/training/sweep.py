"""One sweep entry: train an architecture on the sweep dataset and turn what happened into its metrics record.

A failure is recorded `failed` with its reason, the step it failed at (`failed_step`: load data, build model,
train, predict, save; `setup` before those), the file that holds its traceback (`failure_log`), and its `cause`:
`model` (the architecture itself failed), `out_of_memory` (even at the smallest batch) or `time_limit`
(sweep.time_limit_s); the last two are `machine_dependent` (a bigger or faster machine may train the entry), which
the sweep runner reads to keep such records out of the run-cache and train them again. An architecture over
sweep.max_params_m is recorded `skipped` before anything loads. In both cases the entry's declared outputs are
written empty, so DVC finds every one of them and the sweep goes on. Problems a rerun may fix (no network for the
weights, bad params, missing data, running out of GPU memory while sharing it) raise instead, so DVC records
nothing. Every record names the `device` and the `batch_size` it trained at (None where it never trained).
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from imgclf.common import PipelineError, atomic_write_text
from imgclf.datasets import labelled_items
from imgclf.metrics import RECORD_NUMBERS
from imgclf.training.archs import check_arch, over_params_budget
from imgclf.training.data import read_decoded
from imgclf.training.device import MachineFailure, OutOfMemoryWhileShared, current_device_name, is_out_of_memory
from imgclf.training.hub import downloads_removed
from imgclf.training.learner import train_model

log = logging.getLogger(__name__)

CHECKPOINTS = Path("checkpoints") / "sweep"  # next to downloads/: not a DVC output, so it survives a rerun


def run_arch(
    arch: str,
    data: Path,
    params: dict,
    out_dir: Path,
    curves_dir: Path | None = None,
    confusion_csv: Path | None = None,
    seed: int | None = None,
) -> dict:
    """Train `arch` with the training seed `seed` (default base.seed; the split always uses base.seed) and return
    its metrics record: `failed` with its cause when training fails, `skipped` over the size budget (their curves
    and confusion outputs are then written empty, so DVC finds every declared output)."""
    train, sweep = params["train"], params["sweep"]
    seed = params["base"]["seed"] if seed is None else seed
    check_arch(arch, train["pretrained"])
    size, too_big = over_params_budget(arch, sweep["max_params_m"], train["img_size"])
    if too_big:
        log.warning("%s skipped: %s", arch, too_big)
        _empty_outputs(out_dir, curves_dir, confusion_csv, too_big)
        return {**_record(arch, seed, "skipped", too_big, sweep["epochs"]), "params_m": size}
    decoded = read_decoded(data) if Path(data).is_file() else None  # stages.decode's file, or an image folder
    files, labels = ([Path(n) for n in decoded.names], decoded.labels) if decoded else labelled_items(data, "folder")
    device = current_device_name()  # named before training: after a failure the GPU may not answer
    try:
        with downloads_removed(arch, keep=params["runtime"]["keep_weights"]):
            metrics = train_model(
                arch,
                files,
                labels,
                epochs=sweep["epochs"],
                train=train,
                base=params["base"],
                runtime=params["runtime"],
                out_dir=out_dir,
                curves_dir=curves_dir,
                confusion_csv=confusion_csv,
                checkpoint_dir=CHECKPOINTS / f"{arch}-{seed}",
                seed=seed,
                save_weights=sweep["save_models"],
                time_limit_s=sweep["time_limit_s"],
                decoded=decoded,
            )
    except (PipelineError, OutOfMemoryWhileShared):
        raise
    except MachineFailure as e:  # out of memory at the smallest batch, or past the time limit
        cause, reason, where, batch_size = e.cause, str(e), e.device, e.batch_size
        note, failed_step = traceback.format_exc(), getattr(e, "failed_step", "train")
    except Exception as e:  # noqa: BLE001 - any model-specific error is recorded, and the sweep goes on
        # out of memory outside the batch loop (the images put on the GPU, the model built) is the machine's too
        cause = "out_of_memory" if is_out_of_memory(e) else "model"
        reason, where, batch_size = f"{type(e).__name__}: {e}", device, None
        note, failed_step = traceback.format_exc(), getattr(e, "failed_step", "setup")
    else:
        return {
            "arch": arch,
            "seed": seed,
            "status": "ok",
            "reason": None,
            "cause": None,
            "machine_dependent": False,
            **metrics,
        }
    reason = reason.splitlines()[0][:500]
    failure_log = out_dir / "failure.txt"
    log.error("%s failed (%s) at %s: %s (traceback in %s)", arch, cause, failed_step, reason, failure_log)
    _empty_outputs(out_dir, curves_dir, confusion_csv, note, failure_log.name)
    record = _record(arch, seed, "failed", reason, sweep["epochs"])
    where_failed = {"failed_step": failed_step, "failure_log": failure_log.as_posix()}
    return {
        **record,
        "cause": cause,
        "machine_dependent": cause != "model",
        "device": where,
        "batch_size": batch_size,
        **where_failed,
    }


def _record(arch: str, seed: int, status: str, reason: str | None, epochs: int) -> dict:
    """A record with nothing trained in it: no cause, no device, no costs."""
    return {
        "arch": arch,
        "seed": seed,
        "status": status,
        "reason": reason,
        "cause": None,
        "machine_dependent": False,
        "epochs": epochs,
        "device": None,
        "batch_size": None,
        **dict.fromkeys(RECORD_NUMBERS),
    }


def _empty_outputs(
    out_dir: Path, curves_dir: Path | None, confusion_csv: Path | None, note: str, name: str = "skipped.txt"
) -> None:
    """The entry's declared outputs with nothing trained in them, and `note` saying why."""
    atomic_write_text(out_dir / name, note if note.endswith("\n") else note + "\n")  # creates out_dir
    if curves_dir:
        curves_dir.mkdir(parents=True, exist_ok=True)
    if confusion_csv:
        atomic_write_text(confusion_csv, "actual,predicted,image\n")
