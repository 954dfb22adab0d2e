"""Stage export: the chosen sweep entry (`export.model`, `<arch>-<seed>`) as ONNX, checked against PyTorch.

    python -m stages.export --model models/sweep/resnet18-42 --data data/five_class/images --out models/export

Writes `models/export/model.onnx` and `models/export/export.json` (the model's classes and preprocessing, the
largest logit difference from PyTorch on all validation images and the top-1 agreement, both within their
tolerances or the stage fails, and onnxruntime's CPU latency and throughput).
`python -m stages.predict models/export IMAGE...` runs it. The entry must have kept its weights
(sweep.save_models: true).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imgclf.common import run_main
from imgclf.datasets import labelled_items
from imgclf.deploy.export import export_model
from imgclf.params import load_params
from imgclf.training.data import split_items

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """Export the model and write the export folder."""
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag in ("--model", "--data", "--out"):
        ap.add_argument(flag, type=Path, required=True)
    args = ap.parse_args(argv)
    params = load_params()
    if params["base"]["threads"]:
        torch.set_num_threads(params["base"]["threads"])
    files, _ = labelled_items(args.data, "folder")
    _, valid_idx = split_items(files, params["train"]["valid_pct"], params["base"]["seed"])
    export_model(args.model, [files[i] for i in valid_idx], args.out)


if __name__ == "__main__":
    run_main(main, ("torch", "timm", "fastai.vision.learner", "onnxruntime"))
