"""Tests for stages/plot.py: the report files, the Pareto front, the label de-overlap and main()."""
from __future__ import annotations

import csv
import json
import logging
import random
from pathlib import Path

import pytest
import yaml
from matplotlib.text import Text
from PIL import Image

from imgclf.common import PipelineError
from imgclf.reporting import report
from imgclf.reporting.report import draw_accuracy, label_positions, make_report, pareto_front
from stages import plot

FILES = ["accuracy.png", "cost.png", "leaderboard.csv", "leaderboard.md", "accuracy.json"]


def ok(arch: str, acc: float, time_s: float | None = 100.0, params_m: float | None = 10.0) -> dict:
    return {"arch": arch, "status": "ok", "reason": None, "accuracy": acc, "error_rate": 1 - acc, "valid_loss": 0.2,
            "train_time_s": time_s, "params_m": params_m, "images_per_s": 150.0, "peak_memory_mb": 2100.0,
            "device": "cuda", "precision": "fp16", "epochs": 4, "img_size": 224}


def failed(arch: str, reason: str = "RuntimeError: CUDA out of memory") -> dict:
    keys = ["accuracy", "error_rate", "valid_loss", "train_time_s", "params_m", "images_per_s", "peak_memory_mb"]
    return {"arch": arch, "status": "failed", "reason": reason, **dict.fromkeys(keys), "device": "cuda",
            "precision": "fp16", "epochs": 4, "img_size": 224}


@pytest.fixture
def records() -> list[dict]:
    return [ok("resnet18", 0.91, 800.0, 11.7), failed("tf_broken", "ValueError: no weights"),
            ok("resnet50", 0.95, 2000.0, 25.6), ok("convnext_tiny", 0.93, 1500.0, 28.6),
            ok("mobilenetv3_large_100", 0.89, 500.0, None)]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def label_boxes(fig):
    """Each annotation's text box in pixels (Annotation.get_window_extent would include the leader line)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for t in fig.axes[0].texts]


def test_make_report_writes_every_output(records, tmp_path):
    summary = make_report(records, tmp_path)

    assert summary == {"best_arch": "resnet50", "max_acc": 0.95, "n_ok": 4, "n_failed": 1}
    for name in FILES:
        assert (tmp_path / name).stat().st_size > 0
    assert not list(tmp_path.glob(".*")), "temp files left behind"
    for name in ["accuracy.png", "cost.png"]:
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and 500 <= im.width <= 3000 and 400 <= im.height <= 3000


def test_leaderboard_sorted_with_failed_last(records, tmp_path):
    make_report(records, tmp_path)

    rows = read_csv(tmp_path / "leaderboard.csv")
    assert list(rows[0]) == report.COLUMNS
    assert [r["arch"] for r in rows] == ["resnet50", "convnext_tiny", "resnet18", "mobilenetv3_large_100", "tf_broken"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", ""]
    assert rows[0]["accuracy"] == "0.9500" and rows[0]["params_m"] == "25.60"
    assert rows[3]["params_m"] == ""  # a null cost stays empty, not "None"
    assert rows[-1]["status"] == "failed" and rows[-1]["reason"] == "ValueError: no weights"
    assert rows[-1]["accuracy"] == ""

    md = (tmp_path / "leaderboard.md").read_text().splitlines()
    assert md[0].startswith("| rank | arch | status | accuracy |")
    assert set(md[1]) <= set("|-:") and len(md) == 2 + len(records)
    assert md[2].startswith("| 1 | resnet50 | ok | 0.9500 |")
    assert "tf_broken" in md[-1] and "ValueError: no weights" in md[-1]


def test_leaderboard_ties_share_a_rank_and_reason_cannot_break_markdown(tmp_path):
    make_report([ok("a", 0.9), ok("b", 0.9), ok("c", 0.8), failed("d", "line one\nbad | pipe")], tmp_path)

    assert [r["rank"] for r in read_csv(tmp_path / "leaderboard.csv")] == ["1", "1", "3", ""]
    last = (tmp_path / "leaderboard.md").read_text().splitlines()[-1]
    assert "line one bad \\| pipe" in last


def test_accuracy_json_lists_ok_archs_for_dvc_plots(records, tmp_path):
    make_report(records, tmp_path)

    rows = json.loads((tmp_path / "accuracy.json").read_text())
    assert rows[0] == {"arch": "resnet50", "accuracy": 0.95, "x": 0, "train_time_s": 2000.0, "params_m": 25.6}
    assert {r["arch"] for r in rows} == {"resnet18", "resnet50", "convnext_tiny", "mobilenetv3_large_100"}


def test_accuracy_plot_labels_every_ok_arch_and_marks_the_best(records):
    fig = draw_accuracy(records)

    labels = [t.get_text() for t in fig.axes[0].texts]
    for r in records:
        hits = [s for s in labels if s.split()[0] == r["arch"]]
        assert len(hits) == (1 if r["status"] == "ok" else 0), r["arch"]
    assert [s for s in labels if "best" in s] == ["resnet50  0.9500  (best)"]
    assert "accuracy" in fig.axes[0].get_title().lower() and "resnet50" in fig.axes[0].get_title()
    assert fig.axes[0].get_ylabel() == "accuracy (valid)"
    assert any(t.get_text() == "failed: tf_broken" for t in fig.texts)


def test_all_failed_still_writes_everything(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="stages.plot"):
        summary = make_report([failed("a"), failed("b", "OSError: no file")], tmp_path)

    assert summary == {"best_arch": None, "max_acc": None, "n_ok": 0, "n_failed": 2}
    assert "no architecture succeeded" in caplog.text
    for name in FILES:
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / "accuracy.json").read_text()) == []
    rows = read_csv(tmp_path / "leaderboard.csv")
    assert [(r["arch"], r["rank"], r["reason"]) for r in rows] == [("a", "", "RuntimeError: CUDA out of memory"),
                                                                   ("b", "", "OSError: no file")]


def test_pareto_front_hand_example():
    points = [("A", 1.0, 0.80), ("B", 2.0, 0.90), ("C", 3.0, 0.85),  # C: B is cheaper and better
              ("D", 4.0, 0.95), ("E", 5.0, 0.95),  # E: same accuracy as D, costs more
              ("F", 2.0, 0.70)]  # F: same cost as B, less accurate
    assert pareto_front(points) == ["A", "B", "D"]
    assert pareto_front(list(reversed(points))) == ["A", "B", "D"]


def test_pareto_front_ties_and_edge_cases():
    # Exact duplicates do not dominate each other; a same-cost, lower-accuracy point is dominated.
    assert sorted(pareto_front([("X", 1.0, 0.9), ("Y", 1.0, 0.9), ("Z", 1.0, 0.8)])) == ["X", "Y"]
    assert pareto_front([]) == []
    assert pareto_front([("only", 3.0, 0.5)]) == ["only"]


def test_label_positions_leaves_spaced_labels_alone():
    ys = [0.1, 0.5, 0.3]
    assert label_positions(ys, 0.1, 0.0, 1.0) == pytest.approx(ys)


def test_label_positions_spreads_ties_symmetrically():
    assert label_positions([0.0, 0.0], 1.0, -10, 10) == pytest.approx([-0.5, 0.5])
    assert label_positions([5.0, 5.0, 5.0], 1.0, -10, 10) == pytest.approx([4.0, 5.0, 6.0])


def test_label_positions_keeps_order_and_is_least_squares():
    # Sorted ys 0.1, 0.2, 0.3 with gap 0.15: shifted 0.1, 0.05, 0.0 pool to 0.05 -> 0.05, 0.2, 0.35.
    assert label_positions([0.3, 0.1, 0.2], 0.15, -1, 1) == pytest.approx([0.35, 0.05, 0.2])


def test_label_positions_respects_bounds():
    assert label_positions([0.0, 0.0], 1.0, 0.0, 10.0) == pytest.approx([0.0, 1.0])
    assert label_positions([10.0, 10.0], 1.0, 0.0, 10.0) == pytest.approx([9.0, 10.0])
    # No room for all gaps: gaps win, the stack is centred on the range.
    assert label_positions([0.5, 0.5, 0.5], 1.0, 0.0, 1.0) == pytest.approx([-0.5, 0.5, 1.5])
    assert label_positions([], 1.0, 0.0, 1.0) == []


def test_label_positions_random_invariants():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 25)
        ys = [rng.uniform(0.9, 0.91) for _ in range(n)]
        gap, lo, hi = 0.002, 0.85, 0.96
        pos = label_positions(ys, gap, lo, hi)
        by_y = [p for _, p in sorted(zip(ys, pos))]
        assert all(b - a >= gap - 1e-12 for a, b in zip(by_y, by_y[1:]))
        assert all(lo - 1e-12 <= p <= hi + 1e-12 for p in pos)


def test_twenty_close_accuracies_have_no_overlapping_labels():
    rng = random.Random(1)
    names = [f"arch_{i:02d}_" + "x" * rng.randint(0, 25) for i in range(20)]
    recs = [ok(n, 0.95 + rng.uniform(0, 0.01)) for n in names]
    recs[3]["accuracy"] = recs[7]["accuracy"]  # an exact tie too

    fig = draw_accuracy(recs)
    boxes = label_boxes(fig)

    assert len(boxes) == 20
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            w = min(a.x1, b.x1) - max(a.x0, b.x0)
            h = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert w <= 0 or h <= 0, "label boxes overlap"
    fig_box = fig.bbox
    for box in boxes:
        assert fig_box.x0 <= box.x0 and box.x1 <= fig_box.x1 and fig_box.y0 <= box.y0 and box.y1 <= fig_box.y1
    # Labels stack in accuracy order, so leader lines do not cross.
    texts = fig.axes[0].texts
    order_by_acc = sorted(range(20), key=lambda i: texts[i].xy[1])
    heights = [boxes[i].y0 for i in order_by_acc]
    assert heights == sorted(heights)


def write_workspace(root: Path, metrics: dict[str, dict]) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump({"sweep": {"archs": ["a", "b"]}}))
    folder = root / "metrics" / "sweep"
    folder.mkdir(parents=True)
    for name, record in metrics.items():
        (folder / f"{name}.json").write_text(json.dumps(record))


ARGV = ["--metrics-dir", "metrics/sweep", "--out-dir", "plots/sweep", "--summary", "metrics/plot.json"]


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(plot, "load_params", lambda *a, **k: yaml.safe_load(Path("params.yaml").read_text()))
    return tmp_path


def test_main_reads_listed_archs_only(workspace):
    # "stale" is not in params.yaml: it would win if main globbed the folder.
    write_workspace(workspace, {"a": ok("a", 0.8), "b": failed("b"), "stale": ok("stale", 0.99)})

    plot.main(ARGV)

    summary = json.loads((workspace / "metrics" / "plot.json").read_text())
    assert summary == {"best_arch": "a", "max_acc": 0.8, "n_ok": 1, "n_failed": 1}
    rows = read_csv(workspace / "plots" / "sweep" / "leaderboard.csv")
    assert [r["arch"] for r in rows] == ["a", "b"]


def test_main_missing_metrics_names_the_arch(workspace):
    write_workspace(workspace, {"a": ok("a", 0.8)})

    with pytest.raises(PipelineError, match=r"'b'.*dvc repro"):
        plot.main(ARGV)
    assert not (workspace / "metrics" / "plot.json").exists()


def test_main_rejects_a_file_holding_another_arch(workspace):
    write_workspace(workspace, {"a": ok("a", 0.8), "b": ok("not_b", 0.7)})

    with pytest.raises(PipelineError, match=r"b\.json.*'b'"):
        plot.main(ARGV)
