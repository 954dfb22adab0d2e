"""`make prune`: remove what the sweep entries that left params.yaml left behind (imgclf/prune.py), then bring the
plot up to date.

    python -m tools.prune [--workspace DIR]

Not a DVC stage: it edits the workspace's outputs and dvc.lock from outside the pipeline, as `make sweep` does.
`make sweep` prunes the same way before it trains. Commit the result (dvc.lock, the deleted metrics files, the
.gitignore lines of the removed outputs).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imgclf.common import run_main
from imgclf.parallel import checked_params, venv_path
from imgclf.prune import prune_workspace

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """Parse the options and prune."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=Path("."), help="the DVC workspace (default: here)")
    args = ap.parse_args(argv)
    ws = args.workspace.resolve()
    # a broken params.yaml or a misspelled architecture (whose rightly spelled entry would look taken out): the
    # message check_params gives, before anything is removed
    checked_params(ws)
    for name in ("dvc", "dvc_objects", "dvc_data"):  # importing DVC gave them its own handlers, as `dvc` prints
        logging.getLogger(name).propagate = False
    pruned = prune_workspace(ws, plot=True, run_env={"PATH": venv_path()})
    if pruned:
        log.info("commit the result (dvc.lock, the deleted metrics files, .gitignore lines): git add -A && git commit")


if __name__ == "__main__":
    run_main(main)
