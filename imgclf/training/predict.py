"""Predict images with a saved model: the validation preprocessing, then the top classes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from imgclf.training.artifacts import load_model

log = logging.getLogger(__name__)


def preprocess(image_path: str | Path, meta: dict[str, Any]):
    """The validation preprocessing (the same functions training validates with): shorter side resized to
    the input size (from the size the sweep's decoded images were stored at, when the model records one), the
    centre square, normalized with the model's statistics."""
    from imgclf.training.data import center_crop, load_image, normalize, resize_short

    size = meta["input_size"]
    image = load_image(image_path, meta.get("decoded_size", size))
    return normalize(center_crop(resize_short(image, size), size), meta["mean"], meta["std"])


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
