"""Training, artifacts and prediction with tiny timm models (pretrained=False) on generated images."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import pytest

from demo.synthetic import draw
from imgclf.common import PipelineError
from imgclf.datasets import labelled_items
from imgclf.training.data import split_items
from tests.conftest import CLASSES, class_images

# how the tests' trainings run (params.yaml's runtime section): decoding in the training thread, no checkpoints
RUNTIME = {"num_workers": 0, "resume": False, "data_on_device_max_mb": 2048, "keep_weights": False}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """3 classes x 12 images, 40x40 px, in class folders (the web-dataset layout)."""
    return class_images(tmp_path_factory.mktemp("imgs"), 12, [(40, 40)])


@pytest.fixture
def tiny_params(params):
    """params.yaml set to train a tiny model quickly on the CPU: from scratch at 32 px, batch 16, 2 threads, no
    decoding threads."""
    params["train"].update(pretrained=False, img_size=32, batch_size=16)
    params["base"].update(threads=2)
    params["runtime"].update(num_workers=0)
    return params


def _cpu_name() -> str:
    from imgclf.training.device import device_name

    return device_name("cpu")


def _train(arch, image_dir, cfg, out, runtime=RUNTIME, *, epochs=1, items=None, **kwargs):
    """train_model with the tests' settings on `image_dir`'s class folders, or on `items` (files, labels)."""
    from imgclf.training.learner import train_model

    files, labels = items or labelled_items(image_dir, "folder")
    train, base = cfg
    return train_model(
        arch, files, labels, epochs=epochs, train=train, base=base, runtime=runtime, out_dir=out, **kwargs
    )


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet", "test_vit", "test_convnext"])
def test_each_tiny_architecture_trains_through_the_stage_code(arch, image_dir, cfg, tmp_path):
    m = _train(arch, image_dir, cfg, tmp_path / arch)
    assert 0 <= m["accuracy"] <= 1 and m["error_rate"] == pytest.approx(1 - m["accuracy"])
    assert m["n_train"] + m["n_valid"] == 36 and m["n_valid"] > 0
    assert m["params_m"] > 0 and m["train_time_s"] > 0 and m["images_per_s"] > 0
    assert m["device"] == _cpu_name() and m["precision"] == "fp32" and m["img_size"] == 32
    assert m["schedule"] == "fit_one_cycle" and m["batch_size"] == 8  # from scratch: no frozen random body
    meta = json.loads((tmp_path / arch / "model.json").read_text())
    assert meta["arch"] == arch and meta["classes"] == CLASSES and meta["input_size"] == 32
    assert (tmp_path / arch / "model.safetensors").stat().st_size > 0
    # per-epoch curves from DVCLive: one epoch of fit_one_cycle
    curve = (tmp_path / arch / "live/plots/metrics/eval/loss.tsv").read_text().splitlines()
    assert len(curve) == 2
    assert m["valid_loss"] == pytest.approx(float(curve[-1].split("\t")[-1]), rel=1e-4)  # the loss itself
    assert not (tmp_path / arch / "live/metrics.json").exists()  # only curves stay in the curves folder


def test_fixed_input_size_model_is_built_for_the_requested_size():
    from imgclf.training.archs import model_setup

    assert model_setup("test_vit", 32)["model_kwargs"] == {"img_size": 32}  # ViT: fixed size, rebuilt
    assert model_setup("test_resnet", 32)["model_kwargs"] == {}  # CNN: any size
    native = model_setup("test_vit", None)
    assert native["size"] == 160 and native["model_kwargs"] == {}
    assert model_setup("resnet34", None)["mean"] == pytest.approx([0.485, 0.456, 0.406])


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_training_seed_changes_the_training_not_the_validation_images(image_dir, cfg, tmp_path):
    """A sweep entry's seed (sweep.seeds) seeds the training; the split stays base.seed's, so every entry of every
    seed is evaluated on the same images. The default training seed is base.seed."""
    split_seed = cfg[1]["seed"]
    runs = {}
    for name, seed in (("default", None), ("same", split_seed), ("other", split_seed + 1)):
        runs[name] = _train("test_resnet", image_dir, cfg, tmp_path / name, seed=seed)
    weights = {name: (tmp_path / name / "model.safetensors").read_bytes() for name in runs}
    images = {name: [r["image"] for r in _rows(tmp_path / name / "predictions.csv")] for name in runs}
    assert weights["default"] == weights["same"] != weights["other"]
    assert images["default"] == images["same"] == images["other"] and len(images["other"]) == runs["other"]["n_valid"]


def test_same_params_and_data_give_identical_metrics(image_dir, cfg, tmp_path):
    a = _train("test_resnet", image_dir, cfg, tmp_path / "a")
    b = _train("test_resnet", image_dir, cfg, tmp_path / "b")
    keys = ("accuracy", "valid_loss", "n_train", "n_valid")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert (tmp_path / "a/predictions.csv").read_text() == (tmp_path / "b/predictions.csv").read_text()
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    pairs = (tmp_path / "a/predictions.csv").read_text().splitlines()[1:]
    wrong = [p for p in pairs if p.split(",")[0] != p.split(",")[1]]
    confused = (tmp_path / "a/most_confused.csv").read_text().splitlines()[1:]
    assert sum(int(c.split(",")[2]) for c in confused) == len(wrong)  # every mistake counted once


def test_peak_memory_is_the_trainings_not_the_processs(image_dir, cfg, tmp_path):
    """peak_memory_mb counts from the start of the training: a warm sweep worker trains many entries in one process,
    and an earlier, larger peak (here 600 MiB allocated and freed) is not this entry's."""
    import resource

    import fastai.vision.learner  # noqa: F401 - the libraries in memory first (about 1 GB here), as in a worker
    import torch  # noqa: F401

    block = bytearray(600 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page, so that it is resident
    del block
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    m = _train("test_resnet", image_dir, cfg, tmp_path / "m")
    assert 0 < m["peak_memory_mb"] < lifetime - 400, (m["peak_memory_mb"], lifetime)


def test_decoding_threads_change_nothing(image_dir, cfg, tmp_path):
    """runtime.num_workers only sets how many threads decode the images once: the weights are the same."""
    _train("test_resnet", image_dir, cfg, tmp_path / "w0", runtime={**RUNTIME, "num_workers": 0})
    _train("test_resnet", image_dir, cfg, tmp_path / "w3", runtime={**RUNTIME, "num_workers": 3})
    assert (tmp_path / "w0/model.safetensors").read_bytes() == (tmp_path / "w3/model.safetensors").read_bytes()


def _learner(arch, image_dir, cfg, **train_overrides):
    from imgclf.training.learner import build_dls, make_learner, model_setup

    train, base = cfg
    train = {**train, **train_overrides}
    setup = model_setup(arch, train["img_size"])
    files, labels = labelled_items(image_dir, "folder")
    dls = build_dls(
        files,
        labels,
        size=setup["size"],
        mean=setup["mean"],
        std=setup["std"],
        valid_pct=train["valid_pct"],
        seed=base["seed"],
        batch_size=train["batch_size"],
        num_workers=0,
        device="cpu",
    )
    return make_learner(arch, dls, train, setup), setup


@pytest.fixture(scope="module")
def odd_image_dir(tmp_path_factory) -> Path:
    """2 classes x 10 images of other aspect ratios (up to 4:1, both orientations) and sizes, JPEG and PNG."""
    root = tmp_path_factory.mktemp("odd")
    shapes = [(40, 40), (160, 40), (40, 160), (90, 60), (33, 71)]
    for i, cls in enumerate(("circle", "square")):
        (root / cls).mkdir()
        for n in range(10):
            img = draw(f"odd/{cls}/{n}", i, size=shapes[n % len(shapes)])
            img.save(root / cls / f"{cls}{n:02d}.{'png' if n % 4 == 3 else 'jpg'}")
    return root


def test_validation_and_predict_share_the_preprocessing(odd_image_dir, cfg, tmp_path):
    from imgclf.deploy.predict import predict
    from imgclf.training.artifacts import save_model

    learn, setup = _learner("test_resnet", odd_image_dir, cfg, img_size=32)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 0.01)
    save_model(learn.model, tmp_path / "m", arch="test_resnet", classes=list(learn.dls.vocab), setup=setup)
    probs, _ = learn.get_preds()
    valid_files = learn.dls.valid.dataset.files
    assert len(valid_files) == len(probs) >= 2
    ours = predict(tmp_path / "m", valid_files, top=2)
    for row, file_probs in zip(ours, probs.tolist()):
        expected = dict(zip(learn.dls.vocab, file_probs))
        for cls, p in row:
            assert p == pytest.approx(expected[cls], abs=1e-5)


def test_images_are_stored_shorter_side_to_size_and_cropped_square(odd_image_dir):
    import torch

    from imgclf.training.data import decoded_splits

    files, labels = labelled_items(odd_image_dir, "folder")
    for augment in ("crop", "rrc_flip"):
        train, valid = decoded_splits(
            files, labels, size=32, valid_pct=0.3, seed=1, augment=augment, device="cpu", max_mb=1, threads=2
        )
        for ds in (train, valid):
            assert all(min(x.shape[1:]) == 32 and x.dtype == torch.uint8 for x in ds.images)
            wide = [x for x in ds.images if x.shape[2] >= 4 * 32 - 1]  # 160x40 stored as 128x32 (4:1 kept)
            tall = [x for x in ds.images if x.shape[1] >= 4 * 32 - 1]
            assert wide or tall or ds is valid
        torch.manual_seed(0)
        x, y = train.batch(list(range(len(train))))
        assert x.shape == (len(train), 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.long
        if augment == "crop":  # every crop is a piece of its stored image, taken at random along the long side
            offsets = set()
            for img, crop in zip(train.images, x):
                h, w = img.shape[1:]
                windows = [img[:, o : o + 32, :] if h > w else img[:, :, o : o + 32] for o in range(max(h, w) - 31)]
                hits = [o for o, win in enumerate(windows) if torch.equal(win, crop)]
                assert hits
                offsets.update(hits if max(h, w) > 32 else [])
            assert len(offsets) > 1
    vx, _ = valid.batch(list(range(len(valid))))
    from imgclf.training.data import center_crop

    assert all(torch.equal(a, center_crop(b, 32)) for a, b in zip(vx, valid.images))


def test_training_from_the_decoded_file_is_training_from_the_folder(image_dir, cfg, tmp_path):
    """stages.decode's file, read by a sweep entry, gives the same split, checkpoint key, weights and
    predictions as decoding the folder in the entry (on CPU, bitwise)."""
    from imgclf.training.checkpoint import checkpoint_key
    from imgclf.training.data import read_decoded, write_decoded

    train, base = cfg
    files, labels = labelled_items(image_dir, "folder")
    write_decoded(tmp_path / "decoded.safetensors", image_dir, files, labels, 32, threads=2)
    decoded = read_decoded(tmp_path / "decoded.safetensors")
    for again in ("again1", "again2"):  # the same bytes every time: DVC hashes them (clones must agree)
        write_decoded(tmp_path / again, image_dir, files, labels, 32, threads=3)
        assert (tmp_path / again).read_bytes() == (tmp_path / "decoded.safetensors").read_bytes()
    assert decoded.names == [f.relative_to(image_dir).as_posix() for f in files] and decoded.labels == labels
    assert decoded.size == 32 and all(min(x.shape[1:]) == 32 for x in decoded.images)
    names = [Path(n) for n in decoded.names]
    key = checkpoint_key("test_resnet", 1, train, 0, names, decoded.labels, decoded.file_bytes)
    assert key == checkpoint_key("test_resnet", 1, train, 0, files, labels)
    a = _train("test_resnet", image_dir, cfg, tmp_path / "folder")
    b = _train("test_resnet", None, cfg, tmp_path / "file", items=(names, decoded.labels), decoded=decoded)
    assert (tmp_path / "folder/model.safetensors").read_bytes() == (tmp_path / "file/model.safetensors").read_bytes()
    folder_rows, file_rows = (_rows(tmp_path / run / "predictions.csv") for run in ("folder", "file"))
    assert [(r["actual"], r["predicted"]) for r in folder_rows] == [(r["actual"], r["predicted"]) for r in file_rows]
    # each pair names its image: the path as given, under the dataset folder in a sweep entry (decoded names)
    _, valid_idx = split_items(names, train["valid_pct"], base["seed"])
    assert [r["image"] for r in file_rows] == [decoded.names[i] for i in valid_idx]
    assert [r["image"] for r in folder_rows] == [files[i].as_posix() for i in valid_idx]
    assert {k: a[k] for k in ("accuracy", "valid_loss", "n_valid")} == {
        k: b[k] for k in ("accuracy", "valid_loss", "n_valid")
    }
    assert "decoded_size" not in json.loads((tmp_path / "file/model.json").read_text())


def test_images_decoded_larger_are_resized_and_predict_does_the_same(odd_image_dir, cfg, tmp_path):
    """train.img_size null: the decoded file holds the largest input size; a model that takes a smaller one
    resizes the images down, records the stored size, and predict preprocesses exactly as validation did."""
    import torch

    from imgclf.deploy.predict import preprocess
    from imgclf.training.data import center_crop, decoded_splits, normalize, read_decoded, write_decoded

    train, base = cfg
    files, labels = labelled_items(odd_image_dir, "folder")
    write_decoded(tmp_path / "d.safetensors", odd_image_dir, files, labels, 48, threads=2)
    decoded = read_decoded(tmp_path / "d.safetensors")
    names = [Path(n) for n in decoded.names]
    _train("test_resnet", None, cfg, tmp_path / "m", items=(names, labels), decoded=decoded)
    meta = json.loads((tmp_path / "m/model.json").read_text())
    assert meta["input_size"] == 32 and meta["decoded_size"] == 48
    _, valid = decoded_splits(
        names,
        labels,
        size=32,
        valid_pct=train["valid_pct"],
        seed=base["seed"],
        augment="crop",
        device="cpu",
        max_mb=1,
        threads=0,
        decoded=decoded,
    )
    assert len(valid) >= 2 and all(min(x.shape[1:]) == 32 for x in valid.images)
    for name, img in zip(valid.files, valid.images):
        expected = normalize(center_crop(img, 32), meta["mean"], meta["std"])
        assert torch.equal(preprocess(odd_image_dir / name, meta), expected)


def test_a_decoded_file_from_elsewhere_is_refused_with_the_fix(tmp_path):
    import torch
    from safetensors.torch import save_file

    from imgclf.training.data import read_decoded

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    for name in ("other", "junk"):
        with pytest.raises(PipelineError, match=r"rerun `dvc repro -f decode`"):
            read_decoded(tmp_path / f"{name}.safetensors")


def test_decode_stores_the_largest_input_size_when_img_size_is_null(params):
    from imgclf.training.archs import model_setup
    from stages.decode import decoded_size

    archs = ["test_resnet", "test_vit", "resnet34"]
    p = {**params, "train": {**params["train"], "img_size": None}, "sweep": {**params["sweep"], "archs": archs}}
    assert decoded_size(p) == max(model_setup(a, None)["size"] for a in archs) == 224
    assert decoded_size({**p, "train": {**p["train"], "img_size": 64}}) == 64


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
    from imgclf.training import sweep

    def broken(*args, **kwargs):
        raise RuntimeError("shapes do not match\nsecond line")

    monkeypatch.setattr(sweep, "train_model", broken)
    params["train"]["pretrained"] = False
    record = sweep.run_arch("test_resnet", image_dir, params, tmp_path / "out")
    assert record["status"] == "failed" and record["reason"] == "RuntimeError: shapes do not match"
    assert record["cause"] == "model" and record["machine_dependent"] is False and record["device"] == _cpu_name()
    assert record["accuracy"] is None and record["batch_size"] is None
    assert "Traceback" in (tmp_path / "out/failure.txt").read_text()

    def offline(*args, **kwargs):
        raise PipelineError("could not get pretrained weights")

    monkeypatch.setattr(sweep, "train_model", offline)  # a problem a rerun may fix fails the stage instead
    with pytest.raises(PipelineError):
        sweep.run_arch("test_resnet", image_dir, params, tmp_path / "out2")


SCHEDULES = {  # schedule -> (train overrides, checkpoints saved for 2 epochs)
    "fit_one_cycle": ({"pretrained": False}, 2),
    "fine_tune": ({"pretrained": True}, 3),  # 1 frozen + 2 unfrozen epochs
}


def _train_resumable(image_dir, cfg, out, ckpt, epochs=2, **train_overrides):
    train, base = cfg
    resumable = {**RUNTIME, "resume": True}
    return _train(
        "test_resnet",
        image_dir,
        ({**train, **train_overrides}, base),
        out,
        resumable,
        epochs=epochs,
        checkpoint_dir=ckpt,
    )


@pytest.fixture
def count_saves(monkeypatch):
    """Counts checkpoint saves (one per trained epoch); raises KeyboardInterrupt after save number `stop`."""
    from imgclf.training import checkpoint

    real, calls = checkpoint.save_checkpoint, {"n": 0, "stop": None}

    def save(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == calls["stop"]:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    return calls


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_interrupted_training_resumes_from_its_checkpoint_exactly(
    schedule, image_dir, cfg, weights_dir, tmp_path, count_saves, caplog
):
    from safetensors import safe_open

    overrides, saves = SCHEDULES[schedule]
    overrides = {**overrides, "weights": str(weights_dir)}
    full = _train_resumable(image_dir, cfg, tmp_path / "full", tmp_path / "ck_full", **overrides)
    plain = _train_resumable(image_dir, cfg, tmp_path / "plain", None, **overrides)  # no checkpoint callback
    assert full["schedule"] == schedule
    assert (full["accuracy"], full["valid_loss"]) == (plain["accuracy"], plain["valid_loss"])
    assert (tmp_path / "full/model.safetensors").read_bytes() == (tmp_path / "plain/model.safetensors").read_bytes()
    assert count_saves["n"] == saves  # a checkpoint after each epoch
    assert not (tmp_path / "ck_full").exists()  # deleted once the model is saved
    assert len((tmp_path / "full/live/plots/metrics/eval/loss.tsv").read_text().splitlines()) == saves + 1

    ckpt = tmp_path / "ck"
    count_saves.update(n=0, stop=saves - 1)  # interrupted right after the last-but-one epoch's checkpoint
    with pytest.raises(KeyboardInterrupt):
        _train_resumable(image_dir, cfg, tmp_path / "resumed", ckpt, **overrides)
    files = list(ckpt.iterdir())
    assert [f.name for f in files] == ["checkpoint.safetensors"]
    assert not files[0].read_bytes().startswith(b"\x80")  # not a pickle: a safetensors header
    with safe_open(str(files[0]), "pt") as f:
        meta = json.loads(f.metadata()["checkpoint"])
    fit = 1 if schedule == "fine_tune" else 0  # fine_tune: the frozen fit, then the unfrozen one
    assert (meta["fit"], meta["done"]) == (fit, 1)

    count_saves.update(n=0, stop=None)
    with caplog.at_level("INFO"):
        resumed = _train_resumable(image_dir, cfg, tmp_path / "resumed", ckpt, **overrides)
    assert f"resuming from the checkpoint after 1 epoch(s) of fit {fit}" in caplog.text
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
    count_saves["stop"] = 1
    with pytest.raises(KeyboardInterrupt):
        _train_resumable(image_dir, cfg, tmp_path / "a", ckpt, epochs=2)
    assert (ckpt / "checkpoint.safetensors").exists()
    count_saves.update(n=0, stop=None)
    with caplog.at_level("INFO"):
        m = _train_resumable(image_dir, cfg, tmp_path / "b", ckpt, epochs=2, lr=0.005)  # another lr
    assert "discarding checkpoint" in caplog.text and "resuming" not in caplog.text
    assert count_saves["n"] == 2 and m["epochs"] == 2  # trained from the start
    assert not ckpt.exists()


def test_hub_weights_unreachable_gives_the_options(image_dir, cfg):
    # the real hub code path, offline: with HF_HUB_OFFLINE=1 (conftest) and no cached copy, huggingface_hub fails
    with pytest.raises(PipelineError) as err:
        _learner("test_resnet", image_dir, cfg, pretrained=True, weights=None)
    message = str(err.value)
    assert "could not get pretrained weights for 'test_resnet' from the Hugging Face hub" in message
    assert "train.weights" in message and "train.pretrained: false" in message


def _cuda_oom():
    import torch

    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.fixture
def oom_above(monkeypatch):
    """Make fastai's training step raise `limit["error"]()` (CUDA's out-of-memory error unless changed) for
    batches larger than `limit["bs"]` (on CPU: the error is injected, the handling is the real one); records the
    batch sizes tried."""
    from fastai.learner import Learner

    from imgclf.training import learner

    real, limit = Learner._do_one_batch, {"bs": 0, "tried": [], "error": _cuda_oom}

    def step(self):
        bs = len(self.yb[0])
        if self.training and (not limit["tried"] or limit["tried"][-1] != self.dls.train.bs):
            limit["tried"].append(self.dls.train.bs)
        if self.training and bs > limit["bs"]:
            raise limit["error"]()
        return real(self)

    monkeypatch.setattr(Learner, "_do_one_batch", step)
    monkeypatch.setattr(learner, "gpu_shared", lambda: False)
    return limit


def test_out_of_memory_halves_the_batch_and_records_it(image_dir, cfg, tmp_path, oom_above):
    train, base = cfg
    cfg = ({**train, "batch_size": 32}, base)
    oom_above["bs"] = 8
    m = _train("test_resnet", image_dir, cfg, tmp_path / "retried")
    assert oom_above["tried"] == [29, 14, 8]  # min(32, 29 training images), halved, then the floor of 8
    assert m["batch_size"] == 8 and m["device"] == _cpu_name()
    oom_above.update(bs=1000, tried=[])
    direct = _train("test_resnet", image_dir, ({**train, "batch_size": 8}, base), tmp_path / "direct")
    # each attempt starts from the seed: the retried run is the run at batch 8
    assert (m["accuracy"], m["valid_loss"]) == (direct["accuracy"], direct["valid_loss"])
    assert (tmp_path / "retried/model.safetensors").read_bytes() == (tmp_path / "direct/model.safetensors").read_bytes()
    # the curves are the trained attempt's alone, as the direct run's
    curves = [(tmp_path / run / "live/plots/metrics/eval/loss.tsv").read_text() for run in ("retried", "direct")]
    assert curves[0].splitlines()[1:] and [c.split("\t")[1:] for c in curves[0].splitlines()] == [
        c.split("\t")[1:] for c in curves[1].splitlines()
    ]


def _accelerator_oom():
    """torch.AcceleratorError as torch raises it for CUDA's cudaErrorMemoryAllocation: the message and the code
    (torch/csrc sets `error_code` on the exception it builds from c10::AcceleratorError)."""
    import torch

    e = torch.AcceleratorError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported")
    e.error_code = 2
    return e


OUT_OF_MEMORY_FORMS = {  # how each library reports running out of GPU memory (torch's ATen/cuda/Exceptions.h)
    "cuda_caching_allocator": _cuda_oom,
    "cudnn": lambda: RuntimeError("cuDNN error: CUDNN_STATUS_NOT_ENOUGH_MEMORY"),
    "cublas": lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    "accelerator_error": _accelerator_oom,
}


@pytest.mark.parametrize("form", OUT_OF_MEMORY_FORMS)
def test_every_out_of_memory_form_retries_at_half_the_batch(form, image_dir, tiny_params, tmp_path, oom_above):
    """Through the sweep entry's real training loop: each form is an out-of-memory error (the batch halved, the
    entry trained), not a broken model."""
    import torch

    from imgclf.training import sweep

    if form == "accelerator_error" and not hasattr(torch, "AcceleratorError"):
        pytest.skip("this torch has no torch.AcceleratorError")
    oom_above.update(bs=8, error=OUT_OF_MEMORY_FORMS[form])
    record = sweep.run_arch("test_resnet", image_dir, tiny_params, tmp_path / "out")
    assert oom_above["tried"] == [16, 8]
    assert record["status"] == "ok" and record["cause"] is None and record["machine_dependent"] is False
    assert record["batch_size"] == 8 and record["device"] == _cpu_name()


def test_a_models_own_error_in_training_is_recorded_once_not_retried(image_dir, tiny_params, tmp_path, oom_above):
    """timm's validate.py would retry this RuntimeError at smaller batches; here it is the model's failure."""
    from imgclf.training import sweep

    oom_above.update(bs=0, error=lambda: RuntimeError("mat1 and mat2 shapes cannot be multiplied (16x64 and 32x3)"))
    record = sweep.run_arch("test_resnet", image_dir, tiny_params, tmp_path / "out")
    assert oom_above["tried"] == [16]
    assert record["status"] == "failed" and record["reason"].startswith("RuntimeError: mat1 and mat2 shapes")
    assert record["cause"] == "model" and record["machine_dependent"] is False and record["device"] == _cpu_name()
    assert record["failed_step"] == "train" and record["failure_log"] == (tmp_path / "out/failure.txt").as_posix()
    assert "mat1 and mat2" in (tmp_path / "out/failure.txt").read_text()


def test_a_failure_names_the_step_it_failed_at(image_dir, tiny_params, tmp_path, monkeypatch):
    from imgclf.training import learner, sweep

    def no_head(*args, **kwargs):
        raise KeyError("head")

    monkeypatch.setattr(learner, "make_learner", no_head)
    record = sweep.run_arch("test_resnet", image_dir, tiny_params, tmp_path / "out")
    assert (record["status"], record["failed_step"], record["reason"]) == ("failed", "build model", "KeyError: 'head'")


def test_a_failure_to_measure_the_cost_keeps_the_trained_entry(image_dir, tiny_params, tmp_path, monkeypatch):
    """The model trained and is saved: a cost measurement that fails after it leaves the entry ok, not measured."""
    from imgclf.training import learner, sweep

    def broken(*args, **kwargs):
        raise AssertionError("Expected gradient function to be set")

    monkeypatch.setattr(learner, "inference_cost", broken)
    record = sweep.run_arch("test_resnet", image_dir, tiny_params, tmp_path / "out")
    assert record["status"] == "ok" and record["accuracy"] is not None and record["gmacs"] is None
    assert record["infer_status"] == "not measured (failed: AssertionError: Expected gradient function to be set)"
    assert (tmp_path / "out/model.safetensors").is_file()


def test_only_out_of_memory_errors_count_as_out_of_memory():
    import torch

    from imgclf.training.device import is_out_of_memory

    assert all(
        is_out_of_memory(make())
        for name, make in OUT_OF_MEMORY_FORMS.items()
        if hasattr(torch, "AcceleratorError") or name != "accelerator_error"
    )
    if hasattr(torch, "AcceleratorError"):
        illegal = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
        illegal.error_code = 700  # cudaErrorIllegalAddress: the CUDA context is lost, a retry cannot help
        assert not is_out_of_memory(illegal)
        by_code = torch.AcceleratorError("CUDA error: unnamed")
        by_code.error_code = 2  # cudaErrorMemoryAllocation, whatever the message
        assert is_out_of_memory(by_code)
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x64 and 32x3)"))
    assert not is_out_of_memory(RuntimeError("Given groups=1, weight of size [8, 3], expected input of required rank"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not a library's error


def test_out_of_memory_at_batch_8_is_recorded_and_the_sweep_goes_on(image_dir, tiny_params, tmp_path, oom_above):
    from imgclf.training import sweep

    oom_above["bs"] = 4
    record = sweep.run_arch("test_resnet", image_dir, tiny_params, tmp_path / "out")
    assert oom_above["tried"] == [16, 8]
    cpu = _cpu_name()
    assert record["status"] == "failed" and record["reason"] == f"out of memory at batch 8 on {cpu}"
    assert record["cause"] == "out_of_memory" and record["machine_dependent"] is True
    assert record["device"] == cpu and record["batch_size"] == 8
    assert record["accuracy"] is None


def test_the_leaderboard_shows_the_batch_each_entry_trained_at_and_the_device(
    image_dir, tiny_params, tmp_path, oom_above
):
    """Entries trained at different batches are not ranked side by side silently: the batch is a column."""
    from imgclf.reporting.report import make_report
    from imgclf.training import sweep

    oom_above["bs"] = 1000
    full = sweep.run_arch("test_resnet", image_dir, tiny_params, tmp_path / "full")
    oom_above.update(bs=8, tried=[])
    halved = sweep.run_arch("test_efficientnet", image_dir, tiny_params, tmp_path / "halved")
    oom_above.update(bs=4, tried=[])
    failed = sweep.run_arch("test_convnext", image_dir, tiny_params, tmp_path / "failed")
    make_report([full, halved, failed], tmp_path / "report")
    with open(tmp_path / "report/leaderboard.csv", newline="", encoding="utf-8") as f:
        rows = {r["arch"]: r for r in csv.DictReader(f)}
    assert {a: rows[a]["batch_size"] for a in rows} == {
        "test_resnet": "16",
        "test_efficientnet": "8",
        "test_convnext": "8",
    }
    assert {rows[a]["device"] for a in rows} == {_cpu_name()}
    assert rows["test_convnext"]["status"] == "failed"


def test_out_of_memory_before_the_batch_loop_is_the_machines_too(image_dir, params, tmp_path, monkeypatch):
    """Putting the images on the GPU happens once, before any batch: running out of memory there is recorded as
    out of memory (machine-dependent), not as a broken model."""
    from imgclf.training import learner, sweep

    def images_on_a_full_gpu(*args, **kwargs):
        raise _cuda_oom()

    monkeypatch.setattr(learner, "decoded_splits", images_on_a_full_gpu)
    params["train"].update(pretrained=False, img_size=32)
    record = sweep.run_arch("test_resnet", image_dir, params, tmp_path / "out")
    assert record["status"] == "failed" and record["reason"].startswith("OutOfMemoryError: CUDA out of memory")
    assert record["cause"] == "out_of_memory" and record["machine_dependent"] is True
    assert record["device"] == _cpu_name() and record["batch_size"] is None


def test_a_time_limit_stop_is_recorded_as_the_machines(image_dir, tiny_params, tmp_path):
    from imgclf.training import sweep

    tiny_params["sweep"].update(epochs=2, time_limit_s=1e-6)  # past it after the first epoch, whatever the machine
    record = sweep.run_arch("test_resnet", image_dir, tiny_params, tmp_path / "out")
    assert record["status"] == "failed" and record["reason"] == f"time limit after 1 epoch on {_cpu_name()}"
    assert record["cause"] == "time_limit" and record["machine_dependent"] is True
    assert record["device"] == _cpu_name() and record["batch_size"] == 16
    assert record["accuracy"] is None


def test_out_of_memory_on_a_shared_gpu_exits_75_and_records_nothing(
    image_dir, tiny_params, tmp_path, monkeypatch, oom_above, capsys
):
    from imgclf.training import learner
    from imgclf.training.device import gpu_shared
    from stages import sweep

    monkeypatch.setenv("IMGCLF_GPU_SHARED", "1")  # what the parallel sweep runner sets
    monkeypatch.setattr(learner, "gpu_shared", gpu_shared)
    monkeypatch.setattr(sweep, "load_params", lambda: tiny_params)
    oom_above["bs"] = 8
    metrics = tmp_path / "metrics.json"
    with pytest.raises(SystemExit) as exit_:
        sweep.main(
            [
                "--arch",
                "test_resnet",
                "--data",
                str(image_dir),
                "--out",
                str(tmp_path / "out"),
                "--record",
                str(tmp_path / "record.json"),
                "--metrics",
                str(metrics),
                "--curves",
                str(tmp_path / "curves"),
                "--confusion",
                str(tmp_path / "confusion.csv"),
            ]
        )
    assert exit_.value.code == 75
    assert oom_above["tried"] == [16]  # not halved while shared: the entry is rerun alone instead
    assert not metrics.exists()  # nothing for DVC to cache
    assert "out of memory while sharing the GPU: rerun this entry alone" in capsys.readouterr().err


def test_training_inside_a_plain_git_repo_leaves_it_untouched(image_dir, cfg, tmp_path, monkeypatch):
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "notebook.txt").write_text("a user's project, not a DVC one\n")
    before = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*"))
    monkeypatch.chdir(repo)  # DVCLive looks for a repository from the working directory
    _train("test_resnet", image_dir, cfg, tmp_path / "out")
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == before  # no .dvc/, nothing else
    assert not (repo / ".dvc").exists()
    assert (tmp_path / "out/live/plots/metrics/eval/loss.tsv").is_file()  # the curves are written anyway


@pytest.mark.parametrize("fit", ["fine_tune", "fit_one_cycle"])
def test_fine_tunes_two_fits_log_to_one_set_of_curves(fit, image_dir, cfg, tmp_path):
    """The curves end once, after the last fit (fine_tune's frozen epoch does not end them), with a row per
    epoch."""
    from fastai.callback import progress, schedule  # noqa: F401 - Learner.no_bar, fine_tune, fit_one_cycle
    from fastai.torch_core import set_seed

    from imgclf.training.callbacks import live_callback

    set_seed(cfg[1]["seed"], reproducible=True)
    learn, _ = _learner("test_resnet", image_dir, cfg)
    folder = tmp_path / "curves"
    cb = live_callback(folder)
    end, ended_after = cb.live.end, []
    cb.live.end = lambda: (ended_after.append(cb.live.step), end())  # steps logged when it ends
    learn.add_cb(cb)
    with learn.no_bar():
        getattr(learn, fit)(1)
    assert ended_after == [2 if fit == "fine_tune" else 1]  # ended once, after every epoch (frozen one included)
    steps = {  # each curve's first column: "step", then the steps
        p.relative_to(folder).as_posix(): [row.split("\t")[0] for row in p.read_text().splitlines()]
        for p in sorted(folder.rglob("*.tsv"))
    }
    every_epoch = ["step", *map(str, range(ended_after[0]))]  # a header, then a row per epoch
    names = ("train/loss", "eval/loss", "accuracy", "error_rate")
    assert steps == {f"plots/metrics/{m}.tsv": every_epoch for m in names}


def test_logs_without_a_terminal_show_a_header_then_one_row_per_epoch(image_dir, cfg, tmp_path, capsys):
    _train("test_resnet", image_dir, cfg, tmp_path / "m", epochs=2)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "error_rate", "time"]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == ["0", "1"] and all(len(r) == 6 for r in rows)
    assert all(float(r[2]) > 0 for r in rows) and not any("[" in line for line in lines)  # not Python lists


def test_labels_with_commas_quotes_and_newlines_survive_the_csvs(image_dir, cfg, tmp_path):
    import csv

    files, folders = labelled_items(image_dir, "folder")
    odd = {"circle": 'Circle, "round"', "square": "Square\nwith a newline", "triangle": "Triangle; 三角"}
    _train("test_resnet", None, cfg, tmp_path / "m", items=(files, [odd[f] for f in folders]))
    with open(tmp_path / "m/predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["actual"] for r in rows} | {r["predicted"] for r in rows} <= set(odd.values())
    with open(tmp_path / "m/most_confused.csv", newline="", encoding="utf-8") as f:
        confused = list(csv.DictReader(f))
    assert sum(int(r["count"]) for r in confused) == sum(r["actual"] != r["predicted"] for r in rows)
    assert all(r["actual"] in odd.values() and r["predicted"] in odd.values() for r in confused)
    assert sorted(json.loads((tmp_path / "m/model.json").read_text())["classes"]) == sorted(odd.values())


def test_stage_libraries_import_with_the_collector_paused_and_training_runs_with_it_on(tmp_path):
    """run_main imports a stage's large libraries before main() with Python's cyclic garbage collector off
    (collections during torch/timm/fastai imports are ~1.4 s of a stage's start-up), then freezes what they
    created and turns the collector back on, so training and everything after run with it as usual."""
    import subprocess
    import sys

    (tmp_path / "probe_lib.py").write_text("import gc\nCOLLECTOR_ON_AT_IMPORT = gc.isenabled()\n")
    code = (
        "import gc, sys\n"
        "from imgclf.common import run_main\n"
        "def main():\n"
        "    import probe_lib\n"
        "    print(probe_lib.COLLECTOR_ON_AT_IMPORT, gc.isenabled(), gc.get_freeze_count() > 0)\n"
        "run_main(main, ('probe_lib',))\n"
    )
    env_path = f"{tmp_path}:{Path(__file__).resolve().parents[1]}"
    res = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": env_path}, capture_output=True, text=True, check=True
    )
    assert res.stdout.split() == ["False", "True", "True"]
