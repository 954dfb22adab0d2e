"""DVC's own views of the demo: `dvc metrics show` and `dvc exp show` that read at a glance, an architecture
removed that leaves nothing behind (`make prune`, then a clone that pulls is up to date), and `make sweep`'s
params check (the message `check_params` gives)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, git, run_dvc, stages_run

SEED = 42
REMOVED = f"test_vit-{SEED}"  # the demo's sweep entry the prune test takes out


@pytest.mark.slow
def test_metrics_show_fits_160_columns(demo_workspace):
    ws, _ = demo_workspace
    table = run_dvc(ws, "metrics", "show").stdout
    lines = table.splitlines()
    assert max(map(len, lines)) <= 160, table
    header = lines[0].split()
    assert {"accuracy", "best_arch", "max_acc", "n_tied", "kept", "excluded", "relabelled"} <= set(header), header
    # nothing that changes on every run, nor a per-class count
    assert not {"train_time_s", "peak_memory_mb", "ci_low", "device", "images_per_s"} & set(header), header
    assert "metrics/sweep/test_resnet-42.json" in table and "metrics/plot.json" in table


@pytest.mark.slow
def test_an_experiment_shows_at_most_25_columns(copy_workspace):
    ws, _ = copy_workspace
    tasks = yaml.safe_load((ws / "params.yaml").read_text())["finetune"]["tasks"]
    one_epoch = [f"finetune.tasks.{task}.epochs=1" for task in tasks]  # as cheap as it gets: every model retrains
    args = ["-S", "train.lr=0.002", "-S", "sweep.epochs=1", *(x for s in one_epoch for x in ("-S", s))]
    ran = stages_run(run_dvc(ws, "exp", "run", *args).stdout)
    assert {f"sweep@test_resnet-{SEED}", "plot"} <= set(ran), ran
    shown = run_dvc(ws, "exp", "show", "--only-changed", "--csv").stdout
    header = next(csv.reader(io.StringIO(shown)))
    assert len(header) <= 25, (len(header), header)
    assert "train.lr" in header and "max_acc" in header
    assert f"metrics/sweep/test_resnet-{SEED}.json:accuracy" in header


@pytest.mark.slow
def test_a_removed_architecture_leaves_nothing_and_a_clone_that_pulls_is_up_to_date(copy_workspace, tmp_path):
    ws, _ = copy_workspace
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["sweep"]["archs"].remove(REMOVED.rsplit("-", 1)[0])
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(run_dvc(ws, "repro").stdout) == ["check_params", "plot"]
    assert (ws / f"records/sweep/{REMOVED}.json").is_file()  # left behind: what make prune is for

    res = subprocess.run(
        [sys.executable, "-m", "tools.prune", "--workspace", str(ws)], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"prune: 1 sweep entry removed from the workspace and dvc.lock: sweep@{REMOVED}" in res.stderr
    assert "restores its entry from the run-cache" in res.stderr
    assert stages_run(res.stdout) == ["plot"], res.stdout  # its folder deps lost the entry's files
    assert json.loads(run_dvc(ws, "status", "--json").stdout) == {}
    left = [
        path
        for folder in ("models/sweep", "records/sweep", "metrics/sweep", "plots/live/sweep", "plots/confusion/sweep")
        for path in (ws / folder).iterdir()
        if REMOVED in path.name
    ]
    assert left == []
    assert REMOVED not in (ws / "dvc.lock").read_text()
    assert not [p for p in ws.rglob(".gitignore") if ".dvc" not in p.parts and REMOVED in p.read_text()]
    again = subprocess.run(
        [sys.executable, "-m", "tools.prune", "--workspace", str(ws)], cwd=ROOT, capture_output=True, text=True
    )
    assert "nothing to remove" in again.stderr and stages_run(again.stdout) == []

    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", f"without {REMOVED}")
    assert git_output(ws, "status", "--porcelain") == ""
    run_dvc(ws, "push", "--run-cache")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ws), str(clone)], check=True)
    run_dvc(clone, "pull")  # the default remote, from the clone's own .dvc/config
    assert json.loads(run_dvc(clone, "status", "--json").stdout) == {}
    assert stages_run(run_dvc(clone, "repro", "--dry").stdout) == []
    assert sorted(p.name for p in (clone / "metrics/sweep").iterdir()) == [
        f"{a}-{SEED}.json" for a in sorted(params["sweep"]["archs"])
    ]


def git_output(ws: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize(
    "text",
    ["base:\n  seed: [42\n", None],  # a YAML error; a valid file with an invalid value
    ids=["yaml-error", "invalid-value"],
)
def test_make_sweep_on_a_broken_params_file_prints_check_params_message_only(tmp_path, text):
    params = (ROOT / "params.yaml").read_text()
    if text is None:
        data = yaml.safe_load(params)
        data["sweep"]["epochs"] = 0
        text = yaml.safe_dump(data, sort_keys=False)
    (tmp_path / "params.yaml").write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    check = subprocess.run(
        [sys.executable, "-m", "stages.check_params", "--out", "params.ok"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 1 and check.stderr.startswith("error: params.yaml"), check.stderr
    assert "Traceback" not in check.stderr and len(check.stderr.splitlines()) == 1  # one line, a YAML error too
    # what `make sweep` runs, from this interpreter (make would install a venv where there is none)
    sweep = subprocess.run(
        [sys.executable, "-m", "tools.sweep", "--workspace", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert sweep.returncode == 1 and sweep.stdout == "" and "Traceback" not in sweep.stderr, sweep.stderr
    assert check.stderr.strip() in sweep.stderr.splitlines(), sweep.stderr  # the same line, whatever else warns


def workspace_files(ws: Path) -> dict[str, bytes]:
    """Every file of a workspace (git, DVC cache, outputs, dvc.lock), by path, with its bytes."""
    return {str(p.relative_to(ws)): p.read_bytes() for p in sorted(ws.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.mark.slow
def test_a_misspelled_architecture_or_a_bad_shard_changes_nothing_on_disk(copy_workspace):
    """issue 41.1: `test_vit` misspelled made its entry look taken out, and `make sweep` pruned it before the check
    failed. Now all of params.yaml and the make variables are checked first: one line, every byte as before."""
    ws, _ = copy_workspace
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["sweep"]["archs"] = [a.replace("test_vit", "test_vti") for a in params["sweep"]["archs"]]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = workspace_files(ws)
    for args in (["tools.sweep"], ["tools.prune"], ["tools.sweep", "--shard", "3/2"]):
        res = subprocess.run(
            [sys.executable, "-m", *args, "--workspace", str(ws)], cwd=ROOT, capture_output=True, text=True
        )
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.splitlines()) == 1, res.stderr
        assert "test_vti" in res.stderr and "Did you mean test_vit" in res.stderr, res.stderr
        assert workspace_files(ws) == before, args  # outputs, dvc.lock, cache: byte-identical
    params["sweep"]["archs"] = [a.replace("test_vti", "test_vit") for a in params["sweep"]["archs"]]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    res = subprocess.run(
        [sys.executable, "-m", "tools.sweep", "--workspace", str(ws), "--shard", "3/2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and res.stderr.startswith("error: SHARD='3/2'"), res.stderr
    assert len(res.stderr.splitlines()) == 1 and workspace_files(ws) == {
        **before,
        "params.yaml": (ws / "params.yaml").read_bytes(),
    }
