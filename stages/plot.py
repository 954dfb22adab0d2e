"""Stage plot: the exercise plot, accuracy against cost, the leaderboard (every architecture's accuracy over its
seeds with a 95% interval, and whether it is in the confidence set for the best), the per-epoch curves of every
model in one chart per metric, the best model's confusion matrix, and that set: the architectures tied with the
best.

    python -m stages.plot --records-dir records/sweep --live-dir plots/live/sweep \
        --confusion-dir plots/confusion/sweep --out-dir plots/sweep --summary metrics/plot.json

The DVC metrics (`--summary`) are what a person compares between runs: the best, its accuracy, the set tied with
it and its size. The whole summary (the interval, the level, the counts) goes to <out-dir>/summary.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.common import run_main, write_json
from imgclf.params import load_params
from imgclf.reporting.report import make_report, plot_metrics, read_records


def main(argv: list[str] | None = None) -> dict:
    """Read the sweep's records for the archs and seeds in params.yaml, write the report, the summary and its
    metrics."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records-dir", type=Path, required=True, help="folder of <arch>-<seed>.json sweep records")
    parser.add_argument("--live-dir", type=Path, help="folder of <arch>-<seed>/ DVCLive curves, combined per metric")
    parser.add_argument(
        "--confusion-dir", type=Path, help="folder of <arch>-<seed>.csv predictions (actual, predicted, image)"
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for the plots, leaderboard and summary")
    parser.add_argument("--summary", type=Path, required=True, help="the summary's DVC metrics JSON to write")
    args = parser.parse_args(argv)
    params = load_params()
    records = read_records(args.records_dir, params["sweep"]["archs"], params["sweep"]["seeds"])
    alpha = params["report"]["alpha"]
    summary = make_report(records, args.out_dir, args.live_dir, args.confusion_dir, alpha=alpha)
    write_json(args.out_dir / "summary.json", summary)
    write_json(args.summary, plot_metrics(summary))
    return summary


if __name__ == "__main__":
    run_main(main)
