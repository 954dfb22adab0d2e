"""imgclf.cluster: the local cluster's workers (their GPU and resources, loopback), the named scheduler, and the
checks that turn a short or mismatched cluster into one line."""

from __future__ import annotations

import os
import socket

import dask
import pytest

from imgclf import cluster
from imgclf.common import PipelineError, library_versions


def test_workers_sharing_a_gpu_get_a_share_of_it_and_cpu_workers_get_none():
    envs = [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}, {}]
    assert cluster.gpu_resources(envs) == [{"GPU": 0.5}, {"GPU": 0.5}, {"GPU": 1.0}, {}]


@pytest.fixture(scope="module")
def client():
    """A local cluster of two workers: one with GPU "7" to itself (no GPU is used: only its variable), one CPU."""
    with dask.config.set({"scheduler-address": None}):
        with cluster.connect([{"CUDA_VISIBLE_DEVICES": "7"}, {}]) as c:
            c.wait_for_workers(2, timeout=60)
            yield c


def test_the_local_cluster_binds_loopback_and_gives_each_worker_its_gpu(client):
    workers = client.scheduler_info(n_workers=-1)["workers"]
    assert client.scheduler.address.startswith(f"tcp://{cluster.HOST}:")
    assert all(address.startswith(f"tcp://{cluster.HOST}:") for address in workers)
    assert sorted(str(info["resources"]) for info in workers.values()) == ["{'GPU': 1.0}", "{}"]
    gpus = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    resources = {a: info["resources"] for a, info in workers.items()}
    assert {gpus[a]: resources[a] for a in gpus} == {"7": {"GPU": 1.0}, None: {}}


def test_a_cluster_with_the_resources_and_versions_passes(client):
    cluster.check_cluster(client, {})
    cluster.check_cluster(client, {"GPU": 1})


def test_a_cluster_without_the_resources_is_one_line_naming_the_fix(client):
    with pytest.raises(PipelineError) as e:
        cluster.check_cluster(client, {"GPU": 2})
    assert "\n" not in str(e.value)
    assert "--resources GPU=1" in str(e.value)


def test_a_worker_with_other_library_versions_is_one_line(client):
    driver = {**library_versions(), "torch": "0.0.1"}
    with pytest.raises(PipelineError) as e:
        cluster.check_cluster(client, {}, driver)
    assert "\n" not in str(e.value)
    assert "(here 0.0.1)" in str(e.value) and "requirements.txt" in str(e.value)


def test_an_unreachable_scheduler_is_one_line_naming_the_fix(monkeypatch):
    with socket.socket() as s:  # a port that nothing listens on once closed
        s.bind((cluster.HOST, 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    with dask.config.set({"scheduler-address": f"tcp://{cluster.HOST}:{port}"}):
        with pytest.raises(PipelineError) as e, cluster.connect([{}]):
            pass
    assert "\n" not in str(e.value)
    assert f"{port}" in str(e.value) and "DASK_SCHEDULER_ADDRESS" in str(e.value)
