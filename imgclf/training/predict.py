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


def logits(model, meta: dict[str, Any], images: list[str | Path], batch_size: int = 64, device: str = "cpu"):
    """The model's outputs (N x classes, float32 on the CPU) for `images`, preprocessed as validation does, in
    batches of `batch_size` on `device`."""
    import torch

    model = model.to(device)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.stack([preprocess(p, meta) for p in images[start : start + batch_size]])
            out.append(model(batch.to(device)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, len(meta["classes"]))


def predict(model_dir: str | Path, images: list[str | Path], top: int = 3) -> list[list[tuple[str, float]]]:
    """Top-`top` (class, probability) for each image."""
    import torch

    model, meta = load_model(model_dir)
    probs = torch.softmax(logits(model, meta, images), dim=1)
    k = min(top, probs.shape[1])
    values, idx = probs.topk(k, dim=1)
    return [[(meta["classes"][i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, idx)]
