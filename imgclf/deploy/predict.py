"""Predict images with a saved model: the validation preprocessing, then the top classes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

from imgclf.common import PipelineError
from imgclf.datasets import IMAGE_SUFFIXES
from imgclf.training.artifacts import load_model

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"  # an export (imgclf.deploy.export): the graph, and its description beside it
DESCRIPTION = "export.json"


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
    """Top-`top` (class, probability) for each image (`predict_files`, for images that are all readable)."""
    return [ranked for _, ranked, _ in predict_files(model_dir, [Path(p) for p in images], top)]


def load_predictor(model_path: str | Path) -> tuple[Callable[[Any], Any], dict[str, Any]]:
    """(a function from a preprocessed batch to its logits, the model's description) for a model folder of this
    pipeline (model.safetensors + model.json) or an ONNX export of one (models/export, or its model.onnx), which
    runs on onnxruntime."""
    import torch

    path = Path(model_path)
    if path.suffix == ".onnx" or (path / ONNX_FILE).is_file():
        meta = read_export(path)
        session = onnx_session((path if path.is_dir() else path.parent) / ONNX_FILE)
        return (lambda batch: torch.from_numpy(onnx_logits(session, batch))), meta
    return load_model(path)


def onnx_session(path: Path):
    """An onnxruntime CPU session for the ONNX file at `path`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are not the user's
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime's pybind errors (InvalidProtobuf, Fail, ...) share no base
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise PipelineError(
            f"{path} is not an ONNX model onnxruntime can load ({type(e).__name__}: {first}): restore it with "
            "`dvc checkout models/export` or write it again with `dvc repro export`."
        ) from None


def onnx_logits(session, batch) -> Any:
    """The ONNX model's logits (numpy float32) for a preprocessed batch (a torch tensor or numpy array)."""
    import numpy as np

    return session.run(["logits"], {"image": np.ascontiguousarray(np.asarray(batch), dtype=np.float32)})[0]


def read_export(path: Path) -> dict[str, Any]:
    """The description next to an exported ONNX file (`path` is the file or its folder)."""
    folder = path if path.is_dir() else path.parent
    meta_path = folder / DESCRIPTION
    if not (folder / ONNX_FILE).is_file() or not meta_path.is_file():
        raise PipelineError(
            f"{path} is not an export of this pipeline ({ONNX_FILE} + {DESCRIPTION}): run `dvc repro export`."
        )
    return json.loads(meta_path.read_text(encoding="utf-8"))


def image_files(paths: list[str | Path]) -> list[Path]:
    """The files to predict, in the order given: each file as it is, and for each folder the images under it
    (IMAGE_SUFFIXES, any case, sorted). A path that does not exist, or a folder with no image, is a mistake in
    the command line, reported before the model is loaded."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PipelineError(
                    f"{path} holds no {'/'.join(IMAGE_SUFFIXES)} file: pass images or folders of images."
                )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise PipelineError(f"{path}: no such file or folder.")
    return files


def predict_files(
    model_path: str | Path, images: list[Path], top: int = 3, batch_size: int = 64
) -> Iterator[tuple[Path, list[tuple[str, float]] | None, str | None]]:
    """(image, its top-`top` (class, probability), None) for each image in order, or (image, None, why) for one
    Pillow cannot read, so that one bad file in a folder costs only its own prediction. `batch_size` images are
    decoded and predicted at a time."""
    import torch
    from PIL import Image, UnidentifiedImageError

    model, meta = load_predictor(model_path)
    for start in range(0, len(images), batch_size):
        readable, tensors = [], []
        for path in images[start : start + batch_size]:
            try:
                tensors.append(preprocess(path, meta))
            except UnidentifiedImageError:
                yield path, None, "not an image Pillow can read"
                continue
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                yield path, None, f"cannot be decoded ({e})"
                continue
            readable.append(path)
        if not readable:
            continue
        with torch.no_grad():
            probs = torch.softmax(model(torch.stack(tensors)).float(), dim=1)
        values, idx = probs.topk(min(top, probs.shape[1]), dim=1)
        for path, vs, ix in zip(readable, values.tolist(), idx.tolist()):
            yield path, [(meta["classes"][i], float(v)) for v, i in zip(vs, ix)], None
