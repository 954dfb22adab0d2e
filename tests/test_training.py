"""Training, artifacts and prediction with tiny timm models (pretrained=False) on generated images."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from demo.synthetic import draw
from imgclf.common import PipelineError
from imgclf.datasets import labelled_items

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """3 classes x 12 images, 40x40 px, in class folders (the web-dataset layout)."""
    root = tmp_path_factory.mktemp("imgs")
    for i, cls in enumerate(CLASSES):
        (root / cls).mkdir()
        for n in range(12):
            draw(f"{cls}/{n}", i, size=(40, 40)).save(root / cls / f"{cls}{n:02d}.jpg", quality=90)
    return root


@pytest.fixture
def cfg(params):
    train = {**params["train"], "batch_size": 8, "img_size": 32, "pretrained": False, "lr": 0.01}
    base = {**params["base"], "num_workers": 0, "threads": 2}
    return train, base


def _train(arch, image_dir, cfg, out):
    from imgclf.training.learner import train_model

    files, labels = labelled_items(image_dir, "folder")
    train, base = cfg
    return train_model(arch, files, labels, epochs=1, train=train, base=base, out_dir=out)


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet", "test_vit", "test_convnext"])
def test_each_tiny_architecture_trains_through_the_stage_code(arch, image_dir, cfg, tmp_path):
    m = _train(arch, image_dir, cfg, tmp_path / arch)
    assert 0 <= m["accuracy"] <= 1 and m["error_rate"] == pytest.approx(1 - m["accuracy"])
    assert m["n_train"] + m["n_valid"] == 36 and m["n_valid"] > 0
    assert m["params_m"] > 0 and m["train_time_s"] > 0 and m["images_per_s"] > 0
    assert m["device"] == "cpu" and m["precision"] == "fp32" and m["img_size"] == 32
    meta = json.loads((tmp_path / arch / "model.json").read_text())
    assert meta["arch"] == arch and meta["classes"] == CLASSES and meta["input_size"] == 32
    assert (tmp_path / arch / "model.safetensors").stat().st_size > 0
    # per-epoch curves from DVCLive (1 frozen + 1 unfrozen epoch)
    curve = (tmp_path / arch / "live/plots/metrics/eval/loss.tsv").read_text().splitlines()
    assert len(curve) == 3
    assert m["valid_loss"] == pytest.approx(float(curve[-1].split("\t")[-1]), rel=1e-4)  # the loss itself
    assert not (tmp_path / arch / "live/metrics.json").exists()  # only curves stay in the curves folder


def test_fixed_input_size_model_is_built_for_the_requested_size():
    from imgclf.training.archs import model_setup

    assert model_setup("test_vit", 32)["model_kwargs"] == {"img_size": 32}  # ViT: fixed size, rebuilt
    assert model_setup("test_resnet", 32)["model_kwargs"] == {}  # CNN: any size
    native = model_setup("test_vit", None)
    assert native["size"] == 160 and native["model_kwargs"] == {}
    assert model_setup("resnet34", None)["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_same_params_and_data_give_identical_metrics(image_dir, cfg, tmp_path):
    a = _train("test_resnet", image_dir, cfg, tmp_path / "a")
    b = _train("test_resnet", image_dir, cfg, tmp_path / "b")
    keys = ("accuracy", "valid_loss", "n_train", "n_valid")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert (tmp_path / "a/predictions.csv").read_text() == (tmp_path / "b/predictions.csv").read_text()
    pairs = (tmp_path / "a/predictions.csv").read_text().splitlines()[1:]
    wrong = [p for p in pairs if p.split(",")[0] != p.split(",")[1]]
    confused = (tmp_path / "a/most_confused.csv").read_text().splitlines()[1:]
    assert sum(int(c.split(",")[2]) for c in confused) == len(wrong)  # every mistake counted once


def _learner(arch, image_dir, cfg, **train_overrides):
    from imgclf.training.learner import build_dls, make_learner, model_setup

    train, base = cfg
    train = {**train, **train_overrides}
    setup = model_setup(arch, train["img_size"])
    files, labels = labelled_items(image_dir, "folder")
    dls = build_dls(files, labels, size=setup["size"], mean=setup["mean"], std=setup["std"],
                    valid_pct=train["valid_pct"], seed=base["seed"], batch_size=train["batch_size"],
                    num_workers=0, device="cpu")
    return make_learner(arch, dls, train, setup), setup


def test_saved_model_reloads_and_predicts_like_the_trained_one(image_dir, cfg, tmp_path):
    from PIL import Image

    from imgclf.training.artifacts import save_model
    from imgclf.training.predict import predict

    learn, setup = _learner("test_resnet", image_dir, cfg)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(1, base_lr=0.01)
    save_model(learn.model, tmp_path / "m", arch="test_resnet", classes=list(learn.dls.vocab), setup=setup)
    img = tmp_path / "probe.png"  # already the input size, so both paths skip resampling
    Image.open(next((image_dir / "square").glob("*.jpg"))).convert("RGB").resize((32, 32)).save(img)
    ours = dict(predict(tmp_path / "m", [img], top=3)[0])
    with learn.no_bar():
        _, _, probs = learn.predict(img)
    theirs = dict(zip(learn.dls.vocab, probs.tolist()))
    assert ours.keys() == theirs.keys()
    for cls in ours:
        assert ours[cls] == pytest.approx(theirs[cls], abs=1e-5)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickles_are_refused_and_never_run(tmp_path):
    from imgclf.training.artifacts import load_model
    from stages.predict import main

    marker = tmp_path / "pwned"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    (model_dir / "model.json").write_text(json.dumps({"arch": "test_resnet", "classes": ["a", "b"]}))
    with pytest.raises(PipelineError, match="not a safetensors file"):
        load_model(model_dir)
    pkl = tmp_path / "export.pkl"
    pkl.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(PipelineError, match="model.safetensors"):
        main([str(pkl), str(pkl)])
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is live: unpickling it does create the marker
    assert marker.exists()


def test_local_weights_file_is_used(image_dir, cfg, tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(123)
    source = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "weights" / "test_resnet.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    for weights in (str(path), str(path.parent)):  # a file, or a folder holding <arch>.safetensors
        learn, _ = _learner("test_resnet", image_dir, cfg, pretrained=True, weights=weights)
        body = learn.model[0].model.state_dict()
        loaded = [k for k in body if k in source.state_dict()]
        assert loaded and all(torch.equal(body[k], source.state_dict()[k]) for k in loaded)
    fresh, _ = _learner("test_resnet", image_dir, cfg, pretrained=False)
    assert not torch.equal(fresh.model[0].model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])


def test_missing_weights_name_the_architecture_and_the_options(image_dir, cfg, tmp_path):
    with pytest.raises(PipelineError) as err:
        _learner("test_resnet", image_dir, cfg, pretrained=True, weights=str(tmp_path))
    assert "no weights for 'test_resnet'" in str(err.value) and "train.pretrained: false" in str(err.value)


def test_a_failing_architecture_is_recorded_and_the_sweep_goes_on(image_dir, params, monkeypatch, tmp_path):
    import stages.sweep as sweep

    def broken(*args, **kwargs):
        raise RuntimeError("shapes do not match\nsecond line")

    monkeypatch.setattr(sweep, "train_model", broken)
    params["train"]["pretrained"] = False
    record = sweep.run_arch("test_resnet", image_dir, params, tmp_path / "out")
    assert record["status"] == "failed" and record["reason"] == "RuntimeError: shapes do not match"
    assert record["accuracy"] is None
    assert "Traceback" in (tmp_path / "out/failure.txt").read_text()

    def offline(*args, **kwargs):
        raise PipelineError("could not get pretrained weights")

    monkeypatch.setattr(sweep, "train_model", offline)  # a problem a rerun may fix fails the stage instead
    with pytest.raises(PipelineError):
        sweep.run_arch("test_resnet", image_dir, params, tmp_path / "out2")


def test_adam_updates_are_identical_to_fastai_adam():
    import torch
    from fastai.optimizer import Adam

    from imgclf.training.learner import adam

    torch.manual_seed(0)
    ours, theirs = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(2)]
    with torch.no_grad():
        theirs.copy_(ours)
    opt_ours, opt_theirs = adam([ours], lr=0.01), Adam([theirs], lr=0.01)
    for step in range(5):
        grad = torch.randn(5, 3)
        for p, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            p.grad = grad.clone()
            opt.step()
    assert torch.equal(ours, theirs)


def test_crop_resize_gives_fastai_resize_pixels():
    import random

    import numpy as np
    from fastai.vision.all import PILImage, Resize

    from imgclf.training.learner import crop_resize

    rng = np.random.default_rng(0)
    for w, h in ((40, 40), (64, 48), (37, 90), (32, 32)):
        img = PILImage.create(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        for split_idx in (0, 1):  # random crop (train) and centre crop (valid)
            random.seed(w * h + split_idx)
            ours = crop_resize(32)(img, split_idx=split_idx)
            random.seed(w * h + split_idx)
            theirs = Resize(32)(img, split_idx=split_idx)
            assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def _train_resumable(image_dir, cfg, out, ckpt, epochs=2, **train_overrides):
    from imgclf.training.learner import train_model

    files, labels = labelled_items(image_dir, "folder")
    train, base = cfg
    train = {**train, "resume": True, **train_overrides}
    return train_model("test_resnet", files, labels, epochs=epochs, train=train, base=base, out_dir=out,
                       checkpoint_dir=ckpt)


@pytest.fixture
def count_saves(monkeypatch):
    """Counts checkpoint saves (one per trained epoch); raises KeyboardInterrupt after save number `stop`."""
    import imgclf.training.checkpoint as checkpoint

    real, calls = checkpoint.save_checkpoint, {"n": 0, "stop": None}

    def save(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == calls["stop"]:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    return calls


def test_interrupted_training_resumes_from_its_checkpoint_exactly(image_dir, cfg, tmp_path, count_saves, caplog):
    from safetensors import safe_open

    full = _train_resumable(image_dir, cfg, tmp_path / "full", tmp_path / "ck_full")
    plain = _train_resumable(image_dir, cfg, tmp_path / "plain", None)  # fastai's own fine_tune
    assert (full["accuracy"], full["valid_loss"]) == (plain["accuracy"], plain["valid_loss"])
    assert count_saves["n"] == 3  # 1 frozen + 2 unfrozen epochs, a checkpoint after each
    assert not (tmp_path / "ck_full").exists()  # deleted once the model is saved
    assert len((tmp_path / "full/live/plots/metrics/eval/loss.tsv").read_text().splitlines()) == 4

    ckpt = tmp_path / "ck"
    count_saves.update(n=0, stop=2)  # interrupted right after the first unfrozen epoch's checkpoint
    with pytest.raises(KeyboardInterrupt):
        _train_resumable(image_dir, cfg, tmp_path / "resumed", ckpt)
    files = list(ckpt.iterdir())
    assert [f.name for f in files] == ["checkpoint.safetensors"]
    assert not files[0].read_bytes().startswith(b"\x80")  # not a pickle: a safetensors header
    with safe_open(str(files[0]), "pt") as f:
        meta = json.loads(f.metadata()["checkpoint"])
    assert (meta["phase"], meta["done"]) == ("unfrozen", 1)

    count_saves.update(n=0, stop=None)
    with caplog.at_level("INFO"):
        resumed = _train_resumable(image_dir, cfg, tmp_path / "resumed", ckpt)
    assert "resuming from the checkpoint after 1 unfrozen epoch(s)" in caplog.text
    assert count_saves["n"] == 1  # only the last epoch was trained again
    keys = ("accuracy", "valid_loss", "n_train", "n_valid")
    assert {k: resumed[k] for k in keys} == {k: full[k] for k in keys}
    assert (tmp_path / "resumed/predictions.csv").read_text() == (tmp_path / "full/predictions.csv").read_text()
    assert (tmp_path / "resumed/model.safetensors").read_bytes() == (tmp_path / "full/model.safetensors").read_bytes()
    assert not ckpt.exists()
    # the resumed run's curves hold the epochs it trained (the last one), with the uninterrupted run's values
    full_curve = (tmp_path / "full/live/plots/metrics/eval/loss.tsv").read_text().splitlines()
    resumed_curve = (tmp_path / "resumed/live/plots/metrics/eval/loss.tsv").read_text().splitlines()
    assert len(resumed_curve) == 2 and resumed_curve[1].split("\t")[-1] == full_curve[-1].split("\t")[-1]


def test_a_checkpoint_from_other_params_is_discarded(image_dir, cfg, tmp_path, count_saves, caplog):
    ckpt = tmp_path / "ck"
    count_saves["stop"] = 2
    with pytest.raises(KeyboardInterrupt):
        _train_resumable(image_dir, cfg, tmp_path / "a", ckpt, epochs=1)
    assert (ckpt / "checkpoint.safetensors").exists()
    count_saves.update(n=0, stop=None)
    with caplog.at_level("INFO"):
        m = _train_resumable(image_dir, cfg, tmp_path / "b", ckpt, epochs=1, lr=0.005)  # another lr
    assert "discarding checkpoint" in caplog.text and "resuming" not in caplog.text
    assert count_saves["n"] == 2 and m["epochs"] == 1  # trained from the start: frozen + 1 epoch
    assert not ckpt.exists()


def test_hub_weights_unreachable_gives_the_options(image_dir, cfg):
    # the real hub code path, offline: with HF_HUB_OFFLINE=1 (conftest) and no cached copy, huggingface_hub fails
    with pytest.raises(PipelineError) as err:
        _learner("test_resnet", image_dir, cfg, pretrained=True, weights=None)
    message = str(err.value)
    assert "could not get pretrained weights for 'test_resnet' from the Hugging Face hub" in message
    assert "train.weights" in message and "train.pretrained: false" in message
