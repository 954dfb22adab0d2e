"""Predict images with a model trained by this pipeline (safetensors weights + JSON description only).

    python -m stages.predict models/sweep/resnet18-42 photo1.jpg photo2.jpg holiday/ --top 3

A folder stands for the images under it. A file Pillow cannot read is skipped with a warning; the command
fails only when no image could be predicted, or when a path does not exist.

Only `model.safetensors` + `model.json` are read: a pickle (fastai `export()`, `torch.save`) can run any
code when loaded, so it is refused without being opened.
"""

from __future__ import annotations

import argparse
import sys

from imgclf.common import PipelineError, run_main
from imgclf.training.predict import image_files, predict_files


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m stages.predict MODEL_DIR IMAGE_OR_FOLDER... [--top K]."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("images", nargs="+", metavar="image_or_folder")
    ap.add_argument("--top", type=int, default=3)
    args = ap.parse_args(argv)
    files = image_files(args.images)
    predicted = 0
    for path, ranked, problem in predict_files(args.model_dir, files, args.top):
        if problem:
            print(f"warning: {path} skipped: {problem}", file=sys.stderr, flush=True)
            continue
        print(f"{path}: " + ", ".join(f"{cls} {p:.3f}" for cls, p in ranked), flush=True)
        predicted += 1
    if not predicted:
        raise PipelineError(f"no image could be predicted: none of the {len(files)} files is an image Pillow can read.")


if __name__ == "__main__":
    run_main(main, ("torch", "timm", "fastai.vision.learner"))
