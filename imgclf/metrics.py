"""What a stage declares as DVC metrics: the few numbers a person compares between runs, derived from the stage's
full record (written to records/, a plain output), one function per kind. Everything else (intervals, timings,
memory, the batch, the device, causes, per-class counts) stays in the record, where the leaderboard and the
report read it: in `dvc metrics show` and `dvc metrics diff` it would bury the accuracies."""

from __future__ import annotations

from typing import Any

SCRAPE_TOTALS = ("kept", "excluded", "relabelled")
# A training record's numbers: null in the record of an entry that failed or was skipped, averaged over an
# architecture's seeds in the leaderboard. Shared by training and reporting: an edit here reruns both.
RECORD_NUMBERS = (
    "accuracy",
    "error_rate",
    "valid_loss",
    "train_time_s",
    "images_per_s",
    "params_m",
    "peak_memory_mb",
    "gmacs",
    "infer_images_per_s",
    "infer_latency_ms",
    "infer_latency_p90_ms",
)
# The record's fields that change from run to run on the same machine: timings and memory, never a result
TIMINGS = (
    "train_time_s",
    "images_per_s",
    "peak_memory_mb",
    "infer_images_per_s",
    "infer_latency_ms",
    "infer_latency_p90_ms",
)


def accuracy_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """A finetune task's or a sweep entry's metrics: its accuracy, null when it failed or was skipped."""
    return {"accuracy": record.get("accuracy") if record.get("status") == "ok" else None}


def scrape_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """A scrape's metrics: its totals of images kept, excluded and relabelled."""
    return {key: record["total"][key] for key in SCRAPE_TOTALS}
