"""Stage scrape@<dataset>: download the manifest's URLs, clean, dedupe and resize them into class folders, and
drop or move the images the dataset's exclusion file names.

    python -m stages.scrape --dataset monuments --manifest manifests/monuments.csv --cache downloads/monuments \
        --exclude exclude/monuments.txt --out data/monuments/images --report data/monuments/report.csv \
        --record records/scrape/monuments.json --metrics metrics/scrape/monuments.json

The record holds every count (per class, per status); the metrics file only the totals kept, excluded and
relabelled (imgclf/metrics.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.common import run_main, write_json
from imgclf.datasets import parse_classes
from imgclf.metrics import scrape_metrics
from imgclf.params import load_params
from imgclf.sources.exclude import read_exclusions
from imgclf.sources.manifest import read_manifest
from imgclf.sources.scrape import scrape


def main(argv: list[str] | None = None) -> None:
    """Build the dataset's image folders and report from its manifest."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag in ("--manifest", "--cache", "--out", "--report", "--record", "--metrics"):
        ap.add_argument(flag, type=Path, required=True)
    ap.add_argument("--exclude", type=Path, help="the dataset's exclusion file (imgclf.sources.exclude); none if unset")
    ap.add_argument("--dataset", required=True)
    args = ap.parse_args(argv)
    params = load_params()
    classes = [c.label for c in parse_classes(params["datasets"][args.dataset]["classes"])]
    exclusions = read_exclusions(args.exclude, classes) if args.exclude else []  # read before any download
    rows = read_manifest(args.manifest)
    result = scrape(rows, classes, params["scrape"], args.cache, args.out, args.report, exclusions)
    write_json(args.record, result)
    write_json(args.metrics, scrape_metrics(result))


if __name__ == "__main__":
    run_main(main)
