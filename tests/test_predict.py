"""`python -m stages.predict` as a user runs it: files and folders in, one line per image out; a file that is
not an image is skipped with a one-line warning, a missing path is one line of error, and no traceback or
library warning reaches the terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CLASSES, ROOT, class_images


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained test_resnet saved as the pipeline saves models (safetensors + model.json)."""
    from fastai.vision.learner import create_timm_model

    from imgclf.training.archs import model_setup
    from imgclf.training.artifacts import save_model

    model, _ = create_timm_model("test_resnet", len(CLASSES), pretrained=False)
    out = tmp_path_factory.mktemp("model") / "test_resnet-42"
    save_model(model, out, arch="test_resnet", classes=CLASSES, setup=model_setup("test_resnet", 32))
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Class folders of generated JPEGs, plus a text file among them."""
    root = class_images(tmp_path_factory.mktemp("photos"), 2, [(40, 48)])
    (root / "circle" / "notes.jpg").write_text("a text file named like an image\n")
    return root


def predict(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stages.predict", *map(str, args)], cwd=ROOT, capture_output=True, text=True
    )


def test_a_folder_predicts_every_image_and_skips_a_file_that_is_not_one(model_dir, photos):
    res = predict(model_dir, photos, "--top", "2")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    images = sorted(p for p in photos.rglob("*.jpg") if p.name != "notes.jpg")
    assert [line.split(": ")[0] for line in lines] == [str(p) for p in images]
    assert all(len(line.split(": ")[1].split(", ")) == 2 for line in lines)  # --top 2
    notes = photos / "circle" / "notes.jpg"
    assert res.stderr.splitlines() == [f"warning: {notes} skipped: not an image Pillow can read"]


def test_only_files_that_are_not_images_is_an_error_without_a_traceback(model_dir):
    params = ROOT / "params.yaml"
    res = predict(model_dir, params)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.splitlines() == [
        f"warning: {params} skipped: not an image Pillow can read",
        "error: no image could be predicted: none of the 1 files is an image Pillow can read.",
    ]


def test_a_missing_path_is_one_line(model_dir, photos, tmp_path):
    res = predict(model_dir, photos, tmp_path / "nope.jpg")
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.splitlines() == [f"error: {tmp_path / 'nope.jpg'}: no such file or folder."]
    empty = tmp_path / "empty"
    empty.mkdir()
    res = predict(model_dir, empty)
    message = f"error: {empty} holds no .jpg/.jpeg/.png file: pass images or folders of images."
    assert res.returncode == 1 and res.stderr.splitlines() == [message]


def test_a_corrupt_onnx_export_is_one_line(tmp_path):
    """A pickle saved as model.onnx beside a real description: onnxruntime's 27-line traceback becomes one line."""
    import json
    import pickle

    export = tmp_path / "export"
    export.mkdir()
    (export / "model.onnx").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    (export / "export.json").write_text(json.dumps({"classes": CLASSES, "input_size": 32, "format": "onnx"}))
    (tmp_path / "photos").mkdir()
    res = predict(export, class_images(tmp_path / "photos", 1, [(40, 40)]))
    assert res.returncode == 1 and res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {export / 'model.onnx'} is not an ONNX model"), lines
    assert "dvc checkout models/export" in lines[0]
