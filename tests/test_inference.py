"""Inference cost: forward GMACs, throughput and latency, measured after training without changing what it trained."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from imgclf.datasets import labelled_items
from tests.conftest import class_images

RUNTIME = {"num_workers": 0, "resume": False, "data_on_device_max_mb": 2048, "keep_weights": False}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    return class_images(tmp_path_factory.mktemp("imgs"), 10, [(40, 40)])


def _model(arch: str = "test_resnet", size: int = 32):
    from fastai.vision.learner import create_timm_model

    from imgclf.training.archs import model_setup

    torch.manual_seed(0)
    model, _ = create_timm_model(arch, 3, pretrained=False, **model_setup(arch, size)["model_kwargs"])
    return model


@pytest.fixture
def any_load(monkeypatch):
    """The timing proceeds whatever else runs on this machine: these tests are about what it measures and
    leaves alone, not about the busy check (test_a_cpu_that_other_processes_keep_busy_is_not_timed)."""
    from imgclf.training import inference

    monkeypatch.setattr(inference, "BUSY_LIMIT", float("inf"))


def _random_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].tobytes(), random.getstate()


def test_the_timing_draws_no_random_number_and_leaves_the_model_as_it_was(any_load):
    from imgclf.training.inference import inference_cost

    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}  # BatchNorm's running stats included
    states = _random_states()
    cost = inference_cost(model, 32, "cpu", "fp32", shared=False)

    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    after = _random_states()
    assert torch.equal(states[0], after[0]) and states[1:] == after[1:]
    assert cost["infer_status"] == "measured" and cost["infer_batch"] == 8
    assert cost["gmacs"] > 0 and cost["infer_images_per_s"] > 0
    assert 0 < cost["infer_latency_ms"] <= cost["infer_latency_p90_ms"]


def test_a_shared_device_is_not_timed_and_says_so():
    from imgclf.training.inference import NOT_MEASURED, TIMING_KEYS, inference_cost

    cost = inference_cost(_model(), 32, "cpu", "fp32", shared=True)
    assert cost["infer_status"] == NOT_MEASURED and cost["gmacs"] > 0
    assert all(cost[k] is None for k in TIMING_KEYS)


def test_the_entry_and_make_sweeps_order_count_flops_with_one_piece_of_code():
    """The GMACs an entry records are the FLOPs the pool orders entries by (on the meta device), halved."""
    from imgclf.pool import arch_flops
    from imgclf.training.inference import inference_cost

    for arch in ("test_resnet", "test_vit"):
        recorded = inference_cost(_model(arch, 64), 64, "cpu", "fp32", shared=True)
        body_and_head = arch_flops([arch], 64)[arch]
        # fastai's head (pooling, BatchNorm, two linear layers) replaces timm's classifier: a few FLOPs apart
        assert recorded["gmacs"] == pytest.approx(body_and_head / 2e9, rel=0.05)


def test_training_with_the_timing_gives_the_same_bytes_as_without(image_dir, params, tmp_path, monkeypatch, any_load):
    from imgclf.training import learner

    files, labels = labelled_items(image_dir, "folder")
    train = {**params["train"], "batch_size": 8, "img_size": 32, "pretrained": False, "lr": 0.01}
    base = {**params["base"], "threads": 2}

    def run(out: Path) -> dict:
        return learner.train_model(
            "test_resnet", files, labels, epochs=1, train=train, base=base, runtime=RUNTIME, out_dir=out
        )

    timed = run(tmp_path / "timed")
    monkeypatch.setattr(learner, "inference_cost", lambda *a, **k: {})
    plain = run(tmp_path / "plain")
    assert timed["infer_status"] == "measured" and "infer_status" not in plain
    for name in ("model.safetensors", "predictions.csv", "most_confused.csv"):
        assert (tmp_path / "timed" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
    assert timed["accuracy"] == plain["accuracy"] and timed["valid_loss"] == plain["valid_loss"]


def test_cpu_workers_of_make_sweep_are_told_they_share_the_cores(monkeypatch):
    from imgclf.parallel import worker_envs
    from imgclf.training.device import CPU_SHARED_FLAG, device_shared

    assert all(env.get(CPU_SHARED_FLAG) == "1" for env in worker_envs(2, [], 1, env={}))
    assert CPU_SHARED_FLAG not in worker_envs(1, [], 1, env={})[0]
    assert all(CPU_SHARED_FLAG not in env for env in worker_envs(2, ["0", "1"], 1, env={}))  # a GPU each
    monkeypatch.setenv(CPU_SHARED_FLAG, "1")
    assert device_shared("cpu")
    monkeypatch.delenv(CPU_SHARED_FLAG)
    assert not device_shared("cpu")


def test_models_recorded_as_shared_can_be_measured_afterwards(tmp_path, capsys, monkeypatch, any_load):
    """tools.inference_cost: the same fields, measured now, printed, nothing written."""
    import json

    from imgclf.training.archs import model_setup
    from imgclf.training.artifacts import save_model
    from tests.conftest import ROOT
    from tools.inference_cost import main

    save_model(
        _model(), tmp_path / "m", arch="test_resnet", classes=["a", "b", "c"], setup=model_setup("test_resnet", 32)
    )
    before = sorted(p.name for p in (tmp_path / "m").iterdir())
    monkeypatch.chdir(ROOT)  # params.yaml's train.precision
    main([str(tmp_path / "m")])
    line = json.loads(capsys.readouterr().out)
    assert line["infer_status"] == "measured" and line["infer_images_per_s"] > 0 and line["gmacs"] > 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == before


def test_a_cpu_that_other_processes_keep_busy_is_not_timed():
    """Busy processes on every core: the figures would be the load's, so the record says not measured."""
    import subprocess
    import sys

    from imgclf.training.inference import TIMING_KEYS, inference_cost

    model = _model()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        time.sleep(0.5)  # the busy loops running
        cost = inference_cost(model, 32, "cpu", "fp32", shared=False)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert cost["infer_status"].startswith("not measured (cpu busy: other processes used"), cost["infer_status"]
    assert all(cost[k] is None for k in TIMING_KEYS) and cost["gmacs"] > 0


def test_the_busy_share_is_the_others_cpu_time_over_the_cores():
    from imgclf.training.inference import others_busy

    # (wall s, machine busy CPU s, own CPU s, cores): over 1 s on 2 cores, the others used 0.1 s, then 1.5 s
    assert others_busy((0.0, 0.0, 0.0, 2), (1.0, 1.0, 0.9, 2)) == pytest.approx(0.05)
    assert others_busy((0.0, 0.0, 0.0, 2), (1.0, 2.0, 0.5, 2)) == pytest.approx(0.75)
    assert others_busy((0.0, 0.0, 0.0, 2), (1.0, 0.5, 0.9, 2)) == 0.0  # tick rounding: never below zero


def test_flops_are_counted_on_models_whose_forward_fails_the_counter_under_no_grad():
    """timm's test_vit3 under torch.no_grad: FlopCounterMode's module tracker asserts a gradient function."""
    from imgclf.training.inference import forward_flops

    assert forward_flops(_model("test_vit3", 32).eval(), 32) > 0
