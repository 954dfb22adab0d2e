"""Stage search@<dataset>: image search for each class query, written as a URL manifest.

    python -m stages.search --dataset monuments --url-list urls/monuments.csv --out manifests/monuments.csv

The manifest is the dataset's recipe: it changes only when the queries or search params change (or on
`dvc repro -f search@<dataset>`), and a committed manifest rebuilds the same dataset on another machine. With
`search.engine: file` it comes from the CSV URL list `urls/<dataset>.csv` instead (offline runs, the demo).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from imgclf.common import atomic_write_text, run_main
from imgclf.datasets import parse_classes
from imgclf.params import load_params
from imgclf.sources.manifest import manifest_text, read_manifest
from imgclf.sources.search import BACKENDS, SearchFn, ddgs_search, read_url_list, search_dataset

log = logging.getLogger(__name__)


def _partial_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def main(argv: list[str] | None = None, search: SearchFn | None = None) -> None:
    """CLI: python -m stages.search --dataset NAME --url-list urls/NAME.csv --out manifests/NAME.csv."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--url-list", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    params = load_params()
    cfg = params["search"]
    classes = {c.label: c.query for c in parse_classes(params["datasets"][args.dataset]["classes"])}
    if cfg["engine"] == "file":
        rows = read_url_list(args.url_list, classes)
    else:
        partial = _partial_path(args.out)
        found: dict[str, list[dict[str, Any]]] = {}
        if partial.is_file():  # keep what an interrupted or rate-limited search already found
            backends = BACKENDS if cfg["backend"] == "auto" else (cfg["backend"],)
            for row in read_manifest(partial):
                if classes.get(row["class"]) == row["query"] and row.get("backend") in backends:
                    found.setdefault(row["class"], []).append(row)
        try:
            rows = search_dataset(classes, search or ddgs_search(cfg), cfg, found)
        finally:
            kept = [r for rows_ in found.values() for r in rows_]
            if kept:
                atomic_write_text(partial, manifest_text(kept))
        partial.unlink(missing_ok=True)
    atomic_write_text(args.out, manifest_text(rows))
    log.info("wrote %d URLs for %d classes to %s", len(rows), len(classes), args.out)


if __name__ == "__main__":
    run_main(main)
