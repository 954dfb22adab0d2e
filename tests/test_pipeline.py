"""End to end: the real `dvc repro` on the demo configuration, and what DVC reruns after an edit."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml

from imgclf.common import library_versions
from tests.conftest import ROOT, run_dvc, stages_run

pytestmark = pytest.mark.slow

SWEEP = ["test_resnet", "test_efficientnet", "test_vit"]
SEED = 42  # sweep.seeds: [42], the project's default: entries are sweep@<arch>-42


def test_demo_reports_every_accuracy(demo_workspace):
    ws, _ = demo_workspace
    shown = json.loads(run_dvc(ws, "metrics", "show", "--json").stdout)
    metrics = next(iter(shown.values()))["data"]
    files = {path: m["data"] for path, m in metrics.items()}
    for task in ("pets", "monuments"):
        acc = files[f"metrics/finetune/{task}.json"]["accuracy"]
        assert 0.0 <= acc <= 1.0
    accs = {a: files[f"metrics/sweep/{a}-{SEED}.json"]["accuracy"] for a in SWEEP}
    assert all(v >= 0.8 for v in accs.values()), accs  # the demo learns (chance is 0.2), from scratch
    # a metrics file holds its accuracy only; the record beside it everything measured
    assert all(files[f"metrics/sweep/{a}-{SEED}.json"] == {"accuracy": accs[a]} for a in SWEEP)
    records = {a: json.loads((ws / f"records/sweep/{a}-{SEED}.json").read_text()) for a in SWEEP}
    assert all(r["n_valid"] >= 100 and r["seed"] == SEED and r["accuracy"] == accs[a] for a, r in records.items())
    versions = library_versions()  # the libraries that computed each record: a pin change makes them incomparable
    assert all(r["versions"] == versions for r in records.values())
    assert json.loads((ws / "records/finetune/pets.json").read_text())["versions"] == versions
    assert sorted(files["metrics/plot.json"]) == ["best_arch", "max_acc", "n_tied"]  # the list left out
    best = json.loads((ws / "plots/sweep/summary.json").read_text())
    assert best["best_arch"] == max(accs, key=accs.get)
    assert best["max_acc"] == pytest.approx(max(accs.values()))
    assert best["ci_low"] < best["max_acc"] <= best["ci_high"]
    # the plot exists; the leaderboard names every architecture, with its interval and whether it is tied
    assert (ws / "plots/sweep/accuracy.png").stat().st_size > 1000
    with open(ws / "plots/sweep/leaderboard.csv", newline="") as f:
        board = {r["arch"]: r for r in csv.DictReader(f)}
    assert set(board) == set(SWEEP)
    assert all(float(r["ci_low"]) <= float(r["accuracy"]) <= float(r["ci_high"]) for r in board.values())
    tied = [a for a, r in board.items() if r["tied_with_best"] == "yes"]
    assert best["tied_group"].split(", ")[0] == best["best_arch"] and sorted(best["tied_group"].split(", ")) == sorted(
        tied
    )
    assert best["n_tied"] == len(tied) and best["alpha"] == 0.05
    summary = json.loads((ws / "metrics/plot.json").read_text())  # the list too (`dvc metrics show` drops lists)
    assert summary["tied_with_best"] == best["tied_group"].split(", ")
    assert summary == {k: best[k] for k in ("best_arch", "max_acc", "n_tied", "tied_with_best")}
    assert sorted(files["metrics/scrape/monuments.json"]) == ["excluded", "kept", "relabelled"]
    assert "metrics/download_pets.json" not in files
    # the data stages did their real work on the generated sources
    pets = json.loads((ws / "records/download_pets.json").read_text())
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
    assert yaml.safe_load((ws / "params.yaml").read_text())["train"]["img_size"] == 64  # the demo's: set
    decoded = ws / "data/five_class/decoded.safetensors"
    before = decoded.read_bytes()
    _edit_params(ws, lambda p: p["sweep"]["archs"].append("test_convnext"))
    pending = set(json.loads(run_dvc(ws, "status", "--json").stdout))
    assert pending == {"check_params", "plot", f"sweep@test_convnext-{SEED}"}
    ran = stages_run(run_dvc(ws, "repro").stdout)
    # check_params rewrites the decode size with the same bytes, so decode (and every data stage) stays put
    assert sorted(ran) == ["check_params", "plot", f"sweep@test_convnext-{SEED}"]
    assert decoded.read_bytes() == before
    board = (ws / "plots/sweep/leaderboard.csv").read_text()
    assert "test_convnext" in board


def test_with_img_size_null_decode_reruns_only_when_the_largest_input_size_changes(copy_workspace):
    ws, _ = copy_workspace
    # null: each architecture at its own input size; the tiny test models' is 160 (larger than the demo's 64)
    _edit_params(ws, lambda p: p["train"].update(img_size=None))
    dry = run_dvc(ws, "repro", "--dry", "check_params", "decode").stdout
    assert stages_run(dry) == ["check_params"]  # the size file's change is known only once check_params ran
    ran = stages_run(run_dvc(ws, "repro", "check_params", "decode").stdout)
    assert ran == ["check_params", "decode"] and (ws / "data/decode_size.txt").read_text() == "160\n"
    ran = stages_run(run_dvc(ws, "repro", "check_params", "decode").stdout)
    assert ran == []
    _edit_params(ws, lambda p: p["sweep"]["archs"].append("test_convnext"))  # the same native size: no decode
    ran = stages_run(run_dvc(ws, "repro", "check_params", "decode").stdout)
    assert ran == ["check_params"]
    _edit_params(ws, lambda p: p["sweep"]["archs"].append("resnet18"))  # 224 px: stored larger
    ran = stages_run(run_dvc(ws, "repro", "check_params", "decode").stdout)
    assert ran == ["check_params", "decode"] and (ws / "data/decode_size.txt").read_text() == "224\n"


def test_an_experiment_with_more_epochs_reruns_only_the_sweep_and_diffs_show_it(copy_workspace):
    ws, _ = copy_workspace
    ran = stages_run(run_dvc(ws, "exp", "run", "-S", "sweep.epochs=2").stdout)
    # the export stage too: the entry it exports (export.model: test_resnet-42) trained again
    retrained = [f"sweep@{a}-{SEED}" for a in sorted(SWEEP)]
    assert sorted(s for s in ran if s != "check_params") == ["export", "plot", *retrained]
    assert json.loads((ws / f"records/sweep/test_resnet-{SEED}.json").read_text())["epochs"] == 2
    diff = json.loads(run_dvc(ws, "metrics", "diff", "--json").stdout)
    # only accuracies and the summary can differ: no timing, memory or count of any file
    assert {key for changes in diff.values() for key in changes} <= {"accuracy", "best_arch", "max_acc", "n_tied"}
    assert "metrics/finetune/pets.json" not in diff  # upstream untouched
    out = ws / "plots_diff"
    run_dvc(ws, "plots", "diff", "HEAD", "-o", str(out))
    html = (out / "index.html").read_text()
    assert "Accuracy against inference throughput" in html and all(a in html for a in SWEEP)
    shown = run_dvc(ws, "exp", "show", "--no-pager", "--csv").stdout
    assert "sweep.epochs" in shown and "accuracy" in shown


def _images(path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row["image"] for row in csv.DictReader(f)]


def test_adding_a_seed_trains_only_its_entries_and_the_leaderboard_reports_the_spread(copy_workspace):
    ws, _ = copy_workspace
    before = {a: (ws / f"records/sweep/{a}-{SEED}.json").read_text() for a in SWEEP}
    _edit_params(ws, lambda p: p["sweep"].update(seeds=[SEED, 7]))
    new = sorted(f"sweep@{a}-7" for a in SWEEP)
    pending = set(json.loads(run_dvc(ws, "status", "--json").stdout))
    assert sorted(pending - {"check_params"}) == ["plot", *new]  # sweep.seeds is no dep of the seed-42 entries
    ran = stages_run(run_dvc(ws, "repro").stdout)
    assert sorted(s for s in ran if s != "check_params") == ["plot", *new]
    assert json.loads(run_dvc(ws, "status", "--json").stdout) == {}
    assert {a: (ws / f"records/sweep/{a}-{SEED}.json").read_text() for a in SWEEP} == before
    for arch in SWEEP:
        assert json.loads((ws / f"records/sweep/{arch}-7.json").read_text())["seed"] == 7
        # the split is base.seed's: every seed of every entry is evaluated on the same images
        assert _images(ws / f"plots/confusion/sweep/{arch}-7.csv") == _images(
            ws / f"plots/confusion/sweep/{arch}-{SEED}.csv"
        )
    with open(ws / "plots/sweep/leaderboard.csv", newline="") as f:
        board = list(csv.DictReader(f))
    assert [r["n_seeds"] for r in board] == ["2"] * len(SWEEP) and all(r["seed_sd"] != "" for r in board)
    assert all(float(r["ci_low"]) <= float(r["accuracy"]) <= float(r["ci_high"]) for r in board)
    summary = json.loads((ws / "metrics/plot.json").read_text())
    assert summary["n_tied"] == sum(r["tied_with_best"] == "yes" for r in board) >= 1


def test_unknown_architecture_fails_before_any_training(copy_workspace):
    ws, _ = copy_workspace
    _edit_params(ws, lambda p: p["sweep"]["archs"].append("resnett18"))
    res = run_dvc(ws, "repro", check=False)
    assert res.returncode != 0
    assert "unknown architecture 'resnett18'" in res.stderr + res.stdout
    assert stages_run(res.stdout) == ["check_params"]
