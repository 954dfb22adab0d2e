"""Predict images with a saved model: the validation preprocessing, then the top classes."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from imgclf.training.artifacts import load_model

log = logging.getLogger(__name__)


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
