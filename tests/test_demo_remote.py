"""The demo workspace has a default DVC remote, an absolute folder beside it committed in .dvc/config, so that
`dvc push` works there as the README says and any clone of the demo on this machine pulls from it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_dvc

pytestmark = pytest.mark.slow


def _git(ws, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True, text=True).stdout


def test_a_clone_of_the_demo_pulls_from_its_default_remote(demo_workspace, copy_workspace, tmp_path):
    original, _ = demo_workspace
    ws, _ = copy_workspace
    assert run_dvc(ws, "remote", "default").stdout.strip() == "local"
    storage = original.parent / f"{original.name}-dvc-storage"
    assert f"url = {storage}\n" in _git(ws, "show", "HEAD:.dvc/config")  # committed and absolute: clones have it
    assert not storage.is_relative_to(original)
    res = run_dvc(ws, "push", "--run-cache")
    assert "pushed" in res.stdout or "Everything is up to date" in res.stdout, res.stdout
    assert any((storage / "files/md5").rglob("*")) and any((storage / "runs").rglob("*"))
    assert "Cache and remote 'local' are in sync" in run_dvc(ws, "status", "--cloud").stdout
    assert _git(ws, "status", "--porcelain") == ""

    clone = tmp_path / "elsewhere" / "clone"
    subprocess.run(["git", "clone", "-q", str(ws), str(clone)], check=True)
    assert not (clone / ".dvc/config.local").exists()  # nothing but what git carries
    run_dvc(clone, "pull", "--run-cache")
    assert (clone / "models/sweep").is_dir() and any(Path(clone / "plots/sweep").iterdir())
    assert "Data and pipelines are up to date" in run_dvc(clone, "status").stdout
