"""Load a trained model from its safetensors weights and JSON description, and predict images.

    python -m stages.predict models/sweep/resnet18 photo1.jpg photo2.jpg --top 3

Only `model.safetensors` + `model.json` are read: a pickle (fastai `export()`, `torch.save`) can run any
code when loaded, so it is refused without being opened.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from stages.common import PipelineError, run_main

log = logging.getLogger(__name__)

SAFETENSORS_HELP = ("a model folder written by this pipeline (model.safetensors + model.json, e.g. "
                    "models/sweep/<arch>)")


def _check_safetensors(path: Path) -> None:
    """Refuse anything that is not a safetensors file, by its bytes, without unpickling it."""
    head = path.read_bytes()[:9] if path.is_file() else b""
    # safetensors: 8-byte little-endian header length, then a JSON header starting with '{'
    if len(head) < 9 or head[8:9] != b"{":
        raise PipelineError(f"{path} is not a safetensors file (pickles are refused: loading one runs code). "
                            f"Pass {SAFETENSORS_HELP}.")


def load_model(model_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """(model in eval mode, its description) from `model_dir`; never unpickles anything."""
    import torch  # noqa: F401 - safetensors.torch needs it loaded
    from fastai.vision.learner import create_timm_model
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise PipelineError(f"{model_dir} is not a folder: pass {SAFETENSORS_HELP}.")
    weights, meta_path = model_dir / "model.safetensors", model_dir / "model.json"
    if not meta_path.is_file():
        raise PipelineError(f"{model_dir} has no model.json: pass {SAFETENSORS_HELP}.")
    _check_safetensors(weights)
    meta = json.loads(meta_path.read_text())
    model, _ = create_timm_model(meta["arch"], len(meta["classes"]), pretrained=False, **meta["model_kwargs"])
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval(), meta


def preprocess(image_path: str | Path, meta: dict[str, Any]):
    """The validation transform: largest centred square, resized to the input size, normalized."""
    import torch
    from PIL import Image

    with Image.open(image_path) as im:
        img = im.convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((meta["input_size"],) * 2, Image.Resampling.BILINEAR)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3)
    x = x.permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(meta["mean"]).view(3, 1, 1), torch.tensor(meta["std"]).view(3, 1, 1)
    return (x - mean) / std


def predict(model_dir: str | Path, images: list[str | Path], top: int = 3) -> list[list[tuple[str, float]]]:
    """Top-`top` (class, probability) for each image."""
    import torch

    model, meta = load_model(model_dir)
    batch = torch.stack([preprocess(p, meta) for p in images])
    with torch.no_grad():
        probs = torch.softmax(model(batch).float(), dim=1)
    k = min(top, probs.shape[1])
    values, idx = probs.topk(k, dim=1)
    return [[(meta["classes"][i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, idx)]


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
    run_main(main)
