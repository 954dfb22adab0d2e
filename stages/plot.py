"""Stage plot: the exercise plot, accuracy against cost, the leaderboard (every architecture's accuracy over its
seeds with a 95% interval, and whether it is in the confidence set for the best), the per-epoch curves of every
model in one chart per metric, the best model's confusion matrix, and that set: the architectures tied with the
best.

    python -m stages.plot --metrics-dir metrics/sweep --live-dir plots/live/sweep \
        --confusion-dir plots/confusion/sweep --out-dir plots/sweep --summary metrics/plot.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.common import run_main, write_json
from imgclf.params import load_params
from imgclf.reporting.report import make_report, read_metrics


def main(argv: list[str] | None = None) -> dict:
    """Read the sweep's metrics for the archs and seeds in params.yaml, write the report and the summary JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics-dir", type=Path, required=True, help="folder of <arch>-<seed>.json sweep metrics")
    parser.add_argument("--live-dir", type=Path, help="folder of <arch>-<seed>/ DVCLive curves, combined per metric")
    parser.add_argument(
        "--confusion-dir", type=Path, help="folder of <arch>-<seed>.csv predictions (actual, predicted, image)"
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for the plots and leaderboard")
    parser.add_argument("--summary", type=Path, required=True, help="summary metrics JSON to write")
    args = parser.parse_args(argv)
    params = load_params()
    records = read_metrics(args.metrics_dir, params["sweep"]["archs"], params["sweep"]["seeds"])
    alpha = params["report"]["alpha"]
    summary = make_report(records, args.out_dir, args.live_dir, args.confusion_dir, alpha=alpha)
    write_json(args.summary, summary)
    return summary


if __name__ == "__main__":
    run_main(main)
