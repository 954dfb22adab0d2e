"""The `dvc plots show` page at the whole zoo's size: 1,102 sweep entries (metrics, curves, confusion pairs), the
real plot stage, the project's dvc.yaml plots and the page template its .dvc/config names (Vega inside it),
rendered offline in headless Chromium. Needs `chromium` (Debian's package)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from imgclf.training.archs import list_archs
from stages import plot
from tests.conftest import ROOT, run_dvc
from tests.zoo_outputs import write_sweep_outputs

pytestmark = pytest.mark.slow

N = 1102  # the exercise's list with timm 1.0.31
SUMMARY = ["Exercise_plot", "Accuracy_against_inference_throughput", "Accuracy_against_forward_GMACs", "Leaderboard"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI sets ZOO_PAGE_REQUIRED=1 so that a missing browser fails there instead of skipping.
REQUIRED = os.environ.get("ZOO_PAGE_REQUIRED") == "1"


def zoo_workspace(ws: Path, archs: list[str]) -> None:
    """A DVC project with the project's dvc.yaml, templates and params (sweep.archs = `archs`), every sweep
    entry's outputs and the two fine-tuned tasks' curves and confusion pairs."""
    ws.mkdir()
    for name in ("dvc.yaml", "plot_templates"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copyfile)(ROOT / name, ws / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sweep"]["archs"] = archs
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_sweep_outputs(ws, archs)
    for task in params["finetune"]["tasks"]:
        metrics = ws / "plots/live/finetune" / task / "plots/metrics"
        metrics.mkdir(parents=True)
        (metrics / "accuracy.tsv").write_text("step\taccuracy\n0\t0.9\n1\t0.95\n")
        (ws / "plots/confusion/finetune").mkdir(parents=True, exist_ok=True)
        (ws / "plots/confusion/finetune" / f"{task}.csv").write_text("actual,predicted\ncat,cat\ndog,cat\n")
    run_dvc(ws, "init", "--no-scm", "-q")
    # the project's page template, as its .dvc/config names it (a path relative to .dvc/)
    template = re.search(r"html_template = (\S+)", (ROOT / ".dvc/config").read_text())
    assert template, "the project's .dvc/config sets no plots.html_template"
    run_dvc(ws, "config", "plots.html_template", template.group(1))


def chromium(*args: str) -> subprocess.CompletedProcess:
    # --virtual-time-budget lets the page's scripts (vegaEmbed) finish before the DOM is dumped or shot.
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--virtual-time-budget=60000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def rendered_charts(dom: str) -> dict[str, tuple[int, int]]:
    """Each plot div of the page's DOM after Vega ran -> the size of what it drew, a canvas or an SVG (the
    leaderboard: a browser draws no canvas over 32,767 px); (0, 0) when nothing was drawn."""
    charts = {}
    for match in re.finditer(r'<div id="([^"]+)"[^>]*>(.*?)</div>', dom, re.DOTALL):
        drawn = re.search(r'<canvas width="(\d+)" height="(\d+)"', match.group(2)) or re.search(
            r'<svg [^>]*class="marks" width="(\d+)" height="(\d+)"', match.group(2)
        )
        charts[match.group(1)] = (int(drawn.group(1)), int(drawn.group(2))) if drawn else (0, 0)
    return charts


@pytest.mark.skipif(not CHROMIUM and not REQUIRED, reason="needs chromium (apt-get install chromium)")
def test_the_whole_zoo_page_renders_summary_first(tmp_path, monkeypatch, capsys):
    assert CHROMIUM, "chromium is not installed: apt-get install -y chromium"
    archs = (list_archs() + [f"zoo_extra_{i}" for i in range(N)])[:N]
    ws = tmp_path / "ws"
    zoo_workspace(ws, archs)
    monkeypatch.chdir(ws)
    cmd = yaml.safe_load((ws / "dvc.yaml").read_text())["stages"]["plot"]["cmd"].split()
    summary = plot.main(cmd[cmd.index("stages.plot") + 1 :])  # the stage's own command line
    assert summary["n_ok"] + summary["n_failed"] + summary["n_skipped"] == N and summary["n_skipped"] > 0
    board_md = ws / "plots/sweep/leaderboard.md"
    assert board_md.stat().st_size <= 200_000, "leaderboard.md over 200 KB at the zoo's size"
    assert max(map(len, board_md.read_text().splitlines())) <= 160

    page = tmp_path / "page"
    res = run_dvc(ws, "plots", "show", "-o", str(page))
    assert "failed to load" not in res.stdout + res.stderr, res.stdout + res.stderr
    html = (page / "index.html").read_text()
    assert "cdn.jsdelivr" not in html and "<script src" not in html  # Vega is inside the page: nothing to fetch

    dom = chromium("--dump-dom", (page / "index.html").as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    charts = rendered_charts(dom.stdout)
    vega = {name: size for name, size in charts.items() if not name.endswith("_png")}
    images = [name for name in charts if name.endswith("_png")]
    assert [n for n, size in vega.items() if 0 in size] == [], "charts Vega did not draw"
    # The page opens on the summary, then one chart per curve metric (not one per model), PNGs last.
    names = list(charts)
    assert [any(n.startswith(s) for s in SUMMARY) for n in names[:4]] == [True] * 4, names
    assert sum(n.startswith("plots_sweep_curves_") for n in names) == 4
    assert images == names[-2:] == ["plots_sweep_accuracy_png", "plots_sweep_cost_png"]
    # 4 summary charts, 4 curve metrics, the best model's confusion matrix and 2 PNGs; each finetune task's
    # curves and confusion matrix (3 tasks: 17 charts)
    tasks = yaml.safe_load((ws / "params.yaml").read_text())["finetune"]["tasks"]
    assert len(charts) == 11 + 2 * len(tasks), names
    board = next(size for n, size in vega.items() if n.startswith("Leaderboard"))
    assert board[1] > 15 * N, "the leaderboard does not list every entry"

    out = Path(os.environ.get("ZOO_PAGE_OUT", tmp_path / "shot"))
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "zoo_page.png"
    res = chromium("--window-size=1500,2400", f"--screenshot={shot}", (page / "index.html").as_uri())
    assert res.returncode == 0 and shot.stat().st_size > 50_000, res.stderr[-2000:]
    with capsys.disabled():
        print(f"\n{len(charts)} charts ({len(vega)} Vega, {len(images)} images) for {N} entries; screenshot: {shot}")
