"""Tests for stages/plot.py: the report files, the Pareto front, the label de-overlap, families and status
counts, the combined curves and main(). The intervals and ties themselves: tests/test_compare.py."""

from __future__ import annotations

import csv
import itertools
import json
import logging
import random
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.text import Text
from PIL import Image

from imgclf.common import PipelineError
from imgclf.reporting import figures, report
from imgclf.reporting.curves import combine_curves
from imgclf.reporting.figures import draw_accuracy, draw_cost, label_positions
from imgclf.reporting.report import make_report
from imgclf.reporting.table import (
    MAX_FAMILIES,
    OTHER,
    build_table,
    colour_groups,
    combine_seeds,
    entry_name,
    family,
    pareto_front,
)
from stages import plot

NOT_COMPARED = {
    "ci_low": None,
    "ci_high": None,
    "tied_with_best": None,
    "tied_group": None,
    "n_tied": None,
    "alpha": 0.05,
}
FILES = ["accuracy.png", "cost.png", "leaderboard.csv", "leaderboard.md", "leaderboard.json", "accuracy.json"]


def ok(arch: str, acc: float, time_s: float | None = 100.0, params_m: float | None = 10.0) -> dict:
    return {
        "arch": arch,
        "status": "ok",
        "reason": None,
        "accuracy": acc,
        "error_rate": 1 - acc,
        "valid_loss": 0.2,
        "train_time_s": time_s,
        "params_m": params_m,
        "images_per_s": 150.0,
        # inference: throughput falls as training time grows, GMACs grow with the parameters (the fronts follow)
        "infer_images_per_s": None if time_s is None else round(1e4 / time_s, 3),
        "gmacs": None if params_m is None else params_m / 10,
        "infer_latency_ms": 5.0,
        "peak_memory_mb": 2100.0,
        "device": "cuda",
        "precision": "fp16",
        "epochs": 4,
        "schedule": "fine_tune",
        "img_size": 224,
    }


def failed(arch: str, reason: str = "RuntimeError: CUDA out of memory", status: str = "failed") -> dict:
    keys = ["accuracy", "error_rate", "valid_loss", "train_time_s", "params_m", "images_per_s", "peak_memory_mb"]
    return {
        "arch": arch,
        "status": status,
        "reason": reason,
        **dict.fromkeys(keys),
        "device": "cuda",
        "precision": "fp16",
        "epochs": 4,
        "img_size": 224,
    }


def skipped(arch: str, reason: str = "350.0 M parameters > sweep.max_params_m (100)") -> dict:
    return failed(arch, reason, status="skipped")


@pytest.fixture
def records() -> list[dict]:
    return [
        ok("resnet18", 0.91, 800.0, 11.7),
        failed("tf_broken", "ValueError: no weights"),
        ok("resnet50", 0.95, 2000.0, 25.6),
        ok("convnext_tiny", 0.93, 1500.0, 28.6),
        ok("mobilenetv3_large_100", 0.89, 500.0, None),
    ]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_predictions(folder: Path, records: list[dict], n: int = 100) -> None:
    """For every ok record, an entry's predictions file over the same `n` images that agrees with its accuracy:
    the first round(accuracy * n) images right, the rest wrong."""
    folder.mkdir(parents=True, exist_ok=True)
    for r in records:
        if r["status"] == "ok" and r["accuracy"] is not None:
            right = round(r["accuracy"] * n)
            rows = "".join(f"cat,{'cat' if i < right else 'dog'},img{i:03d}.jpg\n" for i in range(n))
            name = r["arch"] if r.get("seed") is None else f"{r['arch']}-{r['seed']}"
            (folder / f"{name}.csv").write_text("actual,predicted,image\n" + rows)


def table(md: Path) -> list[str]:
    """The Markdown leaderboard's table lines (the lines above it say what the marks mean)."""
    return [line for line in md.read_text().splitlines() if line.startswith("|")]


def cells(line: str) -> list[str]:
    """A Markdown table line's cells, without the padding that aligns the columns."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]


def table_of(records: list[dict]) -> pd.DataFrame:
    """The plot stage's table of `records`, nothing compared (no predictions)."""
    return build_table(records)[0]


def label_boxes(fig):
    """Each annotation's text box in pixels (Annotation.get_window_extent would include the leader line)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for t in fig.axes[0].texts]


def test_make_report_writes_every_output(records, tmp_path):
    summary = make_report(records, tmp_path)

    assert summary == {
        "best_arch": "resnet50",
        "max_acc": 0.95,
        "n_ok": 4,
        "n_failed": 1,
        "n_skipped": 0,
        **NOT_COMPARED,
    }
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
    assert [r["family"] for r in rows] == ["resnet", "convnext", "resnet", "mobilenetv3", "tf"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", ""]
    assert rows[0]["accuracy"] == "0.9500" and rows[0]["params_m"] == "25.60"
    assert rows[3]["params_m"] == ""  # a null cost stays empty, not "None"
    assert rows[-1]["status"] == "failed" and rows[-1]["reason"] == "ValueError: no weights"
    assert rows[-1]["accuracy"] == ""
    assert [r["n_seeds"] for r in rows] == ["1", "1", "1", "1", "0"] and rows[0]["seed_sd"] == ""  # one seed
    assert rows[0]["tied_with_best"] == rows[0]["ci_low"] == ""  # no predictions: nothing compared

    md = table(tmp_path / "leaderboard.md")
    assert cells(md[0]) == list(report.MARKDOWN_COLUMNS.values())  # ten columns; the CSV keeps all
    assert set(md[1]) <= set("|-:") and len(md) == 2 + len(records)
    assert cells(md[2])[:6] == ["1", "resnet50", "ok", "0.9500", "", ""]
    assert "tf_broken" in md[-1] and "ValueError: no weights" in md[-1]
    assert "p_value" not in (tmp_path / "leaderboard.md").read_text()  # p-values stay in the CSV and JSON


def test_exercise_intervals_stand_apart_in_the_png_and_on_the_page(tmp_path):
    make_report([ok("a", 0.9), ok("b", 0.89), ok("c", 0.88)], tmp_path)

    page_xs = [r["x"] for r in json.loads((tmp_path / "accuracy.json").read_text())]
    assert page_xs == figures.dodge(3) == [0.0, -0.1, -0.2]  # one x per architecture by rank
    board = table_of([ok("a", 0.9), ok("b", 0.89), ok("c", 0.88)])
    board["ci_low"], board["ci_high"] = board.accuracy - 0.05, board.accuracy + 0.05  # all three overlap in y
    ax = draw_accuracy(board).axes[0]
    bars, *caps = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert sorted(seg[0, 0] for seg in bars.get_segments()) == [-0.2, -0.1, 0.0]
    ends = sorted((seg[0, 0], seg[1, 0]) for seg in caps[0].get_segments())
    assert all(right < left for (_, right), (left, _) in zip(ends, ends[1:]))  # caps do not touch


def test_leaderboard_markdown_lines_fit_160_columns(tmp_path):
    long_name = "vit_large_patch14_clip_quickgelu_336.openai_ft_in12k_in1k"
    reason = "RuntimeError: " + "CUDA out of memory while allocating a very large tensor " * 5
    make_report([ok(long_name, 0.9), ok("b", 0.8), failed("d", reason)], tmp_path)

    lines = (tmp_path / "leaderboard.md").read_text().splitlines()
    assert max(map(len, lines)) <= report.MAX_LINE
    assert lines[-1].endswith("... |") and "RuntimeError: CUDA out of memory" in lines[-1]


def test_leaderboard_ties_share_a_rank_and_reason_cannot_break_markdown(tmp_path):
    make_report([ok("a", 0.9), ok("b", 0.9), ok("c", 0.8), failed("d", "line one\nbad | pipe")], tmp_path)

    assert [r["rank"] for r in read_csv(tmp_path / "leaderboard.csv")] == ["1", "1", "3", ""]
    last = (tmp_path / "leaderboard.md").read_text().splitlines()[-1]
    assert "line one bad \\| pipe" in last


def test_accuracy_json_lists_every_entry_for_dvc_plots(records, tmp_path):
    make_report(records + [skipped("huge")], tmp_path)

    rows = json.loads((tmp_path / "accuracy.json").read_text())
    assert [(r["arch"], r["status"], r["rank"]) for r in rows] == [
        ("resnet50", "ok", 1),
        ("convnext_tiny", "ok", 2),
        ("resnet18", "ok", 3),
        ("mobilenetv3_large_100", "ok", 4),
        ("tf_broken", "failed", None),
        ("huge", "skipped", None),
    ]
    assert rows[0]["accuracy"] == 0.95 and rows[0]["x"] == 0 and rows[0]["label"] == "resnet50"
    assert rows[0]["group"] == "resnet" and rows[1]["group"] == OTHER and rows[-1]["group"] == ""
    # Each faster one is less accurate: all on the throughput front. convnext_tiny has more GMACs than resnet50
    # and less accuracy; mobilenet has no count.
    assert all(r["front_infer_images_per_s"] for r in rows[:4])
    assert not any(r["front_infer_images_per_s"] for r in rows[4:])
    assert [r["arch"] for r in rows if r["front_gmacs"]] == ["resnet50", "resnet18"]
    assert len({tuple(sorted(r)) for r in rows}) == 1, "DVC reads a JSON list as data points only with equal keys"
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert [(r["row"], r["arch"]) for r in board] == list(enumerate(r["arch"] for r in rows))


def test_page_labels_are_spread_best_on_top(tmp_path):
    recs = [ok(f"a{i}", 0.9) for i in range(5)] + [ok("low", 0.5)]
    make_report(recs, tmp_path)

    rows = json.loads((tmp_path / "accuracy.json").read_text())
    ys = [r["label_y"] for r in rows]
    assert ys == sorted(ys, reverse=True) and ys[0] == pytest.approx(0.9), "ties: the first listed goes highest"
    gap = 0.4 * report.LABEL_GAP_PX / report.CHART_HEIGHT_PX
    assert all(a - b >= gap - 1e-9 for a, b in itertools.pairwise(ys))


def test_accuracy_plot_labels_every_ok_arch_and_marks_the_best(records):
    fig = draw_accuracy(table_of(records))

    labels = [t.get_text() for t in fig.axes[0].texts]
    for r in records:
        hits = [s for s in labels if s.split()[0] == r["arch"]]
        assert len(hits) == (1 if r["status"] == "ok" else 0), r["arch"]
    assert [s for s in labels if "best" in s] == ["resnet50  0.9500  (best)"]
    assert "accuracy" in fig.axes[0].get_title().lower() and "resnet50" in fig.axes[0].get_title()
    assert "(fine_tune, 4 epochs)" in fig.axes[0].get_title()
    assert fig.axes[0].get_ylabel() == "accuracy (valid), 95% interval"
    assert "resnet (2)" in labels  # the one family with two members
    assert [t.get_text() for t in fig.texts] == ["5 entries: 4 ok, 1 failed, 0 skipped\nfailed: tf_broken"]


def test_accuracy_plot_title_names_the_schedule_that_ran(records):
    """Models trained from scratch ran fit_one_cycle: the title says so, not fine_tune."""
    for r in records:
        r["schedule"] = "fit_one_cycle"
    assert "(fit_one_cycle, 4 epochs)" in draw_accuracy(table_of(records)).axes[0].get_title()


def test_all_failed_still_writes_everything(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="stages.plot"):
        summary = make_report([failed("a"), failed("b", "OSError: no file")], tmp_path)

    assert summary == {"best_arch": None, "max_acc": None, "n_ok": 0, "n_failed": 2, "n_skipped": 0, **NOT_COMPARED}
    assert "no architecture succeeded" in caplog.text
    for name in FILES:
        assert (tmp_path / name).is_file()
    assert [r["accuracy"] for r in json.loads((tmp_path / "accuracy.json").read_text())] == [None, None]
    rows = read_csv(tmp_path / "leaderboard.csv")
    assert [(r["arch"], r["rank"], r["reason"]) for r in rows] == [
        ("a", "", "RuntimeError: CUDA out of memory"),
        ("b", "", "OSError: no file"),
    ]


def test_pareto_front_hand_example():
    points = [
        ("A", 1.0, 0.80),
        ("B", 2.0, 0.90),
        ("C", 3.0, 0.85),  # C: B is cheaper and better
        ("D", 4.0, 0.95),
        ("E", 5.0, 0.95),  # E: same accuracy as D, costs more
        ("F", 2.0, 0.70),
    ]  # F: same cost as B, less accurate
    assert pareto_front(points) == ["A", "B", "D"]
    assert pareto_front(list(reversed(points))) == ["A", "B", "D"]
    # a throughput: the more the better, so the front runs from the fastest
    speeds = [(n, 10 - cost, acc) for n, cost, acc in points]
    assert pareto_front(speeds, higher_is_better=True) == ["A", "B", "D"]


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
        assert all(b - a >= gap - 1e-12 for a, b in itertools.pairwise(by_y))
        assert all(lo - 1e-12 <= p <= hi + 1e-12 for p in pos)


def test_twenty_close_accuracies_have_no_overlapping_labels():
    rng = random.Random(1)
    names = [f"{chr(97 + i)}arch_{i:02d}_" + "x" * rng.randint(0, 25) for i in range(20)]  # 20 families
    recs = [ok(n, 0.95 + rng.uniform(0, 0.01)) for n in names]
    recs[3]["accuracy"] = recs[7]["accuracy"]  # an exact tie too

    fig = draw_accuracy(table_of(recs))
    boxes = label_boxes(fig)

    assert len(boxes) == 20  # distinct families: no family labels
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            w = min(a.x1, b.x1) - max(a.x0, b.x0)
            h = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert w <= 0 or h <= 0, "label boxes overlap"
    fig_box = fig.bbox
    for box in boxes:
        assert fig_box.x0 <= box.x0 and box.x1 <= fig_box.x1 and fig_box.y0 <= box.y0 and box.y1 <= fig_box.y1
    # Labels stack in accuracy order (a tie: the first listed above), so leader lines do not cross.
    texts = fig.axes[0].texts[:20]
    order_by_acc = sorted(range(20), key=lambda i: (texts[i].xy[1], -i))
    heights = [boxes[i].y0 for i in order_by_acc]
    assert heights == sorted(heights)


def test_family_is_the_name_prefix_without_the_size():
    cases = {
        "resnet18": "resnet",
        "resnet50d": "resnet",
        "convnext_tiny": "convnext",
        "vit_small_patch16_224": "vit",
        "efficientnet_b0": "efficientnet",
        "resnetv2_50": "resnetv2",
        "mobilenetv3_large_100": "mobilenetv3",
        "res2net50_26w_4s": "res2net",
        "eva02_base_patch14_224": "eva",
        "deit3_small_patch16_224": "deit",
        "regnety_016": "regnety",
        "test_vit": "test",
        "dla34": "dla",
    }
    assert {name: family(name) for name in cases} == cases


def test_split_records_by_status():
    recs = [
        ok("a", 0.8),
        skipped("s"),
        failed("f"),
        ok("b", 0.9),
        failed("t", "time limit after 2 epochs on cuda"),
        {**ok("c", 0.7), "accuracy": None},
        {"arch": "odd", "status": "weird"},
    ]
    kinds = combine_seeds(recs).kind
    good, bad, skip = (list(kinds.index[kinds == kind]) for kind in ("ok", "failed", "skipped"))
    assert good == ["b", "a"]
    assert bad == ["f", "t", "c", "odd"]
    assert skip == ["s"]


def test_family_groups_keeps_the_largest_families_of_two_or_more():
    names = ["vit_a", "vit_b", "vit_c", "resnet18", "resnet34", "convnext_t", "convnext_s", "deit_x", "solo1"]
    # the families of ok rows best first, as in the table
    groups = dict(zip(names, colour_groups([family(n) for n in names], 2)))
    # vit (3) first; resnet and convnext tie at 2, resnet's best is better; deit and solo are single.
    assert {g for g in groups.values()} == {"vit", "resnet", OTHER}
    assert groups["convnext_t"] == OTHER and groups["deit_x"] == OTHER and groups["vit_b"] == "vit"


def zoo_records(n_ok: int, n_failed: int, n_skipped: int, seed: int = 2) -> list[dict]:
    rng = random.Random(seed)
    fams = ["vit", "resnet", "convnext", "efficientnet", "deit", "xcit", "regnety", "eva", "maxvit", "swin", "levit"]
    solo = ["solo" + "".join(chr(97 + int(d)) for d in str(i)) for i in range(n_ok)]  # one-member families
    recs = [
        ok(
            f"{rng.choice(fams + [solo[i]])}_{i}",
            round(rng.uniform(0.6, 0.99), 4),
            rng.uniform(5, 900),
            rng.uniform(1, 600),
        )
        for i in range(n_ok)
    ]
    recs += [failed(f"f_{i}") for i in range(n_failed)] + [skipped(f"s_{i}") for i in range(n_skipped)]
    rng.shuffle(recs)
    return recs


def overlapping(boxes) -> list[tuple[int, int]]:
    return [
        (i, j)
        for i, a in enumerate(boxes)
        for j, b in enumerate(boxes[i + 1 :], i + 1)
        if min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)
    ]


def test_accuracy_plot_at_zoo_scale_labels_the_best_and_the_families_and_counts():
    from imgclf.reporting import figures

    recs = zoo_records(1050, 30, 22)
    board = table_of(recs)
    ok_rows = board.index[board.kind == "ok"]  # best first
    board.loc[ok_rows, "ci_low"] = board.accuracy[ok_rows] - 0.03
    board.loc[ok_rows, "ci_high"] = (board.accuracy[ok_rows] + 0.02).clip(upper=1.0)
    board.loc[ok_rows, "tied_with_best"] = [i < 40 for i in range(len(ok_rows))]
    fig = draw_accuracy(board)
    ax = fig.axes[0]

    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in points) == 1050 + 39 + 1  # every ok point, 39 tied rings, the star
    xs = points[0].get_offsets()[:, 0]  # dodged by rank: the best at 0, each next one further left
    assert xs[0] == 0.0 and min(xs) == -figures.DODGE_WIDTH and len(set(xs)) == 1050
    bars, *caps = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(bars.get_segments()) == 1050 and sorted({seg[0, 0] for seg in bars.get_segments()}) == sorted(set(xs))
    assert len(caps) == 2 and all(len(c.get_segments()) == 1050 for c in caps)
    assert min(seg[0, 1] for seg in bars.get_segments()) < min(r["accuracy"] for r in recs if r["accuracy"])
    arch_labels = [t for t in ax.texts if t.get_horizontalalignment() == "left"]
    family_labels = [t for t in ax.texts if t.get_horizontalalignment() == "right"]
    assert len(arch_labels) == figures.TOP_LABELS and "(best)" in arch_labels[0].get_text()
    assert all(t.get_text().endswith("(tied)") and "] " in t.get_text() for t in arch_labels[1:])
    assert len(family_labels) == MAX_FAMILIES
    assert all(
        t.get_text().split()[0]
        in {"vit", "resnet", "convnext", "efficientnet", "deit", "xcit", "regnety", "eva", "maxvit", "swin", "levit"}
        for t in family_labels
    )
    note = fig.texts[0].get_text()
    assert note.startswith("1,102 entries: 1,050 ok, 30 failed, 22 skipped") and "leaderboard.csv" in note
    boxes = label_boxes(fig)
    assert overlapping(boxes) == []
    assert all(
        fig.bbox.x0 <= b.x0 and b.x1 <= fig.bbox.x1 and fig.bbox.y0 <= b.y0 and b.y1 <= fig.bbox.y1 for b in boxes
    )
    assert fig.get_size_inches()[1] < 8, "the figure's height must not grow with the number of entries"


def test_cost_plot_at_zoo_scale_names_only_the_pareto_front():
    recs = zoo_records(400, 0, 0)
    fig = draw_cost(table_of(recs))

    for ax, key in zip(fig.axes, ["infer_images_per_s", "gmacs"]):
        good = [r for r in recs if r["status"] == "ok"]
        front = pareto_front([(r["arch"], r[key], r["accuracy"]) for r in good], key == "infer_images_per_s")
        assert sorted(t.get_text() for t in ax.texts) == sorted(front)


def write_curves(folder: Path, metric: str, values: list[float], timestamp: bool = True) -> None:
    path = folder / "plots" / "metrics" / f"{metric}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    name = metric.split("/")[-1]
    head = "timestamp\tstep\t" if timestamp else "step\t"
    rows = "".join(("1700000000\t" if timestamp else "") + f"{i}\t{v}\n" for i, v in enumerate(values))
    path.write_text(f"{head}{name}\n{rows}")


def test_combine_curves_one_file_per_metric_with_every_model(tmp_path):
    write_curves(tmp_path / "a", "accuracy", [0.5, 0.7])
    write_curves(tmp_path / "a", "train/loss", [1.0, 0.8], timestamp=False)
    write_curves(tmp_path / "b", "accuracy", [0.6])
    (tmp_path / "failed").mkdir()  # a failed entry's empty curves folder
    write_curves(tmp_path / "stale", "accuracy", [0.99])  # not listed: ignored

    write_curves(tmp_path / "a-7", "accuracy", [0.4])  # a second seed of a: its own line
    entries = [{"arch": "a"}, {"arch": "b"}, {"arch": "failed"}, {"arch": "skipped"}, {"arch": "a", "seed": 7}]
    board = pd.DataFrame(  # the table's columns the curves read: a's colour group, and the legend's accuracies
        {"group": ["fam", "", "", ""], "accuracy": [0.7, 0.6, None, None]}, index=["a", "b", "failed", "skipped"]
    )
    combined = combine_curves(tmp_path, entries, board)

    assert list(combined) == ["accuracy", "train_loss"]
    assert combined["accuracy"] == [
        {"arch": "a", "seed": None, "entry": "a", "group": "fam", "line": "a", "step": 0, "value": 0.5},
        {"arch": "a", "seed": None, "entry": "a", "group": "fam", "line": "a", "step": 1, "value": 0.7},
        {"arch": "b", "seed": None, "entry": "b", "group": "", "line": "b", "step": 0, "value": 0.6},
        {"arch": "a", "seed": 7, "entry": "a-7", "group": "fam", "line": "a", "step": 0, "value": 0.4},
    ]
    assert [r["value"] for r in combined["train_loss"]] == [1.0, 0.8]


def test_curves_past_ten_architectures_colour_the_best_eight_and_grey_the_rest(tmp_path):
    records = [{"arch": f"m{i:02d}", "status": "ok", "accuracy": i / 20} for i in range(12)]
    records += [{"arch": "m11", "seed": 7, "status": "ok", "accuracy": 0.0}]  # m11: mean 0.275, 6th
    records += [{"arch": "broken", "status": "failed"}]
    for r in records:
        write_curves(tmp_path / entry_name(r), "accuracy", [0.5])
    lines = {row["arch"]: row["line"] for row in combine_curves(tmp_path, records, table_of(records))["accuracy"]}
    best = {"m10", "m09", "m08", "m07", "m06", "m05", "m11", "m04"}
    assert lines == {a: (a if a in best else "other") for a in lines} and len(lines) == 13
    few = combine_curves(tmp_path, records[:10], table_of(records[:10]))["accuracy"]
    assert [row["line"] for row in few] == [row["arch"] for row in few]  # up to 10: one colour each


def test_combine_curves_refuses_a_broken_tsv(tmp_path):
    path = tmp_path / "a" / "plots" / "metrics" / "accuracy.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("step\taccuracy\n0\tnot-a-number\n")
    with pytest.raises(PipelineError, match=r"accuracy\.tsv.*dvc repro -f"):
        combine_curves(tmp_path, [{"arch": "a"}], table_of([{"arch": "a"}]))


def test_make_report_writes_curves_and_the_best_confusion(records, tmp_path):
    live, pairs, out = tmp_path / "live", tmp_path / "pairs", tmp_path / "out"
    write_curves(live / "resnet50", "accuracy", [0.9, 0.95])
    write_predictions(pairs, records)

    summary = make_report(records, out, live, pairs)

    assert json.loads((out / "curves" / "accuracy.json").read_text())[1] == {
        "arch": "resnet50",
        "seed": None,
        "entry": "resnet50",
        "group": "resnet",
        "line": "resnet50",
        "step": 1,
        "value": 0.95,
    }
    assert (out / "confusion_best.csv").read_text() == (pairs / "resnet50.csv").read_text()
    # 95, 93, 91 and 89 right of 100 images, nested: 6 images apart at most, all four in the 0.95 set for the best
    assert summary["tied_with_best"] == ["resnet50", "convnext_tiny", "resnet18", "mobilenetv3_large_100"]
    (pairs / "resnet18.csv").unlink()
    with pytest.raises(PipelineError, match=r"no predictions for resnet18 .*dvc repro -f sweep@resnet18"):
        make_report(records, out, live, pairs)


def write_workspace(root: Path, metrics: dict[str, dict], seeds: tuple[int, ...] = (42,)) -> None:
    """params.yaml for archs a and b with `seeds`, and a record `records/sweep/<name>.json` per record (its seed
    set from the name's `-<seed>`)."""
    params = {"sweep": {"archs": ["a", "b"], "seeds": list(seeds)}, "report": {"alpha": 0.05}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    folder = root / "records" / "sweep"
    folder.mkdir(parents=True)
    for name, record in metrics.items():
        seed = int(name.rsplit("-", 1)[1]) if "-" in name else None
        (folder / f"{name}.json").write_text(json.dumps({**record, "seed": seed}))


ARGV = ["--records-dir", "records/sweep", "--out-dir", "plots/sweep", "--summary", "metrics/plot.json"]
FULL_ARGV = ARGV + ["--live-dir", "plots/live/sweep", "--confusion-dir", "plots/confusion/sweep"]


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(plot, "load_params", lambda *a, **k: yaml.safe_load(Path("params.yaml").read_text()))
    return tmp_path


def test_main_reads_listed_archs_and_seeds_only(workspace):
    # "stale" is not in params.yaml, nor is seed 7: they would count if main globbed the folder.
    write_workspace(
        workspace, {"a-42": ok("a", 0.8), "b-42": failed("b"), "stale-42": ok("stale", 0.99), "a-7": ok("a", 0.99)}
    )

    plot.main(ARGV)

    summary = json.loads((workspace / "plots" / "sweep" / "summary.json").read_text())
    assert summary == {"best_arch": "a", "max_acc": 0.8, "n_ok": 1, "n_failed": 1, "n_skipped": 0, **NOT_COMPARED}
    # the DVC metrics: only what a person compares between runs (no interval, level or counts)
    metrics = json.loads((workspace / "metrics" / "plot.json").read_text())
    assert metrics == {"best_arch": "a", "max_acc": 0.8, "n_tied": None, "tied_with_best": None}
    rows = read_csv(workspace / "plots" / "sweep" / "leaderboard.csv")
    assert [(r["arch"], r["n_seeds"]) for r in rows] == [("a", "1"), ("b", "0")]


def test_main_with_curves_and_confusion_compares_and_counts_skipped(workspace):
    write_workspace(workspace, {"a-42": ok("a", 0.8), "b-42": skipped("b")})
    write_curves(workspace / "plots/live/sweep/a-42", "accuracy", [0.7, 0.8])
    write_predictions(workspace / "plots/confusion/sweep", [{**ok("a", 0.8), "seed": 42}], n=10)

    summary = plot.main(FULL_ARGV)

    assert summary == {
        "best_arch": "a",
        "max_acc": 0.8,
        "ci_low": pytest.approx(0.4902, abs=1e-4),  # Wilson, 8 of 10
        "ci_high": pytest.approx(0.9433, abs=1e-4),
        "tied_with_best": ["a"],
        "tied_group": "a",
        "n_tied": 1,
        "alpha": 0.05,
        "n_ok": 1,
        "n_failed": 0,
        "n_skipped": 1,
    }
    out = workspace / "plots/sweep"
    curve = json.loads((out / "curves/accuracy.json").read_text())
    assert [(r["arch"], r["seed"], r["entry"]) for r in curve] == [("a", 42, "a-42")] * 2
    assert (out / "confusion_best.csv").read_text() == (workspace / "plots/confusion/sweep/a-42.csv").read_text()
    rows = read_csv(out / "leaderboard.csv")
    assert [(r["arch"], r["status"], r["reason"]) for r in rows][-1] == ("b", "skipped", skipped("b")["reason"])
    assert (rows[0]["tied_with_best"], rows[0]["ci_low"], rows[0]["ci_high"]) == ("yes", "0.4902", "0.9433")


def test_the_confidence_set_for_the_best_shows_in_every_output(workspace):
    """a and b 2 images apart of 100 are both in the set; c, 40 images behind, is out: plot.json lists the set and
    its size, and the leaderboard, the page's data and the figure's title mark the same set."""
    metrics = {"a-42": ok("a", 0.9), "b-42": ok("b", 0.88), "c-42": ok("c", 0.5)}
    write_workspace(workspace, metrics)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    (workspace / "params.yaml").write_text(
        yaml.safe_dump({**params, "sweep": {"archs": ["a", "b", "c"], "seeds": [42]}})
    )
    pairs = workspace / "plots/confusion/sweep"
    write_predictions(pairs, [{**r, "seed": 42} for r in metrics.values()])
    (workspace / "plots/live/sweep").mkdir(parents=True)

    summary = plot.main(FULL_ARGV)

    assert (summary["tied_with_best"], summary["n_tied"], summary["tied_group"]) == (["a", "b"], 2, "a, b")
    assert json.loads((workspace / "metrics/plot.json").read_text())["tied_with_best"] == ["a", "b"]
    out = workspace / "plots/sweep"
    assert [(r["arch"], r["tied_with_best"]) for r in read_csv(out / "leaderboard.csv")] == [
        ("a", "yes"),
        ("b", "yes"),
        ("c", "no"),
    ]
    assert [(r["arch"], r["tied"]) for r in json.loads((out / "accuracy.json").read_text())] == [
        ("a", True),
        ("b", True),
        ("c", False),
    ]
    assert [r["tied_with_best"] for r in json.loads((out / "leaderboard.json").read_text())] == ["yes", "yes", "no"]
    md = " ".join((out / "leaderboard.md").read_text().split())  # the intro is wrapped to 160 columns
    assert md.startswith("**2 of 3 tied with the best (the 0.95 confidence set for the best): a, b")
    assert "for these trained models on images like these; with one seed per architecture it leaves seed" in md
    board, ties = build_table([{**r, "seed": 42} for r in metrics.values()], pairs, 0.05)
    title = draw_accuracy(board, ties).axes[0].get_title()
    assert "red: 2 of 3 tied with the best (in its 0.95 confidence set: Mogstad et al. 2024" in title


def test_main_missing_metrics_names_the_entry(workspace):
    write_workspace(workspace, {"a-42": ok("a", 0.8)})

    with pytest.raises(PipelineError, match=r"no record of b-42 .*dvc repro"):
        plot.main(ARGV)
    assert not (workspace / "metrics" / "plot.json").exists()


def test_main_rejects_a_file_holding_another_entry(workspace):
    write_workspace(workspace, {"a-42": ok("a", 0.8), "b-42": ok("not_b", 0.7)})
    with pytest.raises(PipelineError, match=r"b-42\.json does not hold the record of b-42"):
        plot.main(ARGV)

    (workspace / "records/sweep/b-42.json").write_text(json.dumps({**ok("b", 0.7), "seed": 7}))
    with pytest.raises(PipelineError, match=r"b-42\.json does not hold the record of b-42"):
        plot.main(ARGV)
