"""What a stage declares as DVC metrics: the few numbers a person compares between runs, derived from the stage's
full record (written to records/, a plain output), one function per kind. Everything else (intervals, timings,
memory, the batch, the device, causes, per-class counts) stays in the record, where the leaderboard and the
report read it: in `dvc metrics show` and `dvc metrics diff` it would bury the accuracies."""

from __future__ import annotations

from typing import Any

SCRAPE_TOTALS = ("kept", "excluded", "relabelled")


def accuracy_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """A finetune task's or a sweep entry's metrics: its accuracy, null when it failed or was skipped."""
    return {"accuracy": record.get("accuracy") if record.get("status") == "ok" else None}


def scrape_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """A scrape's metrics: its totals of images kept, excluded and relabelled."""
    return {key: record["total"][key] for key in SCRAPE_TOTALS}
