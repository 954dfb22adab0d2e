"""Per-epoch curves of the whole sweep: one data file per metric with every model in it, for one DVC chart per
metric (instead of one chart per metric per model, about 4,400 charts for the whole timm zoo)."""

from __future__ import annotations

import csv
from pathlib import Path

from imgclf.common import PipelineError
from imgclf.reporting.records import entry_name

# DVCLive's layout under a model's curves folder: plots/metrics/<name>.tsv, <name> may hold a folder (train/loss).
METRICS_SUBDIR = Path("plots") / "metrics"


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


def combine_curves(live_dir: Path, records: list[dict], groups: dict[str, str]) -> dict[str, list[dict]]:
    """metric -> rows {arch, seed, entry, group, step, value} over the curves in `live_dir/<entry>` of every
    entry in `records` (the sweep's metrics records; folders of entries not listed are stale and ignored; a
    failed or skipped entry may have none). `groups` maps an arch to its colour group; an arch missing from it
    (failed, skipped) gets ''."""
    combined: dict[str, list[dict]] = {}
    for r in records:
        arch, entry = str(r.get("arch")), entry_name(r)
        for metric, path in metric_files(Path(live_dir) / entry).items():
            combined.setdefault(metric, []).extend(
                {
                    "arch": arch,
                    "seed": r.get("seed"),
                    "entry": entry,
                    "group": groups.get(arch, ""),
                    "step": step,
                    "value": value,
                }
                for step, value in read_tsv(path)
            )
    return dict(sorted(combined.items()))
