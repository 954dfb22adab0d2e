"""Predict images with a model trained by this pipeline (safetensors weights + JSON description only).

    python -m stages.predict models/sweep/resnet18-42 photo1.jpg photo2.jpg --top 3

Only `model.safetensors` + `model.json` are read: a pickle (fastai `export()`, `torch.save`) can run any
code when loaded, so it is refused without being opened.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.common import PipelineError, run_main
from imgclf.training.predict import predict


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m stages.predict MODEL_DIR IMAGE... [--top K]."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--top", type=int, default=3)
    args = ap.parse_args(argv)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise PipelineError(f"image not found: {missing[0]}")
    for path, ranked in zip(args.images, predict(args.model_dir, args.images, args.top)):
        print(f"{path}: " + ", ".join(f"{cls} {p:.3f}" for cls, p in ranked))


if __name__ == "__main__":
    run_main(main, ("torch", "timm", "fastai.vision.learner"))
