"""`make sweep`: train the pending sweep entries on warm workers and record each in DVC (imgclf/parallel.py).

    python -m tools.sweep [--jobs N] [--workspace DIR] [--shard i/K] [--per-gpu K]

Not a DVC stage: it drives DVC (its stages, run-cache, remote) from outside the pipeline, so it lives in tools/,
not stages/. It first validates params.yaml and the options (the message `python -m stages.check_params` gives)
and names the entries that left params.yaml, which it keeps (`make prune` removes them); once every entry is
recorded it runs the plot and the export alone, so the workspace is up to date (`dvc status` is clean unless an
entry failed). A shard pushes instead: the plot waits for every shard.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from imgclf.common import plural, run_main
from imgclf.parallel import run_sweep

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """Parse the options and run the sweep."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="warm workers, entries at a time (default: the visible GPUs x --per-gpu, or 1 without a GPU)",
    )
    ap.add_argument("--workspace", type=Path, default=Path("."), help="the DVC workspace (default: here)")
    ap.add_argument("--shard", default=None, help="i/K: run only the i-th of K disjoint shards, then push")
    ap.add_argument("--per-gpu", type=int, default=1, help="at most this many workers share one GPU (default 1)")
    args = ap.parse_args(argv)
    start = time.monotonic()
    try:
        done = run_sweep(args.workspace, args.jobs, args.shard, args.per_gpu)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: what finished is recorded (imgclf.parallel.run_sweep)
        print("interrupted: run `make sweep` again to train what is still pending.", file=sys.stderr)
        sys.exit(130)
    log.info("sweep: %s done in %.1f s", plural(len(done), "entry", "entries"), time.monotonic() - start)


if __name__ == "__main__":
    run_main(main)
