"""The export stage's module: a saved model to ONNX, checked against PyTorch; an operator ONNX lacks fails in one
line and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from timm.models import register_model

from imgclf.common import PipelineError

CLASSES = ["circle", "square", "triangle"]


def _saved(tmp_path: Path, arch: str, size: int = 32) -> Path:
    """A model folder as the sweep writes it (random weights, pretrained: false)."""
    from fastai.vision.learner import create_timm_model

    from imgclf.training.archs import model_setup
    from imgclf.training.artifacts import save_model

    torch.manual_seed(0)
    setup = model_setup(arch, size)
    model, _ = create_timm_model(arch, len(CLASSES), pretrained=False, **setup["model_kwargs"])
    save_model(model.eval(), tmp_path / arch, arch=arch, classes=CLASSES, setup=setup)
    return tmp_path / arch


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    from tests.conftest import class_images

    root = class_images(tmp_path_factory.mktemp("images"), 4, [(48, 40), (40, 56)])
    return sorted(root.rglob("*.jpg"))


def test_an_exported_model_gives_pytorchs_logits_and_its_description(tmp_path, images, caplog):
    import logging

    import onnx

    caplog.set_level(logging.INFO)  # as the stages log: the exporter's INFO lines must not show (issue 42)

    from imgclf.deploy.export import export_model
    from imgclf.deploy.predict import onnx_logits, onnx_session, preprocess, read_export

    model_dir = _saved(tmp_path, "test_resnet")
    before = sorted((p.name, p.read_bytes()) for p in model_dir.iterdir())
    record = export_model(model_dir, images, tmp_path / "export")

    noise = [r.getMessage() for r in caplog.records if r.name.startswith(("onnx_ir", "onnxscript"))]
    assert not noise, noise[:3]
    onnx.checker.check_model(str(tmp_path / "export" / "model.onnx"))
    assert {"export.json", "model.onnx"} <= {p.name for p in (tmp_path / "export").iterdir()}
    assert sorted((p.name, p.read_bytes()) for p in model_dir.iterdir()) == before  # the entry's folder untouched
    on_disk = read_export(tmp_path / "export")
    assert on_disk == json.loads(json.dumps(record))
    assert on_disk["classes"] == CLASSES and on_disk["input_size"] == 32 and on_disk["format"] == "onnx"
    parity = on_disk["parity"]
    assert parity["images"] == len(images)
    assert parity["max_abs_logit_diff"] < 1e-4 and parity["passed"] is True
    assert parity["top1_agreement"] == 1.0 and parity["logit_tolerance"] >= 1e-3
    speed = on_disk["onnxruntime_cpu"]
    assert 0 < speed["latency_ms_median"] <= speed["latency_ms_p90"] and speed["throughput_images_per_s"] > 0
    # a batch of another size runs too (the batch dimension is dynamic)
    batch = torch.stack([preprocess(p, on_disk) for p in images[:3]])
    assert onnx_logits(onnx_session(tmp_path / "export" / "model.onnx"), batch).shape == (3, len(CLASSES))


def test_parity_is_over_all_images_with_a_tolerance_each():
    from imgclf.deploy.export import parity

    ref = [[1.0, 0.0], [0.50, 0.49], [0.0, 2.0]]
    assert parity(ref, [[1.0, 0.0], [0.5004, 0.49], [0.0, 2.0]])["passed"]  # 4e-4 apart: within 1e-3 x 2
    swapped = parity(ref, [[1.0, 0.0], [0.48, 0.51], [0.0, 2.0]])  # the near-tie swaps, 0.02 apart
    assert not swapped["passed"] and swapped["top1_agreement"] == pytest.approx(2 / 3)
    assert swapped["max_abs_logit_diff"] == pytest.approx(0.02, abs=1e-6)
    assert "largest logit difference" in swapped["problem"] and "top-1 agreement 66.7% < 99%" in swapped["problem"]
    assert not parity(ref, ref[:2])["passed"]  # other images' logits, or fewer of them
    assert not parity(ref, None)["passed"] and not parity([], [])["passed"]
    assert not parity(ref, [[float("nan"), 0.0], [0.5, 0.49], [0.0, 2.0]])["passed"]


def test_parity_fails_on_the_noise_that_flips_a_tenth_of_the_predictions():
    """The review's case: noise of sd 0.5 on the logits flips about 10% of top-1 predictions."""
    import numpy as np

    from imgclf.deploy.export import parity

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(500, 5)).astype(np.float32) * 2
    checked = parity(ref, ref + rng.normal(scale=0.5, size=ref.shape))
    assert not checked["passed"] and checked["top1_agreement"] < 0.95


def test_a_broken_export_fails_the_stage_and_writes_nothing(tmp_path, images, monkeypatch):
    """Noise added to the ONNX model's weights, as a faulty exporter might: the gate stops it."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from imgclf.deploy import export

    real = export.export_onnx

    def noisy(model, meta, path):
        real(model, meta, path)
        proto = onnx.load(str(path))
        rng = np.random.default_rng(0)
        for init in proto.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.dtype == np.float32 and w.size > 1:
                init.CopyFrom(
                    numpy_helper.from_array(w + rng.normal(scale=0.5, size=w.shape).astype(w.dtype), init.name)
                )
        onnx.save(proto, str(path))

    monkeypatch.setattr(export, "export_onnx", noisy)
    with pytest.raises(PipelineError) as err:
        export.export_model(_saved(tmp_path, "test_resnet"), images, tmp_path / "export")
    assert "\n" not in str(err.value) and "does not give PyTorch's outputs" in str(err.value)
    assert "largest logit difference" in str(err.value)
    assert not (tmp_path / "export").exists()


class _SvdFeatures(torch.nn.Module):
    """A timm-style body (no pooling, no head) whose features need an SVD, which has no ONNX operator."""

    num_features = 4
    default_cfg = pretrained_cfg = {}

    def __init__(self, **_):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.linalg.svd(self.conv(x).flatten(2), full_matrices=False)[1]


@register_model
def unexportable_svd(pretrained: bool = False, **kwargs) -> torch.nn.Module:
    """Registered with timm, so that fastai's create_timm_model and load_model build it as any architecture."""
    return _SvdFeatures(**kwargs)


def test_an_architecture_onnx_cannot_take_fails_in_one_line_naming_the_operator_and_writes_nothing(tmp_path, images):
    from imgclf.deploy.export import export_model

    model_dir = _saved(tmp_path, "unexportable_svd", size=16)
    before = sorted((p.name, p.read_bytes()) for p in model_dir.iterdir())
    with pytest.raises(PipelineError) as err:
        export_model(model_dir, images, tmp_path / "export")
    assert "\n" not in str(err.value)
    assert "operator aten._linalg_svd" in str(err.value) and "export.model" in str(err.value)
    assert not (tmp_path / "export").exists()
    assert sorted((p.name, p.read_bytes()) for p in model_dir.iterdir()) == before


def test_predict_with_the_export_gives_the_classes_pytorch_gives(tmp_path, images):
    """On every image whose top-2 margin under PyTorch exceeds the export's largest logit difference."""
    from imgclf.deploy.export import export_model
    from imgclf.deploy.predict import predict_files

    model_dir = _saved(tmp_path, "test_efficientnet")
    record = export_model(model_dir, images, tmp_path / "export")
    diff = record["parity"]["max_abs_logit_diff"]
    assert diff < 1e-4
    ours = list(predict_files(model_dir, images, top=2))
    exported = list(predict_files(tmp_path / "export" / "model.onnx", images, top=2))
    assert [p for p, _, _ in exported] == [p for p, _, _ in ours]
    # logits `diff` apart move each probability by less than 2 * diff: a wider margin cannot swap
    clear = [(a, b) for (_, a, _), (_, b, _) in zip(ours, exported) if a[0][1] - a[1][1] > 4 * diff]
    assert len(clear) >= len(images) // 2
    assert all(a[0][0] == b[0][0] and abs(a[0][1] - b[0][1]) < 1e-4 for a, b in clear)
