"""Compare the sweep: the figures, the leaderboard of every architecture (its accuracy over seeds with a 95%
interval, and whether it is in the confidence set for the best), and the data files DVC's plots page draws (the
exercise plot, accuracy against cost, the leaderboard, one per-epoch chart per metric, the best model's
confusion matrix)."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pandas as pd

from imgclf.common import PipelineError, atomic_write_bytes, atomic_write_text, write_json
from imgclf.reporting.compare import BOOTSTRAP_REPS, METHOD, Ties, guarantee
from imgclf.reporting.curves import combine_curves
from imgclf.reporting.figures import dodge, draw_accuracy, draw_cost, label_text, labelled, render_png, spread_labels
from imgclf.reporting.table import COSTS, build_table, entry_name, number, plain

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


def leaderboard_text(table: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard as text, one row per architecture in the table's order (ok ones ranked, then the failed
    and the skipped ones with their reason): fixed decimals, p-values to 3 significant digits, yes/no for the tie
    mark, '' for none."""

    def cell(col: str, value: object) -> str:
        if pd.isna(value):
            return ""
        if col == "tied_with_best":
            return "yes" if value else "no"
        if col in P_COLUMNS:
            return f"{value:.3g}"
        return f"{value:.{DECIMALS[col]}f}" if col in DECIMALS else str(value)

    rows = table.reset_index().reindex(columns=COLUMNS)
    return pd.DataFrame({col: [cell(col, v) for v in rows[col]] for col in COLUMNS})


def tie_sentence(ok: pd.DataFrame, ties: Ties) -> str:
    """One sentence naming the tied group and how it was found, for the log and the Markdown."""
    if ok.empty:
        return "no architecture succeeded"
    if ties.n_images is None:
        return f"highest: {ok.index[0]} ({ok.accuracy.iloc[0]:.4f}); not compared (no per-image predictions)"
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


# The Markdown's columns (the CSV and JSON keep all of COLUMNS): what a reader needs to see the story.
MARKDOWN_COLUMNS = {
    "rank": "rank",
    "arch": "architecture",
    "status": "status",
    "accuracy": "accuracy",
    "interval": "95% interval",
    "tied_with_best": "tied",
    "params_m": "params (M)",
    "gmacs": "GMACs",
    "infer_images_per_s": "images/s",
    "reason": "note",
}
MARKDOWN_RIGHT = {"rank", "accuracy", "interval", "params_m", "gmacs", "infer_images_per_s"}
MAX_LINE = 160  # the Markdown's widest line: it reads in a 160-column terminal


def markdown_text(text: pd.DataFrame, intro: str) -> str:
    """The leaderboard's text as a compact Markdown table of MARKDOWN_COLUMNS under `intro`, no padding (at 1,102
    rows padding was most of the file), every line within MAX_LINE characters: a cell's line breaks and pipes
    cannot break the table (a traceback in a reason), and a long reason is cut to fit."""
    cells = text.map(lambda value: " ".join(value.split()).replace("|", "\\|"))
    cells["interval"] = [f"{lo}-{hi}" if lo else "" for lo, hi in zip(cells.ci_low, cells.ci_high)]
    cells = cells[list(MARKDOWN_COLUMNS)]
    lines = [
        "| " + " | ".join(MARKDOWN_COLUMNS.values()) + " |",
        "|" + "|".join("---:" if col in MARKDOWN_RIGHT else ":---" for col in MARKDOWN_COLUMNS) + "|",
    ]
    for row in cells.itertuples(index=False):
        *rest, reason = row
        head = "| " + " | ".join(rest) + " | "
        room = MAX_LINE - len(head) - 2
        if len(reason) > room:
            reason = reason[: max(room - 3, 0)] + "..."
        lines.append(head + reason + " |")
    return intro + "\n\n" + "\n".join(lines) + "\n"


def images_needed_sentence(ties: Ties) -> str:
    """How many validation images would tell the best from the runner-up (stats.mcnemar_sample_size), beside how
    many there are: why the tied set is as large as it is."""
    if ties.n_images is None or ties.n_compared < 2:
        return ""
    if ties.images_needed is None:
        return (
            "Images needed to tell the best from the runner-up: no number would at these rates (as many images "
            "favour each of the two)."
        )
    return (
        f"Images needed to tell the best from the runner-up: about {ties.images_needed:,} (McNemar's test at "
        f"{ties.alpha:g} with 80% power, Connor 1987, at the rates they disagree on here); "
        f"the validation set has {ties.n_images:,}."
    )


def markdown_intro(ok: pd.DataFrame, ties: Ties) -> str:
    """The lines above the Markdown table, wrapped to MAX_LINE: the tied group, the images that would tell the
    best from the runner-up, and how to read the columns."""
    compared = ties.n_images is not None
    paragraphs = [
        f"**{tie_sentence(ok, ties)}.**" + (f" The set {guarantee(ties)}." if compared else ""),
        images_needed_sentence(ties),
        ("accuracy: the mean over seeds (their spread: seed_sd in leaderboard.csv); " if (ok.n_seeds > 1).any() else "")
        + "95% interval: the accuracy's Wilson interval over the validation images; tied: yes where it is in the "
        "confidence set for the best; cost: parameters, forward GMACs per image, inference images/s. Every column, "
        "with the descriptive McNemar p-values, is in leaderboard.csv and leaderboard.json.",
    ]
    return "\n\n".join(textwrap.fill(p, MAX_LINE, break_on_hyphens=False) for p in paragraphs if p)


def page_rows(table: pd.DataFrame, alpha: float) -> list[dict]:
    """One row per architecture for the page's exercise and cost charts, in the table's order: ok ones (with
    their place, a name label and its height for the best ones, spread like the PNG's labels, their interval and
    tie mark, and whether they are on each cost's Pareto front), then failed and skipped (no accuracy). Every row
    has the same keys: DVC reads a JSON list as data points only when they do."""
    is_ok = table.kind == "ok"
    ok = table[is_ok]
    named = labelled(ok)
    lo, hi = (ok.accuracy.min(), ok.accuracy.max()) if len(ok) else (0.0, 1.0)
    gap = max(hi - lo, 1e-3) * LABEL_GAP_PX / CHART_HEIGHT_PX
    fronts = [col for key, _ in COSTS for col in (f"front_{key}", f"front_order_{key}")]
    rows = pd.DataFrame(
        {
            "rank": pd.Series(range(1, len(ok) + 1), index=ok.index, dtype="Int64"),
            "family": table.family,
            "group": table.group,
            "status": table.status.map(str),
            "x": pd.Series(dodge(len(ok)), index=ok.index),
            "accuracy": table.accuracy.where(is_ok),
            "ci_low": table.ci_low.where(is_ok),
            "ci_high": table.ci_high.where(is_ok),
            "tied": table.tied_with_best.where(is_ok),
            "p_holm": table.p_holm.where(is_ok),
            "n_seeds": table.n_seeds,
            "label": pd.Series(named.index, index=named.index),
            "label_text": pd.Series([label_text(r, i == 0) for i, (_, r) in enumerate(named.iterrows())], named.index),
            "label_y": pd.Series(spread_labels(list(named.accuracy), gap, lo, hi), index=named.index),
            **{key: table[key] for key in (*TOOLTIP_NUMBERS, *(k for k, _ in COSTS))},
            **{col: table[col] for col in fronts},
            "alpha": alpha,
        },
        index=table.index,
    )
    rows[["label", "label_text"]] = rows[["label", "label_text"]].fillna("")
    return plain(rows.reset_index())


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
        if r.get("status") == "ok" and number(r.get("accuracy")) is None:
            log.warning("%s is marked ok but has no accuracy: listed with the failed ones", entry_name(r))
    table, ties = build_table(records, confusion_dir, alpha)
    ok = table[table.kind == "ok"]
    counts = [len(ok), (table.kind == "failed").sum(), (table.kind == "skipped").sum()]
    if ok.empty:
        log.warning(
            "no architecture succeeded (%d failed, %d skipped): the plots are empty; see leaderboard.md for why",
            *counts[1:],
        )
    atomic_write_bytes(out_dir / "accuracy.png", render_png(draw_accuracy(table, ties)))
    atomic_write_bytes(out_dir / "cost.png", render_png(draw_cost(table)))
    text = leaderboard_text(table)
    atomic_write_text(out_dir / "leaderboard.csv", text.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(out_dir / "leaderboard.md", markdown_text(text, markdown_intro(ok, ties)))
    write_json(out_dir / "leaderboard.json", text.reset_index(names="row").to_dict("records"))
    write_json(out_dir / "accuracy.json", page_rows(table, alpha))
    if live_dir is not None:
        for metric, curve in combine_curves(live_dir, records, table).items():
            write_json(out_dir / "curves" / f"{metric}.json", curve)
    if confusion_dir is not None:  # the best's pairs (its first seed's): the only sweep confusion matrix shown
        pairs = Path(confusion_dir) / f"{ok.entries.iloc[0][0]}.csv" if len(ok) else None
        atomic_write_bytes(out_dir / "confusion_best.csv", pairs.read_bytes() if pairs else b"actual,predicted,image\n")
    best = ok.iloc[0] if len(ok) else pd.Series({"accuracy": None, "ci_low": None, "ci_high": None})
    compared = ties.n_images is not None
    summary = {
        "best_arch": best.name,
        "max_acc": number(best.accuracy),
        "ci_low": _rounded(best.ci_low),
        "ci_high": _rounded(best.ci_high),
        "tied_with_best": ties.tied if compared else None,  # None: nothing compared (no predictions)
        "tied_group": tied_names(ties.tied) if compared else None,  # the same as text, for a reader of the summary
        "n_tied": len(ties.tied) if compared else None,
        "alpha": alpha,
        **dict(zip(("n_ok", "n_failed", "n_skipped"), map(int, counts))),
    }
    log.info("%d ok, %d failed, %d skipped; %s", *counts, tie_sentence(ok, ties))
    return summary


def _rounded(value: float | None) -> float | None:
    return None if (value := number(value)) is None else round(value, 6)


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
