"""End to end: the real `dvc repro` on the demo configuration, and what DVC reruns after an edit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT, run_dvc, stages_run

pytestmark = pytest.mark.slow

SWEEP = ["test_resnet", "test_efficientnet", "test_vit"]


def test_demo_reports_every_accuracy(demo_workspace):
    ws, _ = demo_workspace
    shown = json.loads(run_dvc(ws, "metrics", "show", "--json").stdout)
    metrics = next(iter(shown.values()))["data"]
    files = {path: m["data"] for path, m in metrics.items()}
    for task in ("pets", "monuments"):
        acc = files[f"metrics/finetune/{task}.json"]["accuracy"]
        assert 0.0 <= acc <= 1.0
    accs = {a: files[f"metrics/sweep/{a}.json"]["accuracy"] for a in SWEEP}
    assert all(v >= 0.8 for v in accs.values()), accs  # the demo learns (chance is 0.2), from scratch
    assert all(files[f"metrics/sweep/{a}.json"]["n_valid"] >= 100 for a in SWEEP)
    best = files["metrics/plot.json"]
    assert best["best_arch"] == max(accs, key=accs.get)
    assert best["max_acc"] == pytest.approx(max(accs.values()))
    # the plot exists and the leaderboard names every architecture
    assert (ws / "plots/sweep/accuracy.png").stat().st_size > 1000
    board = (ws / "plots/sweep/leaderboard.csv").read_text()
    assert all(a in board for a in SWEEP)
    # the data stages did their real work on the generated sources
    pets = files["metrics/download_pets.json"]
    assert pets["images"] == 96 and pets["cats"] == 48 and pets["breeds"] == 8 and pets["skipped"] == 0
    report = (ws / "data/monuments/report.csv").read_text()
    assert ",http_404," in report and ",not_an_image," in report and ",duplicate," in report


def test_second_demo_run_changes_nothing(demo_workspace):
    ws, port = demo_workspace
    res = subprocess.run(
        [sys.executable, "-m", "demo.run", "--dir", str(ws), "--port", str(port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Running stage" not in res.stdout + res.stderr
    assert "Data and pipelines are up to date" in res.stdout + res.stderr
    assert "generated" in res.stdout and "NOT pretrained" in res.stdout


def _edit_params(ws, edit) -> None:
    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_adding_an_architecture_trains_only_it(copy_workspace):
    ws, _ = copy_workspace
    decoded = ws / "data/five_class/decoded.safetensors"
    before = decoded.read_bytes()
    _edit_params(ws, lambda p: p["sweep"]["archs"].append("test_convnext"))
    ran = stages_run(run_dvc(ws, "repro").stdout)
    # decode reads sweep.archs (for train.img_size null) and writes the same bytes, so no other entry reruns
    assert sorted(s for s in ran if s != "check_params") == ["decode", "plot", "sweep@test_convnext"]
    assert decoded.read_bytes() == before
    board = (ws / "plots/sweep/leaderboard.csv").read_text()
    assert "test_convnext" in board


def test_an_experiment_with_more_epochs_reruns_only_the_sweep_and_diffs_show_it(copy_workspace):
    ws, _ = copy_workspace
    ran = stages_run(run_dvc(ws, "exp", "run", "-S", "sweep.epochs=2").stdout)
    assert sorted(s for s in ran if s != "check_params") == ["plot"] + [f"sweep@{a}" for a in sorted(SWEEP)]
    assert json.loads((ws / "metrics/sweep/test_resnet.json").read_text())["epochs"] == 2
    diff = json.loads(run_dvc(ws, "metrics", "diff", "--json").stdout)
    for arch in SWEEP:
        assert diff[f"metrics/sweep/{arch}.json"]["epochs"] == {"old": 4, "new": 2, "diff": -2}
    assert "metrics/finetune/pets.json" not in diff  # upstream untouched
    out = ws / "plots_diff"
    run_dvc(ws, "plots", "diff", "HEAD", "-o", str(out))
    html = (out / "index.html").read_text()
    assert "Accuracy against training time" in html and all(a in html for a in SWEEP)
    shown = run_dvc(ws, "exp", "show", "--no-pager", "--csv").stdout
    assert "sweep.epochs" in shown and "accuracy" in shown


def test_unknown_architecture_fails_before_any_training(copy_workspace):
    ws, _ = copy_workspace
    _edit_params(ws, lambda p: p["sweep"]["archs"].append("resnett18"))
    res = run_dvc(ws, "repro", check=False)
    assert res.returncode != 0
    assert "unknown architecture 'resnett18'" in res.stderr + res.stdout
    assert stages_run(res.stdout) == ["check_params"]
