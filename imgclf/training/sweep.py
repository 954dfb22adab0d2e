"""One sweep entry: train an architecture on the sweep dataset and turn what happened into its metrics record.

A model-specific failure is recorded `failed` with its reason, an architecture over sweep.max_params_m is
recorded `skipped` before anything loads, and in both cases the entry's declared outputs are written empty, so
DVC finds every one of them and the sweep goes on. Problems a rerun may fix (no network for the weights, bad
params, missing data, running out of GPU memory while sharing it) raise instead, so DVC records nothing.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from imgclf.common import PipelineError, atomic_write_text
from imgclf.datasets import labelled_items
from imgclf.training.archs import check_arch, over_params_budget
from imgclf.training.data import read_decoded
from imgclf.training.device import RECORDED_FAILURES, OutOfMemoryWhileShared
from imgclf.training.hub import downloads_removed
from imgclf.training.learner import train_model

log = logging.getLogger(__name__)

CHECKPOINTS = Path("checkpoints") / "sweep"  # next to downloads/: not a DVC output, so it survives a rerun
COST_KEYS = ("accuracy", "error_rate", "valid_loss", "train_time_s", "images_per_s", "params_m", "peak_memory_mb")


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
    its metrics record: `failed` for a model-specific failure, `skipped` over the size budget (their curves and
    confusion outputs are then written empty, so DVC finds every declared output)."""
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
    except Exception as e:  # noqa: BLE001 - any model-specific error is recorded, and the sweep goes on
        reason = (str(e) if isinstance(e, RECORDED_FAILURES) else f"{type(e).__name__}: {e}").splitlines()[0][:500]
        log.error("%s failed: %s", arch, reason)
        _empty_outputs(out_dir, curves_dir, confusion_csv, traceback.format_exc(), "failure.txt")
        return _record(arch, seed, "failed", reason, sweep["epochs"])
    return {"arch": arch, "seed": seed, "status": "ok", "reason": None, **metrics}


def _record(arch: str, seed: int, status: str, reason: str | None, epochs: int) -> dict:
    return {
        "arch": arch,
        "seed": seed,
        "status": status,
        "reason": reason,
        "epochs": epochs,
        **dict.fromkeys(COST_KEYS),
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
