"""Stage review@<dataset>: the images of a web dataset its finetune model gets most wrong, on a static page.

    python -m stages.review --dataset five_class --model models/finetune/five_class --data data/five_class/images \
        --report data/five_class/report.csv --out review/five_class

Every image is scored by the model of the finetune task named after the dataset (not the sweep's: adding an
architecture to the sweep reviews nothing again). `review/<dataset>/index.html` shows the `review.top_n`
training and validation images with the highest loss, worst first, with their label, prediction, source URL,
query and file stem, and copies each one's line for `exclude/<dataset>.txt` to the clipboard.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imgclf.common import run_main
from imgclf.params import load_params
from imgclf.reporting.review import review

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """Score the dataset and write its review folder."""
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    for flag in ("--model", "--data", "--report", "--out"):
        ap.add_argument(flag, type=Path, required=True)
    args = ap.parse_args(argv)
    params = load_params()
    if params["base"]["threads"]:
        torch.set_num_threads(params["base"]["threads"])
    summary = review(
        args.model,
        args.data,
        args.report,
        args.out,
        dataset=args.dataset,
        top_n=params["review"]["top_n"],
        seed=params["base"]["seed"],
        valid_pct=params["train"]["valid_pct"],
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    log.info(
        "%s: %d training and %d validation images scored (validation accuracy %.4f): %s",
        args.dataset,
        summary["n_train"],
        summary["n_valid"],
        summary["valid_accuracy"],
        args.out / "index.html",
    )


if __name__ == "__main__":
    run_main(main, ("torch", "timm", "fastai.vision.learner"))
