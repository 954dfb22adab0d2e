"""Stage plot: the exercise plot, accuracy against cost, the leaderboard, the per-epoch curves of every model in
one chart per metric, the best model's confusion matrix and the best architecture.

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
    """Read the sweep's metrics for the archs in params.yaml, write the report and the summary JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics-dir", type=Path, required=True, help="folder of <arch>.json sweep metrics")
    parser.add_argument("--live-dir", type=Path, help="folder of <arch>/ DVCLive curves, combined per metric")
    parser.add_argument("--confusion-dir", type=Path, help="folder of <arch>.csv (actual, predicted) pairs")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for the plots and leaderboard")
    parser.add_argument("--summary", type=Path, required=True, help="summary metrics JSON to write")
    args = parser.parse_args(argv)
    archs = load_params()["sweep"]["archs"]
    summary = make_report(read_metrics(args.metrics_dir, archs), args.out_dir, args.live_dir, args.confusion_dir)
    write_json(args.summary, summary)
    return summary


if __name__ == "__main__":
    run_main(main)
