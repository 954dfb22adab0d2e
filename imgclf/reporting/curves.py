"""Per-epoch curves of the whole sweep: one data file per metric with every model in it, for one DVC chart per
metric (instead of one chart per metric per model, thousands for the whole timm zoo)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd

from imgclf.common import PipelineError
from imgclf.reporting.table import OTHER, entry_name

# DVCLive's layout under a model's curves folder: plots/metrics/<name>.tsv, <name> may hold a folder (train/loss).
METRICS_SUBDIR = Path("plots") / "metrics"
# Up to MAX_LINES architectures, each has its own colour and legend entry; past that, a legend of hundreds of
# colours says nothing: the best HIGHLIGHT (mean accuracy over their seeds) keep theirs and the rest are grey.
MAX_LINES = 10
HIGHLIGHT = 8


def legend_entries(accuracy: pd.Series) -> dict[str, str]:
    """arch -> the legend entry its curves are drawn under, from the table's accuracy (the mean over the ok
    seeds): the arch itself, or OTHER (grey) for all but the best HIGHLIGHT when the sweep has more than MAX_LINES
    architectures (failed ones rank last)."""
    if len(accuracy) <= MAX_LINES:
        return {arch: arch for arch in accuracy.index}
    ranked = sorted(accuracy.index, key=lambda a: (-accuracy[a] if pd.notna(accuracy[a]) else math.inf, a))
    best = set(ranked[:HIGHLIGHT])
    return {arch: arch if arch in best else OTHER for arch in accuracy.index}


def metric_files(curves_dir: Path) -> dict[str, Path]:
    """metric name (`accuracy`, `train_loss`) -> its DVCLive TSV in one model's curves folder; {} if none."""
    root = Path(curves_dir) / METRICS_SUBDIR
    if not root.is_dir():
        return {}
    return {
        path.relative_to(root).with_suffix("").as_posix().replace("/", "_"): path
        for path in sorted(root.rglob("*.tsv"))
    }


def read_tsv(path: Path) -> list[tuple[int, float]]:
    """(step, value) rows of a DVCLive TSV (columns: step, optionally timestamp, then the value)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    out = []
    for row in rows:
        values = [v for k, v in row.items() if k not in ("step", "timestamp")]
        try:
            out.append((int(row["step"]), float(values[-1])))
        except (KeyError, IndexError, TypeError, ValueError):
            raise PipelineError(
                f"{path} is not a DVCLive metric file (step and value per row): delete the "
                "model's curves folder and rerun its stage with `dvc repro -f`."
            ) from None
    return out


def combine_curves(live_dir: Path, records: list[dict], table: pd.DataFrame) -> dict[str, list[dict]]:
    """metric -> rows {arch, seed, entry, group, line, step, value} over the curves in `live_dir/<entry>` of
    every entry in `records` (the sweep's metrics records; folders of entries not listed are stale and ignored;
    a failed or skipped entry may have none). `table` (table.build_table, by arch) gives each arch's `group`
    ('' when not ok) and, from its `accuracy`, its legend entry `line` (`legend_entries`)."""
    combined: dict[str, list[dict]] = {}
    lines = legend_entries(table.accuracy)
    for r in records:
        arch, entry = str(r.get("arch")), entry_name(r)
        for metric, path in metric_files(Path(live_dir) / entry).items():
            combined.setdefault(metric, []).extend(
                {
                    "arch": arch,
                    "seed": r.get("seed"),
                    "entry": entry,
                    "group": table.group[arch],
                    "line": lines[arch],
                    "step": step,
                    "value": value,
                }
                for step, value in read_tsv(path)
            )
    return dict(sorted(combined.items()))
