"""Sharing results: push the demo's outputs and run-cache to a remote, `git clone` the workspace afresh, `dvc pull`,
and nothing runs again: same files, same metrics. Once with a folder remote, once with S3 (moto on loopback)."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, git, run_dvc, stages_run

SHARED = ("data", "models", "plots", "records", "metrics")  # what a collaborator gets; downloads/ stays on each machine


def tree_hashes(ws: Path, *folders: str) -> dict[str, str]:
    """sha256 of every file under `folders` of `ws`, by path (hidden temporary files aside)."""
    return {
        str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted((ws / folder).rglob("*"))
        if p.is_file() and not p.name.endswith(".part")
    }


def metrics(ws: Path) -> dict:
    shown = json.loads(run_dvc(ws, "metrics", "show", "--json").stdout)
    return next(iter(shown.values()))["data"]


def push_clone_pull(ws: Path, clone: Path, *remote: str) -> None:
    """Configure `remote` (`dvc remote add -d` arguments, then `dvc remote modify` pairs) in the workspace,
    commit it, push outputs and run-cache, clone the git repo to `clone` and pull there."""
    name, url, *settings = remote
    run_dvc(ws, "remote", "add", "-d", name, url)
    for key, value in zip(settings[::2], settings[1::2]):
        run_dvc(ws, "remote", "modify", name, key, value)
    git(ws, "commit", "-q", "-m", f"share results on {name}", ".dvc/config")
    pushed = run_dvc(ws, "push", "--run-cache")
    assert "pushed" in pushed.stdout
    subprocess.run(["git", "clone", "-q", str(ws), str(clone)], check=True)
    assert not list((clone / "models").rglob("model.safetensors")) and not (clone / "data/pets/images").exists()
    run_dvc(clone, "pull", "--run-cache")


def assert_nothing_to_redo(ws: Path, clone: Path) -> None:
    """The clone has every shared file with the same bytes, `dvc status` is clean and `dvc repro` runs nothing."""
    ours, theirs = tree_hashes(ws, *SHARED), tree_hashes(clone, *SHARED)
    missing = sorted(set(ours) - set(theirs))
    assert not missing, f"not in the clone after `dvc pull` (`cache: false` outputs git does not track): {missing}"
    assert theirs == ours
    status = run_dvc(clone, "status")
    assert "Data and pipelines are up to date" in status.stdout, f"the clone is not up to date:\n{status.stdout}"
    res = run_dvc(clone, "repro")
    assert stages_run(res.stdout) == [], res.stdout
    assert "is cached - skipping run" not in res.stdout  # nothing even had to be restored
    assert "Data and pipelines are up to date" in res.stdout
    assert metrics(clone) == metrics(ws)


def test_project_has_an_offline_default_remote():
    # the project's own .dvc/config (not a user's config.local): a folder next to the clone, so that
    # `dvc push` works offline out of the box and clones side by side share it
    assert run_dvc(ROOT, "remote", "default", "--project").stdout.strip() == "local"
    urls = dict(line.split()[:2] for line in run_dvc(ROOT, "remote", "list", "--project").stdout.splitlines())
    assert Path(urls["local"]) == ROOT.parent / "dvc-storage"  # outside the repo: not in git, not under `git clean`
    assert "url = ../../dvc-storage" in (ROOT / ".dvc/config").read_text()  # relative to .dvc/: any clone location


@pytest.mark.slow
def test_pull_into_a_fresh_clone_reruns_nothing(copy_workspace, tmp_path):
    ws, _ = copy_workspace  # tmp_path/ws: the remote `../storage` lands next to it, as the project's does
    clone = tmp_path / "clone"
    push_clone_pull(ws, clone, "shared", "../storage")
    assert (tmp_path / "storage/files/md5").is_dir() and (tmp_path / "storage/runs").is_dir()
    assert_nothing_to_redo(ws, clone)


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"moto_server exited:\n{log.read_text(errors='replace')}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError("moto_server did not start")


@pytest.fixture
def s3_endpoint(tmp_path, monkeypatch):
    """An S3-compatible server (moto) on 127.0.0.1 with a bucket `dvc-share`; dummy credentials in the env."""
    pytest.importorskip("dvc_s3", reason="S3 remotes need dvc-s3")
    pytest.importorskip("moto.server", reason="the local S3 server needs moto[server]")
    boto3 = pytest.importorskip("boto3")
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    log = tmp_path / "moto.log"  # a file, not a pipe: a full pipe would block the server mid-request
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(port, proc, log)
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="dvc-share")
        yield endpoint, boto3.client("s3", endpoint_url=endpoint)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_pull_from_s3_into_a_fresh_clone_reruns_nothing(copy_workspace, tmp_path, s3_endpoint):
    ws, _ = copy_workspace
    endpoint, s3 = s3_endpoint
    clone = tmp_path / "clone"
    push_clone_pull(ws, clone, "s3", "s3://dvc-share/pipeline", "endpointurl", endpoint)
    assert "testing" not in (ws / ".dvc/config").read_text()  # credentials come from the environment only
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="dvc-share", Prefix="pipeline/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]  # S3 lists 1,000 keys a page
    assert any(k.startswith("pipeline/files/md5/") for k in keys) and any(k.startswith("pipeline/runs/") for k in keys)
    assert_nothing_to_redo(ws, clone)
