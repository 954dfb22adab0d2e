"""The GPU bench runs only where a GPU is lent, rarely: its smoke size runs it end to end on the CPU here, so a
moved interface breaks this test rather than a GPU session's few minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def bench_gpu(*args: str) -> dict:
    """`python -m bench.gpu ...` as bench/gpu_session.sh runs it; its stdout must be the JSON alone."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "bench.gpu", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


@pytest.mark.slow
def test_gpu_section_runs_end_to_end_at_smoke_size(tmp_path):
    out = bench_gpu(str(tmp_path), "--smoke")
    assert out["device"] == "cpu" and out["precision"] == "fp32" and out["util_mean"] is None
    for key in ("in_stage_over_step_alone", "train_overhead_ratio", "startup_s", "default_archs_wall_s"):
        assert out[key] > 0, key
    assert out["in_stage_images_per_s"] > 0 and out["step_alone_images_per_s"] > 0
    assert set(out["default_archs"]) == {"test_resnet", "test_efficientnet"}
    assert all(r["status"] == "ok" for r in out["default_archs"].values())
    # what a run stopped by its time limit leaves: everything measured, as the last step wrote it
    assert json.loads((tmp_path / "partial.json").read_text()) == out


@pytest.mark.slow
def test_zoo_sample_records_each_entry_and_goes_on_after_a_failure(tmp_path):
    out = bench_gpu(str(tmp_path), "--smoke", "--zoo-sample", "no_such_arch,test_resnet", "--deadline-s", "300")
    assert out["ran"] == 2
    bad, good = out["runs"]["no_such_arch"], out["runs"]["test_resnet"]
    assert bad["status"] == "exit 1" and "no_such_arch" in bad["error"]
    assert good["status"] == "ok" and good["train_time_s"] > 0 and good["params_m"] > 0
    # the records `list_archs --estimate --records-dir` reads
    metrics = json.loads((tmp_path / "stage_ws_4" / "records" / "test_resnet.json").read_text())
    assert metrics["train_time_s"] == good["train_time_s"]


@pytest.mark.slow
def test_zoo_sample_starts_nothing_past_its_deadline(tmp_path):
    out = bench_gpu(str(tmp_path), "--smoke", "--zoo-sample", "test_resnet,test_vit", "--deadline-s", "0")
    assert out["archs"] == 2 and out["ran"] == 0 and out["runs"] == {}
