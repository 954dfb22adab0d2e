"""DVC's own views of the demo: `dvc plots show` offline and without warnings, `dvc plots diff` with each
revision apart (its own best, its own tied set, every row and point marked with its revision)."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.conftest import git, run_dvc, stages_run

pytestmark = pytest.mark.slow

EXERCISE = "Exercise plot"
LEADERBOARD = "Leaderboard"


def test_plots_show_loads_every_plot_and_the_page_carries_vega(demo_workspace, tmp_path):
    ws, _ = demo_workspace
    assert "html_template = ../plot_templates/page.html" in (ws / ".dvc/config").read_text()
    res = run_dvc(ws, "plots", "show", "-v", "-o", str(tmp_path / "page"))
    out = res.stdout + res.stderr
    assert "failed to load" not in out and "WARNING" not in out, out
    html = (tmp_path / "page/index.html").read_text()
    assert "<script src" not in html and "cdn.jsdelivr" not in html  # nothing fetched: Vega is in the page
    assert all(f"<!-- {name} " in html for name in ("vega", "vega-lite", "vega-embed"))
    assert html.count("vegaEmbed('#") >= 9 and ".gitignore" not in html


def _specs(ws, *revs: str) -> dict[str, dict]:
    """Each Vega chart of `dvc plots diff REVS --json` (`dvc plots show --json` for ("show",)) by name: its
    filled Vega-Lite spec."""
    args = ("show",) if revs == ("show",) else ("diff", *revs)
    shown = json.loads(run_dvc(ws, "plots", *args, "--json").stdout)
    assert "errors" not in shown, shown["errors"]
    return {name: items[0]["content"] for name, items in shown["data"].items() if items and items[0]["type"] == "vega"}


def _aggregates(node) -> list[dict]:
    """Every aggregate and joinaggregate transform anywhere in a spec."""
    if isinstance(node, dict):
        found = [node] if "aggregate" in node and isinstance(node["aggregate"], list) else []
        return found + [a for v in node.values() for a in _aggregates(v)]
    if isinstance(node, list):
        return [a for v in node for a in _aggregates(v)]
    return []


def _by_name(specs: dict[str, dict], prefix: str) -> dict:
    return next(spec for name, spec in specs.items() if name.startswith(prefix))


def test_plots_diff_keeps_each_revision_apart(copy_workspace):
    ws, _ = copy_workspace
    old = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ws, capture_output=True, text=True).stdout
    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["sweep"]["archs"] = ["test_resnet", "test_convnext"]  # one kept, one gone, one new
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    assert f"sweep@test_convnext-{params['sweep']['seeds'][0]}" in stages_run(run_dvc(ws, "repro").stdout)
    git(ws, "add", "-A", "--", ".", ":!data", ":!models", ":!plots", ":!review")
    git(ws, "commit", "-q", "-m", "two architectures")
    new = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ws, capture_output=True, text=True).stdout
    old, new = old.strip(), new.strip()

    specs = _specs(ws, old, new)
    summary = {
        rev: json.loads(subprocess.run(["git", "show", f"{rev}:metrics/plot.json"], cwd=ws, capture_output=True).stdout)
        for rev in (old, new)
    }
    exercise, board = _by_name(specs, EXERCISE), _by_name(specs, LEADERBOARD)
    for spec in (exercise, board):
        rows = spec["data"]["values"]
        assert {r["rev"] for r in rows} == {old, new}  # every row and point carries its revision
        facet = spec["facet"]
        assert (facet.get("column") or facet.get("row"))["field"] == "rev"  # drawn apart, not on top of each other
        # the counts and tie aggregates are per revision
        assert all(a.get("groupby") == ["rev"] for a in _aggregates(spec)) and _aggregates(spec)
    for rev in (old, new):
        points = [r for r in exercise["data"]["values"] if r["rev"] == rev]
        best = [r["arch"] for r in points if r["label_text"].endswith("(best)")]
        assert best == [summary[rev]["best_arch"]]
        assert sorted(r["arch"] for r in points if r["tied"] is True) == sorted(summary[rev]["tied_with_best"])
        rows = [r for r in board["data"]["values"] if r["rev"] == rev]
        assert sorted(r["arch"] for r in rows if r["tied_with_best"] == "yes") == sorted(summary[rev]["tied_with_best"])
    assert {r["arch"] for r in board["data"]["values"] if r["rev"] == old} == {
        "test_resnet",
        "test_efficientnet",
        "test_vit",
    }
    assert {r["arch"] for r in board["data"]["values"] if r["rev"] == new} == {"test_resnet", "test_convnext"}
    # the curves: one line per entry and revision, dashed by revision
    curves = _by_name(specs, "plots/sweep/curves/")
    assert {"field": "rev", "type": "nominal"} in curves["encoding"]["detail"]
    assert curves["encoding"]["strokeDash"]["field"] == "rev"

    # one revision (`dvc plots show`): one facet
    shown = _specs(ws, "show")
    assert {r["rev"] for r in _by_name(shown, EXERCISE)["data"]["values"]} == {"workspace"}
