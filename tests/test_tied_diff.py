"""tools.tied_diff names the architectures that joined and left the tied set between two git revisions."""

import json
import subprocess

import pytest

from imgclf.common import PipelineError
from tools import tied_diff


def commit_tied(repo, tied, message):
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/plot.json").write_text(
        json.dumps({"best_arch": tied[0], "n_tied": len(tied), "tied_with_best": tied})
    )
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", message], cwd=repo, check=True)


def test_joined_and_left_between_two_revisions(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "config", "user.email", "t@t"], cwd=repo, check=True)
    subprocess.run(["git", "config", "user.name", "t"], cwd=repo, check=True)
    monkeypatch.chdir(repo)
    from dvc.repo import Repo

    Repo.init()
    commit_tied(repo, ["a", "b"], "two tied")
    commit_tied(repo, ["a", "c", "d"], "c and d join, b leaves")

    lines = tied_diff.main(["HEAD~1", "HEAD"])
    assert lines == ["tied with the best: 2 at HEAD~1 -> 3 at HEAD", "joined: c, d", "left: b"]
    assert tied_diff.main([])[1:] == ["joined: none", "left: none"]  # HEAD against an unchanged workspace
    with pytest.raises(PipelineError, match="cannot read metrics/plot.json at nosuchrev"):
        tied_diff.main(["nosuchrev", "HEAD"])
