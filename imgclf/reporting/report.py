"""Compare the sweep: the figures, the leaderboard of every architecture (its accuracy over seeds with a 95%
interval, and whether it is in the confidence set for the best), and the data files DVC's plots page draws (the
exercise plot, accuracy against cost, the leaderboard, one per-epoch chart per metric, the best model's
confusion matrix)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from imgclf.common import PipelineError, atomic_write_bytes, atomic_write_text, csv_text, write_json
from imgclf.reporting.compare import (
    BOOTSTRAP_REPS,
    METHOD,
    Ties,
    combine_seeds,
    compare_with_best,
    guarantee,
    read_predictions,
)
from imgclf.reporting.curves import combine_curves
from imgclf.reporting.figures import (
    COSTS,
    HIGHER_IS_BETTER,
    MAX_FAMILIES,
    draw_accuracy,
    draw_cost,
    label_text,
    labelled,
    pareto_front,
    render_png,
    spread_labels,
)
from imgclf.reporting.records import entry_name, family, family_groups, is_ok, number, split_records

log = logging.getLogger(__name__)

COLUMNS = [
    "rank",
    "arch",
    "family",
    "status",
    "tied_with_best",
    "accuracy",
    "ci_low",
    "ci_high",
    "seed_sd",
    "n_seeds",
    "p_value",
    "p_holm",
    "error_rate",
    "valid_loss",
    "params_m",
    "train_time_s",
    "images_per_s",
    "peak_memory_mb",
    "batch_size",  # the batch it trained at: halved after an out-of-memory error
    "gmacs",
    "infer_images_per_s",  # at a fixed batch (infer_batch), on its own device, at the precision it trained in
    "infer_latency_ms",  # batch 1: the median, and the 90th percentile
    "infer_latency_p90_ms",
    "infer_status",  # measured, or not measured (shared) while workers shared the device
    "device",
    "precision",
    "reason",
]
# Decimals per numeric column, shared by the CSV, the Markdown table and the page's table.
DECIMALS = {
    "accuracy": 4,
    "ci_low": 4,
    "ci_high": 4,
    "seed_sd": 4,
    "error_rate": 4,
    "valid_loss": 4,
    "params_m": 2,
    "train_time_s": 1,
    "images_per_s": 1,
    "peak_memory_mb": 0,
    "batch_size": 0,
    "gmacs": 3,
    "infer_images_per_s": 1,
    "infer_latency_ms": 2,
    "infer_latency_p90_ms": 2,
}
TOOLTIP_NUMBERS = ("train_time_s", "params_m", "infer_latency_ms")  # the page's tooltips, beside the cost axes
P_COLUMNS = ("p_value", "p_holm")  # 3 significant digits: a p-value can be 1e-12
# The page's exercise chart (plot_templates/exercise.json): its plot height in pixels and the room one label
# takes, so the labels computed here do not overlap there.
CHART_HEIGHT_PX = 560
LABEL_GAP_PX = 13


def _cell(col: str, value: object) -> str:
    """One leaderboard value as text: fixed decimals, p-values to 3 significant digits, yes/no for the tie mark,
    '' for none."""
    if col == "tied_with_best":
        return "" if value is None else ("yes" if value else "no")
    if col in DECIMALS or col in P_COLUMNS:
        num = number(value)
        return "" if num is None else f"{num:.3g}" if col in P_COLUMNS else f"{num:.{DECIMALS[col]}f}"
    return "" if value is None else str(value)


def leaderboard_rows(archs: list[dict]) -> list[dict[str, str]]:
    """Leaderboard rows as formatted strings, one per architecture (`combine_seeds` records, compared): ok ones by
    accuracy (equal accuracies share a rank), then the failed ones, then the skipped ones, both unranked with
    their reason."""
    ok, failed, skipped = split_records(archs)
    rows = []
    for i, r in enumerate(ok + failed + skipped):
        row = {col: _cell(col, r.get(col)) for col in COLUMNS[1:]}
        row["family"] = family(str(r.get("arch")))
        if i < len(ok):  # competition ranking: 1, 2, 2, 4
            same = i > 0 and ok[i - 1]["accuracy"] == r["accuracy"]
            row["rank"] = rows[-1]["rank"] if same else str(i + 1)
        else:
            row["rank"] = ""
        rows.append({col: row[col] for col in COLUMNS})
    return rows


def tie_sentence(ok: list[dict], ties: Ties) -> str:
    """One sentence naming the tied group and how it was found, for the log, the Markdown and the figure."""
    if not ok:
        return "no architecture succeeded"
    best = ok[0]
    if ties.n_images is None:
        return f"highest: {best['arch']} ({best['accuracy']:.4f}); not compared (no per-image predictions)"
    return (
        f"{len(ties.tied)} of {len(ok)} tied with the best (the {1 - ties.alpha:g} confidence set for the best): "
        f"{tied_names(ties.tied)} "
        f"({METHOD}; {BOOTSTRAP_REPS:,} paired bootstrap resamples of the {ties.n_images} validation images)"
    )


# the summary's keys that are DVC metrics (metrics/plot.json); the rest is in plots/sweep/summary.json
PLOT_METRICS = ("best_arch", "max_acc", "n_tied", "tied_with_best")
MAX_NAMED = 20  # tied architectures named in the log line, the Markdown and `tied_group`; all are in the tables


def tied_names(tied: list[str]) -> str:
    """The tied group as text: every name up to MAX_NAMED, then the first ones and the count."""
    more = f", ... ({len(tied)} in all)" if len(tied) > MAX_NAMED else ""
    return ", ".join(tied[:MAX_NAMED]) + more


def _markdown_text(rows: list[dict[str, str]], intro: str) -> str:
    def cell(col: str, value: str) -> str:
        value = " ".join(value.split()).replace("|", "\\|")  # a traceback line must not break the table
        return value[:117] + "..." if col == "reason" and len(value) > 120 else value

    numeric = set(DECIMALS) | set(P_COLUMNS) | {"rank", "n_seeds"}
    lines = [
        intro,
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if c in numeric else "---" for c in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell(c, row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _markdown_intro(ok: list[dict], ties: Ties) -> str:
    """The lines above the Markdown table: the tied group, and how to read the intervals and marks."""
    several = any((r.get("n_seeds") or 0) > 1 for r in ok)
    compared = ties.n_images is not None
    return (
        f"**{tie_sentence(ok, ties)}.**"
        + (f" The set {guarantee(ties)}.\n\n" if compared else "\n\n")
        + ("accuracy: the mean over seeds, seed_sd: their spread; " if several else "")
        + "ci_low-ci_high: the accuracy's 95% Wilson interval over the validation images; tied_with_best: yes where "
        "it is in the confidence set for the best; p_value (McNemar's exact test against the highest accuracy) and "
        "p_holm (Holm-adjusted over those comparisons) are descriptive only: the best was picked on the same "
        "images, so they do not decide the tie."
    )


def exercise_rows(archs: list[dict]) -> list[dict]:
    """One row per architecture for the page's exercise and cost charts: ok ones best first (with a name label
    and its height for the best ones, spread like the PNG's labels, its interval and tie mark, and whether it is
    on each cost's Pareto front), then failed and skipped (no accuracy). Every row has the same keys: DVC reads a
    JSON list as data points only when they do."""
    ok, failed, skipped = split_records(archs)
    groups = family_groups(ok, MAX_FAMILIES)
    named = {r["arch"] for r in labelled(ok)}
    accs = [r["accuracy"] for r in ok if r["arch"] in named]
    lo, hi = (min(r["accuracy"] for r in ok), max(r["accuracy"] for r in ok)) if ok else (0.0, 1.0)
    gap = max(hi - lo, 1e-3) * LABEL_GAP_PX / CHART_HEIGHT_PX
    label_y = dict(zip([r["arch"] for r in ok if r["arch"] in named], spread_labels(accs, gap, lo, hi)))
    fronts = {  # each cost's front, from the best cost on: the page draws its steps in this order
        key: pareto_front(
            [(r["arch"], c, r["accuracy"]) for r in ok if (c := number(r.get(key))) is not None],
            key in HIGHER_IS_BETTER,
        )
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
                "ci_low": r.get("ci_low") if is_ok else None,
                "ci_high": r.get("ci_high") if is_ok else None,
                "tied": r.get("tied_with_best") if is_ok else None,
                "p_holm": r.get("p_holm") if is_ok else None,
                "n_seeds": r.get("n_seeds", 0),
                "label": r["arch"] if r["arch"] in label_y else "",
                "label_text": label_text(r, best=rank == 1) if r["arch"] in label_y else "",
                "label_y": label_y.get(r["arch"]),
                **{key: number(r.get(key)) for key in (*TOOLTIP_NUMBERS, *(k for k, _ in COSTS))},
                **{f"front_{key}": r["arch"] in front for key, front in fronts.items()},
                **{
                    f"front_order_{key}": front.index(r["arch"]) if r["arch"] in front else None
                    for key, front in fronts.items()
                },
            }
        )
    return rows


def _position(name: str, front: list[str]) -> int | None:
    return front.index(name) if name in front else None


def make_report(
    records: list[dict],
    out_dir: Path,
    live_dir: Path | None = None,
    confusion_dir: Path | None = None,
    alpha: float = 0.05,
) -> dict:
    """From the sweep entries' records (one per architecture and seed), write accuracy.png, cost.png,
    leaderboard.csv/.md/.json and accuracy.json to `out_dir` (one row per architecture); with `live_dir` (DVCLive
    folders per entry) curves/<metric>.json; with `confusion_dir` (each entry's <arch>-<seed>.csv predictions)
    the intervals and the confidence set for the best at level 1 - `alpha`, and confusion_best.csv.
    Return the summary: the best (highest accuracy), its interval, the set (the architectures tied with it), the
    counts."""
    out_dir = Path(out_dir)
    for r in records:
        if r.get("status") == "ok" and not is_ok(r):
            log.warning("%s is marked ok but has no accuracy: listed with the failed ones", entry_name(r))
    archs = combine_seeds(records)
    ok, failed, skipped = split_records(archs)
    if not ok:
        log.warning(
            "no architecture succeeded (%d failed, %d skipped): the plots are empty; see leaderboard.md for why",
            len(failed),
            len(skipped),
        )
    predictions = None
    if confusion_dir is not None:
        predictions = {e: read_predictions(Path(confusion_dir) / f"{e}.csv", e) for r in ok for e in r["entries"]}
    ties = compare_with_best(ok, predictions, alpha)
    note = tie_sentence(ok, ties)
    atomic_write_bytes(out_dir / "accuracy.png", render_png(draw_accuracy(archs, ties)))
    atomic_write_bytes(out_dir / "cost.png", render_png(draw_cost(archs)))
    rows = leaderboard_rows(archs)
    atomic_write_text(out_dir / "leaderboard.csv", csv_text(rows, COLUMNS))
    atomic_write_text(out_dir / "leaderboard.md", _markdown_text(rows, _markdown_intro(ok, ties)))
    write_json(out_dir / "leaderboard.json", [{"row": i, **row} for i, row in enumerate(rows)])
    write_json(out_dir / "accuracy.json", [{**row, "alpha": alpha} for row in exercise_rows(archs)])
    if live_dir is not None:
        groups = family_groups(ok, MAX_FAMILIES)
        for metric, curve in combine_curves(live_dir, records, groups).items():
            write_json(out_dir / "curves" / f"{metric}.json", curve)
    if confusion_dir is not None:
        _copy_best_confusion(ok, Path(confusion_dir), out_dir / "confusion_best.csv")
    best = ok[0] if ok else {}
    compared = ties.n_images is not None
    summary = {
        "best_arch": best.get("arch"),
        "max_acc": best.get("accuracy"),
        "ci_low": _rounded(best.get("ci_low")),
        "ci_high": _rounded(best.get("ci_high")),
        "tied_with_best": ties.tied if compared else None,  # None: nothing compared (no predictions)
        "tied_group": tied_names(ties.tied) if compared else None,  # the same as text, for a reader of the summary
        "n_tied": len(ties.tied) if compared else None,
        "alpha": alpha,
        "n_ok": len(ok),
        "n_failed": len(failed),
        "n_skipped": len(skipped),
    }
    log.info("%d ok, %d failed, %d skipped; %s", len(ok), len(failed), len(skipped), note)
    return summary


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _copy_best_confusion(ok: list[dict], confusion_dir: Path, dest: Path) -> None:
    """The best model's (actual, predicted) pairs (its first seed's), the only sweep confusion matrix the page
    shows; with no ok entry, an empty file (compare_with_best has already checked that every ok entry has one)."""
    if not ok:
        atomic_write_text(dest, "actual,predicted,image\n")
        return
    atomic_write_bytes(dest, (confusion_dir / f"{ok[0]['entries'][0]}.csv").read_bytes())


def plot_metrics(summary: dict) -> dict:
    """The plot stage's DVC metrics, from its summary: the best, its accuracy, the size of the set tied with it
    and the set (a list: `dvc metrics show` leaves it out, `dvc metrics diff` and readers of the file have it)."""
    return {key: summary[key] for key in PLOT_METRICS}


def read_records(records_dir: Path, archs: list[str], seeds: list[int] | None = None) -> list[dict]:
    """Read `<records_dir>/<arch>-<seed>.json` for each listed arch and seed (`<arch>.json` without seeds), in
    order; other files there are stale and ignored."""
    records = []
    for arch in archs:
        for seed in seeds if seeds is not None else [None]:
            name = entry_name({"arch": arch, "seed": seed})
            path = Path(records_dir) / f"{name}.json"
            if not path.is_file():
                raise PipelineError(f"no record of {name} ({path}): run `make sweep` or `dvc repro` to train it first.")
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise PipelineError(f"{path} is not valid JSON ({e}): delete it and run `dvc repro`.") from None
            if not isinstance(record, dict) or record.get("arch") != arch or record.get("seed") != seed:
                raise PipelineError(f"{path} does not hold the record of {name}: delete it and run `dvc repro`.")
            records.append(record)
    return records
