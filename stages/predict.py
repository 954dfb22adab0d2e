"""Predict images with a model trained by this pipeline (safetensors weights + JSON description only), or with
its ONNX export (`dvc repro export`), which runs on onnxruntime.

    python -m stages.predict models/sweep/resnet18-42 photo1.jpg photo2.jpg holiday/ --top 3
    python -m stages.predict models/export photo1.jpg

A folder stands for the images under it. A file Pillow cannot read is skipped with a warning; the command
fails only when no image could be predicted, or when a path does not exist.

Only `model.safetensors` + `model.json` are read: a pickle (fastai `export()`, `torch.save`) can run any
code when loaded, so it is refused without being opened.
"""

from __future__ import annotations

import argparse
import sys

from imgclf.common import PipelineError, run_main
from imgclf.deploy.predict import image_files, predict_files


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m stages.predict MODEL IMAGE_OR_FOLDER... [--top K]."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a model folder (models/sweep/<arch>-<seed>) or an export (models/export)")
    ap.add_argument("images", nargs="+", metavar="image_or_folder")
    ap.add_argument("--top", type=int, default=3)
    args = ap.parse_args(argv)
    files = image_files(args.images)
    predicted = 0
    for path, ranked, problem in predict_files(args.model, files, args.top):
        if problem:
            print(f"warning: {path} skipped: {problem}", file=sys.stderr, flush=True)
            continue
        print(f"{path}: " + ", ".join(f"{cls} {p:.3f}" for cls, p in ranked), flush=True)
        predicted += 1
    if not predicted:
        raise PipelineError(f"no image could be predicted: none of the {len(files)} files is an image Pillow can read.")


if __name__ == "__main__":
    run_main(main, ("torch", "timm", "fastai.vision.learner"))
