"""The CUDA paths: precision (bf16/fp16), channels_last, images decoded on and kept on the GPU, and resume
restoring the CUDA random state and the gradient scaler. Skipped, with the reason, where there is no CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from demo.synthetic import draw
from imgclf.datasets import labelled_items
from tests.conftest import CLASSES, class_images, train_config


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (none visible to torch)")]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """3 classes x 16 JPEGs of mixed sizes and aspect ratios (up to 4:1) plus one PNG per class."""
    root = class_images(tmp_path_factory.mktemp("gpu_imgs"), 16, [(64, 64), (96, 80), (200, 50), (50, 200)], "gpu/")
    for i, cls in enumerate(CLASSES):
        draw(f"gpu/{cls}/png", i).save(root / cls / f"{cls}_png.png")
    return root


@pytest.fixture
def cfg(params):
    return train_config(params, batch_size=16, img_size=64)


@pytest.fixture
def captured(monkeypatch):
    """The Learner each train_model call builds, to inspect after training."""
    from imgclf.training import learner

    real, learns = learner.make_learner, []

    def make(*args, **kwargs):
        learns.append(real(*args, **kwargs))
        return learns[-1]

    monkeypatch.setattr(learner, "make_learner", make)
    return learns


def _train(image_dir, cfg, out, epochs=1, checkpoint_dir=None, resume=False, **overrides):
    from imgclf.training.learner import train_model

    train, base = cfg
    files, labels = labelled_items(image_dir, "folder")
    return train_model(
        "test_resnet",
        files,
        labels,
        epochs=epochs,
        train={**train, **overrides},
        base=base,
        runtime={"num_workers": 2, "resume": resume, "data_on_device_max_mb": 2048, "keep_weights": False},
        out_dir=out,
        checkpoint_dir=checkpoint_dir,
    )


def test_auto_precision_is_bf16_where_supported_else_fp16():
    import torch

    from imgclf.training.device import resolve_device

    assert resolve_device("auto") == ("cuda", "bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert resolve_device("fp32") == ("cuda", "fp32")


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_training_runs_in_each_precision_channels_last(precision, image_dir, cfg, tmp_path, captured):
    import torch

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    m = _train(image_dir, cfg, tmp_path / precision, precision=precision)
    assert m["device"] == torch.cuda.get_device_name() and m["precision"] == precision and m["peak_memory_mb"] > 0
    assert 0 <= m["accuracy"] <= 1 and m["valid_loss"] == m["valid_loss"]  # not NaN
    learn = captured[-1]
    conv = next(p for p in learn.model.parameters() if p.dim() == 4)
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)
    if precision != "fp32":
        assert str(learn.mixed_precision.amp_mode.value) == precision
    assert torch.backends.cudnn.benchmark  # autotuning on for CUDA


def test_decoded_images_stay_on_the_gpu_within_the_cap(image_dir):
    import torch

    from imgclf.training.data import dataloaders, decoded_splits

    files, labels = labelled_items(image_dir, "folder")
    kw = {"size": 64, "valid_pct": 0.25, "seed": 0, "augment": "rrc_flip", "device": "cuda", "threads": 2}
    train, valid = decoded_splits(files, labels, max_mb=1024, **kw)
    assert {x.device.type for x in train.images + valid.images} == {"cuda"}
    assert all(x.dtype == torch.uint8 and min(x.shape[1:]) == 64 for x in train.images)
    x, y = dataloaders(train, valid, batch_size=8, mean=[0.5] * 3, std=[0.25] * 3, device="cuda").one_batch()
    assert x.is_cuda and y.is_cuda and x.shape == (8, 3, 64, 64) and x.dtype == torch.float32

    cpu_train, _ = decoded_splits(files, labels, max_mb=0.01, **kw)  # over the cap: CPU memory, pinned batches
    assert {x.device.type for x in cpu_train.images} == {"cpu"}
    dls = dataloaders(cpu_train, valid, batch_size=8, mean=[0.5] * 3, std=[0.25] * 3, device="cuda")
    assert dls.train.pin_memory and dls.train.one_batch()[0].is_cuda


def test_gpu_decoding_matches_cpu_decoding_closely(image_dir):
    from imgclf.training.data import decode_cpu, decode_cuda

    files = sorted(image_dir.rglob("*.*"))
    gpu, cpu = decode_cuda(files, 64), decode_cpu(files, 64, 2)
    for f, a, b in zip(files, gpu, cpu):
        assert a.is_cuda and a.shape == b.shape, f
        # nvjpeg + antialiased resize vs Pillow's draft decode + bilinear: the same picture, not the same bytes
        assert (a.cpu().float() - b.float()).abs().mean() < 12, f


def test_resume_restores_cuda_rng_and_grad_scaler(image_dir, cfg, tmp_path, monkeypatch):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from imgclf.training import checkpoint

    ckpt = tmp_path / "ck"
    real_save, calls = checkpoint.save_checkpoint, {"n": 0}

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        raise KeyboardInterrupt  # interrupted after the first epoch

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _train(image_dir, cfg, tmp_path / "a", epochs=2, checkpoint_dir=ckpt, precision="fp16", resume=True)
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)

    path = ckpt / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["checkpoint"])
    tensors = load_file(str(path))
    assert "rng.cuda.0" in tensors and meta["scaler"] and "scale" in meta["scaler"]
    # a scale no fresh GradScaler starts with, so restoring it is visible
    meta["scaler"]["scale"] = 1234.0
    save_file(tensors, str(path), metadata={"checkpoint": json.dumps(meta)})

    seen = {}
    real_rng, real_scaler = checkpoint.restore_rng, checkpoint.restore_scaler

    def restore_rng(learn, resume):
        torch.cuda.manual_seed_all(999)  # move the CUDA generator away from the saved state
        real_rng(learn, resume)
        seen["rng"] = torch.equal(torch.cuda.get_rng_state(), tensors["rng.cuda.0"])

    def restore_scaler(learn, resume):
        real_scaler(learn, resume)
        seen["scale"] = learn.scaler.get_scale()

    monkeypatch.setattr(checkpoint, "restore_rng", restore_rng)
    monkeypatch.setattr(checkpoint, "restore_scaler", restore_scaler)
    m = _train(image_dir, cfg, tmp_path / "b", epochs=2, checkpoint_dir=ckpt, precision="fp16", resume=True)
    assert seen == {"rng": True, "scale": 1234.0}
    assert m["precision"] == "fp16" and not ckpt.exists()


def _fill_the_gpu() -> list:
    """Allocate until the GPU has no memory left (large blocks, then small ones); the caller deletes the list."""
    import torch

    hog = []
    for block in (1 << 30, 64 << 20, 2 << 20):
        while True:
            try:
                hog.append(torch.empty(block, dtype=torch.uint8, device="cuda"))
            except torch.OutOfMemoryError:
                break
    return hog


def test_a_real_out_of_memory_error_is_recognised_and_recorded_as_the_machines(
    image_dir, params, tmp_path, monkeypatch
):
    """With the GPU full, whichever library runs out first (the caching allocator, cuDNN, cuBLAS, the runtime),
    the entry is recorded failed for out of memory, machine-dependent, with the GPU's name, not as a broken model."""
    import torch

    from imgclf.training import sweep
    from imgclf.training.device import free_cuda_memory, is_out_of_memory

    monkeypatch.setenv("IMGCLF_GPU_SHARED", "0")  # alone on the GPU: halve the batch, do not exit 75
    params["train"].update(pretrained=False, img_size=64, batch_size=16, precision="auto")
    params["base"].update(threads=2)
    params["runtime"].update(num_workers=2, data_on_device_max_mb=0)  # images in CPU memory: the model runs out
    hog = _fill_the_gpu()
    try:
        with pytest.raises(Exception) as err:
            torch.empty(1 << 30, device="cuda")
        assert is_out_of_memory(err.value), repr(err.value)
        del err
        record = sweep.run_arch("test_resnet", image_dir, params, tmp_path / "out")
    finally:
        del hog
        free_cuda_memory()
    assert record["status"] == "failed" and record["cause"] == "out_of_memory", record
    assert record["machine_dependent"] is True and record["device"] == torch.cuda.get_device_name()
