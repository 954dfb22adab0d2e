"""Stage finetune@<task>: fine-tune the task's `arch`, or `finetune.arch` (resnet34), on one task: Pets
cat-vs-dog, or a web dataset (the task named after it, whose model review@<dataset> reviews).

    python -m stages.finetune --task pets --data data/pets/images --out models/finetune/pets \
        --record records/finetune/pets.json --metrics metrics/finetune/pets.json --curves plots/live/finetune/pets \
        --confusion plots/confusion/finetune/pets.csv
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from imgclf.common import PipelineError, library_versions, plural, run_main, write_json
from imgclf.datasets import labelled_items
from imgclf.metrics import accuracy_metrics
from imgclf.params import load_params
from imgclf.training.device import SHARED_EXIT, SHARED_MESSAGE, OutOfMemoryAtMinBatch, OutOfMemoryWhileShared
from imgclf.training.learner import TRAINING_LIBRARIES, train_model

log = logging.getLogger(__name__)

CHECKPOINTS = Path("checkpoints") / "finetune"  # next to downloads/: not a DVC output, so it survives a rerun


def main(argv: list[str] | None = None) -> None:
    """Train the task's model and write its record and metrics."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True)
    for flag in ("--data", "--out", "--record", "--metrics", "--curves", "--confusion"):
        ap.add_argument(flag, type=Path, required=True)
    args = ap.parse_args(argv)
    params = load_params()
    task = params["finetune"]["tasks"][args.task]
    arch = task["arch"] or params["finetune"]["arch"]
    files, labels = labelled_items(args.data, task["label"])
    log.info(
        "%s: %s, %s, %s for %s",
        args.task,
        plural(len(files), "image"),
        plural(len(set(labels)), "class", "classes"),
        arch,
        plural(task["epochs"], "epoch"),
    )
    try:
        metrics = train_model(
            arch,
            files,
            labels,
            epochs=task["epochs"],
            train=params["train"],
            base=params["base"],
            runtime=params["runtime"],
            out_dir=args.out,
            curves_dir=args.curves,
            confusion_csv=args.confusion,
            checkpoint_dir=CHECKPOINTS / args.task,
        )
    except OutOfMemoryWhileShared as e:
        print(f"error: {SHARED_MESSAGE} ({e})", file=sys.stderr)
        sys.exit(SHARED_EXIT)
    except OutOfMemoryAtMinBatch as e:
        raise PipelineError(f"{args.task}: {e}. Lower train.img_size, or use a GPU with more memory.") from None
    record = {"arch": arch, "status": "ok", **metrics, "versions": library_versions()}
    write_json(args.record, record)  # everything measured; the DVC metric is the accuracy (imgclf/metrics.py)
    write_json(args.metrics, accuracy_metrics(record))
    log.info("%s: accuracy %.4f", args.task, metrics["accuracy"])


if __name__ == "__main__":
    run_main(main, TRAINING_LIBRARIES)
