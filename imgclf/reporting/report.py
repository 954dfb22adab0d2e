"""Compare the sweep: the figures, the leaderboard of every entry, and the data files DVC's plots page draws
(the exercise plot, accuracy against cost, the leaderboard, one per-epoch chart per metric, the best model's
confusion matrix)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from imgclf.common import PipelineError, atomic_write_bytes, atomic_write_text, csv_text, write_json
from imgclf.reporting.curves import combine_curves
from imgclf.reporting.figures import (
    COSTS,
    MAX_FAMILIES,
    draw_accuracy,
    draw_cost,
    labelled,
    pareto_front,
    render_png,
    spread_labels,
)
from imgclf.reporting.records import family, family_groups, number, split_records

log = logging.getLogger(__name__)

COLUMNS = [
    "rank",
    "arch",
    "family",
    "status",
    "accuracy",
    "error_rate",
    "valid_loss",
    "params_m",
    "train_time_s",
    "images_per_s",
    "peak_memory_mb",
    "device",
    "precision",
    "reason",
]
# Decimals per numeric column, shared by the CSV, the Markdown table and the page's table.
DECIMALS = {
    "accuracy": 4,
    "error_rate": 4,
    "valid_loss": 4,
    "params_m": 2,
    "train_time_s": 1,
    "images_per_s": 1,
    "peak_memory_mb": 0,
}
# The page's exercise chart (plot_templates/exercise.json): its plot height in pixels and the room one label
# takes, so the labels computed here do not overlap there.
CHART_HEIGHT_PX = 560
LABEL_GAP_PX = 13


def leaderboard_rows(records: list[dict]) -> list[dict[str, str]]:
    """Leaderboard rows as formatted strings: ok entries by accuracy (ties share a rank), then the failed ones,
    then the skipped ones, both unranked with their reason."""
    ok, failed, skipped = split_records(records)
    rows = []
    for i, r in enumerate(ok + failed + skipped):
        row = {"family": family(str(r.get("arch")))}
        for col in COLUMNS[1:]:
            if col == "family":
                continue
            value = r.get(col)
            if col in DECIMALS:
                num = number(value)
                value = "" if num is None else f"{num:.{DECIMALS[col]}f}"
            row[col] = "" if value is None else str(value)
        if i < len(ok):  # competition ranking: 1, 2, 2, 4
            same = i > 0 and ok[i - 1]["accuracy"] == r["accuracy"]
            row["rank"] = rows[-1]["rank"] if same else str(i + 1)
        else:
            row["rank"] = ""
        rows.append({col: row[col] for col in COLUMNS})
    return rows


def _markdown_text(rows: list[dict[str, str]]) -> str:
    def cell(col: str, value: str) -> str:
        value = " ".join(value.split()).replace("|", "\\|")  # a traceback line must not break the table
        return value[:117] + "..." if col == "reason" and len(value) > 120 else value

    numeric = set(DECIMALS) | {"rank"}
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if c in numeric else "---" for c in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell(c, row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def exercise_rows(records: list[dict]) -> list[dict]:
    """One row per entry for the page's exercise and cost charts: ok entries best first (with a name label and
    its height for the best ones, spread like the PNG's labels, and whether it is on each cost's Pareto front),
    then failed and skipped (no accuracy). Every row has the same keys: DVC reads a JSON list as data points
    only when they do."""
    ok, failed, skipped = split_records(records)
    groups = family_groups(ok, MAX_FAMILIES)
    named = {r["arch"] for r in labelled(ok)}
    accs = [r["accuracy"] for r in ok if r["arch"] in named]
    lo, hi = (min(r["accuracy"] for r in ok), max(r["accuracy"] for r in ok)) if ok else (0.0, 1.0)
    gap = max(hi - lo, 1e-3) * LABEL_GAP_PX / CHART_HEIGHT_PX
    label_y = dict(zip([r["arch"] for r in ok if r["arch"] in named], spread_labels(accs, gap, lo, hi)))
    fronts = {
        key: set(pareto_front([(r["arch"], c, r["accuracy"]) for r in ok if (c := number(r.get(key))) is not None]))
        for key, _ in COSTS
    }
    rows = []
    for rank, r in enumerate(ok + failed + skipped, start=1):
        is_ok = rank <= len(ok)
        rows.append(
            {
                "rank": rank if is_ok else None,
                "arch": r["arch"],
                "family": family(r["arch"]),
                "group": groups.get(r["arch"], ""),
                "status": str(r.get("status")),
                "x": 0,
                "accuracy": r["accuracy"] if is_ok else None,
                "label": r["arch"] if r["arch"] in label_y else "",
                "label_y": label_y.get(r["arch"]),
                "train_time_s": number(r.get("train_time_s")),
                "params_m": number(r.get("params_m")),
                **{f"front_{key}": r["arch"] in front for key, front in fronts.items()},
            }
        )
    return rows


def make_report(
    records: list[dict], out_dir: Path, live_dir: Path | None = None, confusion_dir: Path | None = None
) -> dict:
    """Write accuracy.png, cost.png, leaderboard.csv/.md/.json and accuracy.json to `out_dir`; with `live_dir`
    (DVCLive folders per arch) curves/<metric>.json; with `confusion_dir` (<arch>.csv pairs) confusion_best.csv.
    Return the summary {"best_arch", "max_acc", "n_ok", "n_failed", "n_skipped"}."""
    out_dir = Path(out_dir)
    ok, failed, skipped = split_records(records)
    for r in failed:
        if r.get("status") == "ok":
            log.warning("%s is marked ok but has no accuracy: listed with the failed ones", r.get("arch"))
    if not ok:
        log.warning(
            "no architecture succeeded (%d failed, %d skipped): the plots are empty; see leaderboard.md for why",
            len(failed),
            len(skipped),
        )
    atomic_write_bytes(out_dir / "accuracy.png", render_png(draw_accuracy(records)))
    atomic_write_bytes(out_dir / "cost.png", render_png(draw_cost(records)))
    rows = leaderboard_rows(records)
    atomic_write_text(out_dir / "leaderboard.csv", csv_text(rows, COLUMNS))
    atomic_write_text(out_dir / "leaderboard.md", _markdown_text(rows))
    write_json(out_dir / "leaderboard.json", [{"row": i, **row} for i, row in enumerate(rows)])
    write_json(out_dir / "accuracy.json", exercise_rows(records))
    if live_dir is not None:
        groups = family_groups(ok, MAX_FAMILIES)
        for metric, curve in combine_curves(live_dir, [str(r.get("arch")) for r in records], groups).items():
            write_json(out_dir / "curves" / f"{metric}.json", curve)
    if confusion_dir is not None:
        _copy_best_confusion(ok, Path(confusion_dir), out_dir / "confusion_best.csv")
    summary = {
        "best_arch": ok[0]["arch"] if ok else None,
        "max_acc": ok[0]["accuracy"] if ok else None,
        "n_ok": len(ok),
        "n_failed": len(failed),
        "n_skipped": len(skipped),
    }
    log.info(
        "%d ok, %d failed, %d skipped; best: %s (%s)",
        len(ok),
        len(failed),
        len(skipped),
        summary["best_arch"],
        summary["max_acc"],
    )
    return summary


def _copy_best_confusion(ok: list[dict], confusion_dir: Path, dest: Path) -> None:
    """The best model's (actual, predicted) pairs, the only confusion matrix the page shows for the sweep."""
    source = confusion_dir / f"{ok[0]['arch']}.csv" if ok else None
    if source is None or not source.is_file():
        if source is not None:
            log.warning("no confusion pairs for the best architecture (%s): confusion_best.csv is empty", source)
        atomic_write_text(dest, "actual,predicted\n")
        return
    atomic_write_bytes(dest, source.read_bytes())


def read_metrics(metrics_dir: Path, archs: list[str]) -> list[dict]:
    """Read `<metrics_dir>/<arch>.json` for each listed arch, in order; other files there are stale and ignored."""
    records = []
    for arch in archs:
        path = Path(metrics_dir) / f"{arch}.json"
        if not path.is_file():
            raise PipelineError(f"no metrics for architecture {arch!r} ({path}): run `dvc repro` to train it first.")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise PipelineError(f"{path} is not valid JSON ({e}): delete it and run `dvc repro`.") from None
        if not isinstance(record, dict) or record.get("arch") != arch:
            raise PipelineError(f"{path} does not hold the metrics of {arch!r}: delete it and run `dvc repro`.")
        records.append(record)
    return records
