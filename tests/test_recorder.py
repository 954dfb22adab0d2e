"""imgclf.parallel.Recorder on a one-stage DVC repository: an entry is recorded only for the deps it ran on.
Params or data edited while it ran (after its deps were saved, before it is recorded) leave it unrecorded."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml

from imgclf import dvc_ops
from imgclf.parallel import Recorder

DVC_YAML = {
    "stages": {
        "sweep": {
            "cmd": "python -m stages.sweep --record out/record.json",
            "params": ["train.lr"],
            "deps": ["data.txt"],
            "outs": ["out"],
        }
    }
}


def _repo(ws: Path) -> None:
    from dvc.repo import Repo

    ws.mkdir()
    Repo.init(str(ws), no_scm=True).close()
    (ws / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (ws / "params.yaml").write_text("train:\n  lr: 0.1\n")
    (ws / "data.txt").write_text("images\n")


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (None, None),
        (lambda ws: (ws / "params.yaml").write_text("train:\n  lr: 0.2\n"), "params.yaml (train.lr)"),
        (lambda ws: (ws / "data.txt").write_text("other images\n"), "data.txt"),
    ],
)
def test_an_entry_whose_params_or_data_changed_while_it_ran_is_not_recorded(tmp_path, edit, named):
    ws = tmp_path / "ws"
    _repo(ws)
    with contextlib.chdir(ws), dvc_ops.locked_repo(ws) as repo:
        (stage,) = repo.index.stages
        recorder = Recorder(repo)
        assert not recorder.restore_or_prepare(stage)  # nothing cached: it has to run
        (ws / "out").mkdir()
        (ws / "out/record.json").write_text('{"status": "ok"}')  # what the command wrote
        if edit:
            edit(ws)  # while it ran
        assert recorder.record(stage, {}) == named
        recorder.write_lock()
    lock = ws / "dvc.lock"
    if named:
        assert not lock.exists() and not recorder.done
    else:
        assert yaml.safe_load(lock.read_text())["stages"]["sweep"]["params"]["params.yaml"] == {"train.lr": 0.1}
