"""Intervals and ties on hand-made predictions: the numbers (Wilson, McNemar's exact test, Holm), the pairing of
entries image by image, seeds, and what the leaderboard and the summary say."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from imgclf.common import PipelineError
from imgclf.reporting.compare import whole
from imgclf.reporting.report import make_report
from imgclf.reporting.stats import discordant, holm, mcnemar_exact, mcnemar_sample_size, wilson_interval
from imgclf.reporting.table import combine_seeds

IMAGES = [f"class_{i % 5}/img{i:03d}.jpg" for i in range(300)]


def record(arch: str, correct: list[bool], seed: int = 42, status: str = "ok") -> dict:
    """A sweep entry's metrics record whose accuracy is that of `correct`."""
    acc = sum(correct) / len(correct) if status == "ok" else None
    return {
        "arch": arch,
        "seed": seed,
        "status": status,
        "reason": None if status == "ok" else "RuntimeError: boom",
        "accuracy": acc,
        "error_rate": None if acc is None else 1 - acc,
        "n_valid": len(correct),
        "epochs": 4,
    }


def write_entry(folder: Path, arch: str, correct: list[bool], seed: int = 42, images: list[str] = IMAGES) -> dict:
    """The predictions file of entry <arch>-<seed> (right where `correct`), as the sweep stage writes it; returns
    its metrics record."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{arch}-{seed}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["actual", "predicted", "image"])
        for image, right in zip(images, correct):
            label = image.split("/")[0]
            w.writerow([label, label if right else "other", image])
    return record(arch, correct, seed)


def right_except(wrong: set[int], n: int = 300) -> list[bool]:
    return [i not in wrong for i in range(n)]


def board(out: Path) -> dict[str, dict]:
    with open(out / "leaderboard.csv", newline="") as f:
        return {r["arch"]: r for r in csv.DictReader(f)}


def test_wilson_interval_of_270_of_300_is_the_reference():
    lo, hi = wilson_interval(270, 300)
    assert (round(lo, 3), round(hi, 3)) == (0.861, 0.929)
    # the Wilson score interval's closed form, z = 1.959964 (the normal's 97.5% point)
    z, n, p = 1.959964, 300, 0.9
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (lo, hi) == pytest.approx((centre - half, centre + half), abs=1e-6)


def test_mcnemar_exact_and_holm_by_hand():
    assert mcnemar_exact(3, 0) == pytest.approx(2 * 0.5**3)  # 0.25
    assert mcnemar_exact(40, 0) == pytest.approx(2 * 0.5**40)
    assert mcnemar_exact(9, 1) == pytest.approx(2 * 11 / 1024)  # P(X <= 1) + P(X >= 9), X ~ Bin(10, 1/2)
    assert mcnemar_exact(0, 0) == 1.0  # the same predictions on every image
    assert discordant([1, 1, 0, 0.5], [1, 0, 1, 0]) == (2, 1)
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> non-decreasing: 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def test_two_entries_that_differ_on_3_of_300_images_are_tied(tmp_path):
    preds = tmp_path / "pairs"
    a = write_entry(preds, "a", right_except(set(range(30))))  # 270 / 300
    b = write_entry(preds, "b", right_except(set(range(33))))  # the same, and 3 more wrong: 267 / 300

    summary = make_report([b, a], tmp_path / "out", confusion_dir=preds)

    assert summary["best_arch"] == "a" and summary["tied_with_best"] == ["a", "b"] and summary["n_tied"] == 2
    assert summary["tied_group"] == "a, b"
    rows = board(tmp_path / "out")
    assert (rows["a"]["ci_low"], rows["a"]["ci_high"]) == ("0.8608", "0.9291")
    assert rows["b"]["p_value"] == "0.25" and rows["b"]["p_holm"] == "0.25"  # one comparison: Holm changes nothing
    assert rows["a"]["tied_with_best"] == rows["b"]["tied_with_best"] == "yes"
    md = " ".join((tmp_path / "out/leaderboard.md").read_text().split())  # the intro is wrapped to 160 columns
    assert "2 of 2 tied with the best (the 0.95 confidence set for the best): a, b (Mogstad, Romano, Shaikh" in md
    assert "1,000 paired bootstrap resamples of the 300 validation images)" in md
    assert "with probability at least 0.95, for these trained models on images like these; with one seed" in md
    # 3 of 300 images favour a, none b: Connor's n for p10 = 0.01, p01 = 0 (783 by hand), beside the 300 there are
    assert mcnemar_sample_size(3 / 300, 0) == 783
    assert "Images needed to tell the best from the runner-up: about 783 (McNemar's test at 0.05 with 80% power" in md
    assert "the validation set has 300." in md and "p_holm" not in md


def test_two_entries_that_differ_on_40_of_300_images_one_way_are_not_tied(tmp_path):
    preds = tmp_path / "pairs"
    a = write_entry(preds, "a", right_except(set(range(20))))  # 280 / 300
    b = write_entry(preds, "b", right_except(set(range(60))))  # 40 more wrong, all where a is right

    summary = make_report([a, b], tmp_path / "out", confusion_dir=preds)

    assert summary["tied_with_best"] == ["a"] and summary["n_tied"] == 1
    rows = board(tmp_path / "out")
    assert float(rows["b"]["p_value"]) == pytest.approx(2 * 0.5**40, rel=1e-2)
    assert rows["b"]["tied_with_best"] == "no" and rows["a"]["tied_with_best"] == "yes"
    page = json.loads((tmp_path / "out/accuracy.json").read_text())
    assert [(r["arch"], r["tied"]) for r in page] == [("a", True), ("b", False)]
    assert page[0]["ci_low"] == pytest.approx(wilson_interval(280, 300)[0])


def test_the_paired_test_pairs_images_by_name_not_by_row(tmp_path):
    """Two entries with the same mistakes listed in different orders are the same predictions: p = 1."""
    preds = tmp_path / "pairs"
    correct = right_except(set(range(40)))
    a = write_entry(preds, "a", correct)
    b = write_entry(preds, "b", correct[::-1], images=IMAGES[::-1])

    make_report([a, b], tmp_path / "out", confusion_dir=preds)

    assert board(tmp_path / "out")["b"]["p_value"] == "1"


def test_the_set_decides_the_tie_and_the_holm_p_values_only_describe(tmp_path):
    """b alone against the best: McNemar p = 0.021 (9 images for the best, 1 for b), and out of the set. With two
    more entries that predict exactly as the best, Holm multiplies the smallest of three p-values by 3 (0.064, which
    the old rule called tied), but the copies add no noise to the set's bootstrap: b stays out."""
    preds = tmp_path / "pairs"
    best = right_except(set(range(10, 20)))  # 290 right
    b = right_except(set(range(9)) | set(range(11, 20)))  # 9 more wrong (0-8), 1 fewer (10)
    assert discordant([float(x) for x in best], [float(x) for x in b]) == (9, 1)

    alone = make_report(
        [write_entry(preds, "best", best), write_entry(preds, "b", b)], tmp_path / "alone", confusion_dir=preds
    )
    assert alone["tied_with_best"] == ["best"]
    records = [write_entry(preds, arch, best) for arch in ("best", "c", "d")] + [write_entry(preds, "b", b)]
    summary = make_report(records, tmp_path / "holm", confusion_dir=preds)

    rows = board(tmp_path / "holm")
    assert rows["b"]["p_value"] == "0.0215" and rows["b"]["p_holm"] == "0.0645"
    assert summary["tied_with_best"] == ["best", "c", "d"] and rows["b"]["tied_with_best"] == "no"


def test_seeds_mean_spread_interval_over_images_and_a_failed_seed(tmp_path):
    preds = tmp_path / "pairs"
    records = [
        write_entry(preds, "a", right_except(set(range(30))), seed=42),  # 270
        write_entry(preds, "a", right_except(set(range(24))), seed=7),  # 276
        write_entry(preds, "b", right_except(set(range(60))), seed=42),  # 240
        write_entry(preds, "b", right_except(set(range(67))), seed=7),  # 233
        write_entry(preds, "c", right_except(set(range(31))), seed=42),  # 269
        record("c", [], seed=7, status="failed"),
    ]
    summary = make_report(records, tmp_path / "out", confusion_dir=preds)

    rows = board(tmp_path / "out")
    assert list(rows) == ["a", "c", "b"]
    assert (rows["a"]["accuracy"], rows["a"]["n_seeds"], rows["a"]["seed_sd"]) == ("0.9100", "2", "0.0141")
    # the images are the sample: the mean count 273 of 300, not 546 of 600 (which would be narrower)
    assert (float(rows["a"]["ci_low"]), float(rows["a"]["ci_high"])) == pytest.approx(
        wilson_interval(273, 300), abs=1e-4
    )
    assert wilson_interval(546, 600)[0] > float(rows["a"]["ci_low"])
    # b: 236.5 right on average (240 and 233), rounded up to 237, not to the even neighbour as round() would
    assert (float(rows["b"]["ci_low"]), float(rows["b"]["ci_high"])) == pytest.approx(
        wilson_interval(237, 300), abs=1e-4
    )
    assert whole(272.5) == 273 and whole(126.5) == 127 and whole(125.5) == 126 and whole(125.4999) == 125
    # c: one seed finished; the failed one is named, and c is compared on the seed it has
    assert (rows["c"]["n_seeds"], rows["c"]["seed_sd"]) == ("1", "")
    assert rows["c"]["reason"] == "seed 7 failed: RuntimeError: boom"
    # a's share per image: 1 on images 30+, 0.5 on 24-29, 0 below; c is right from 31 up: a better on 6 + 1 images
    assert rows["c"]["p_value"] == f"{mcnemar_exact(7, 0):.3g}" and rows["c"]["tied_with_best"] == "no"
    assert rows["b"]["tied_with_best"] == "no" and summary["tied_with_best"] == ["a"]


def test_a_large_tied_group_is_named_in_full_in_the_list_and_shortened_in_the_text(tmp_path):
    preds = tmp_path / "pairs"
    records = [write_entry(preds, f"arch{i:02d}", right_except(set(range(30)))) for i in range(25)]
    summary = make_report(records, tmp_path / "out", confusion_dir=preds)
    assert summary["tied_with_best"] == [f"arch{i:02d}" for i in range(25)] and summary["n_tied"] == 25
    assert summary["tied_group"] == ", ".join(f"arch{i:02d}" for i in range(20)) + ", ... (25 in all)"


def test_combine_seeds_keeps_an_architecture_with_no_finished_seed_as_it_is():
    failed = record("x", [], seed=42, status="failed")
    board = combine_seeds([failed, record("x", [], seed=7, status="failed")])
    assert list(board.index) == ["x"]
    row = board.loc["x"]
    assert row["status"] == "failed" and row["n_seeds"] == 0 and row["reason"] == "RuntimeError: boom"


def test_entries_on_different_images_are_refused(tmp_path):
    preds = tmp_path / "pairs"
    a = write_entry(preds, "a", right_except(set()))
    b = write_entry(preds, "b", right_except(set()), images=IMAGES[:299] + ["elsewhere.jpg"])

    with pytest.raises(PipelineError, match=r"not all evaluated on the same validation images.*b-42 \(1 images"):
        make_report([a, b], tmp_path / "out", confusion_dir=preds)


def test_predictions_without_image_names_or_from_another_run_are_refused(tmp_path):
    preds = tmp_path / "pairs"
    a = write_entry(preds, "a", right_except(set()))
    (preds / "b-42.csv").write_text("actual,predicted\ncat,cat\n")  # written before the image column existed
    b = record("b", right_except(set()))
    with pytest.raises(PipelineError, match=r"b-42\.csv has columns .*image.*dvc repro -f sweep@b-42"):
        make_report([a, b], tmp_path / "out", confusion_dir=preds)

    write_entry(preds, "b", right_except(set(range(10))))  # 290 right, but its metrics say 300
    with pytest.raises(PipelineError, match=r"b-42: its predictions give accuracy 0\.9667 and its metrics 1\.0000"):
        make_report([a, b], tmp_path / "out", confusion_dir=preds)
