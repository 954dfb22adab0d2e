"""The demo workspace has a default DVC remote (a git-ignored folder inside it), so `dvc push` works there as
the README says."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import run_dvc

pytestmark = pytest.mark.slow


def _git(ws, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True, text=True).stdout


def test_dvc_push_works_in_the_demo_workspace(copy_workspace):
    ws, _ = copy_workspace
    assert run_dvc(ws, "remote", "default").stdout.strip() == "local"
    assert "url = ../dvc-storage" in _git(ws, "show", "HEAD:.dvc/config")  # committed: a clone has it too
    res = run_dvc(ws, "push", "--run-cache")
    assert "pushed" in res.stdout, res.stdout
    storage = ws / "dvc-storage"
    assert any((storage / "files/md5").rglob("*")) and any((storage / "runs").rglob("*"))
    assert "Cache and remote 'local' are in sync" in run_dvc(ws, "status", "--cloud").stdout
    assert _git(ws, "status", "--porcelain") == ""  # the remote's files stay out of git
