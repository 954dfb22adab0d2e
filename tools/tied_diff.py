"""Which architectures joined or left the set tied with the best between two revisions: `dvc metrics diff` shows
`n_tied 2 -> 3` but leaves lists out, so it cannot say which one joined.

    python -m tools.tied_diff              # HEAD against the workspace
    python -m tools.tied_diff HEAD~1 HEAD  # any two git revisions (a commit, a branch, an experiment's ref)

Reads metrics/plot.json's `tied_with_best` (the plot stage's DVC metric, kept in git) at each revision with
dvc.api.read, and prints one line per change.
"""

from __future__ import annotations

import argparse
import json

from imgclf.common import PipelineError, run_main

METRICS = "metrics/plot.json"


def tied_at(rev: str | None) -> list[str]:
    """The tied set at `rev` (None: the workspace), best first."""
    import dvc.api
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    where = rev or "the workspace"
    try:
        summary = json.loads(dvc.api.read(METRICS, rev=rev))
    except (DvcException, SCMError, OSError, ValueError) as e:  # an unknown revision, no such file there, not JSON
        raise PipelineError(
            f"cannot read {METRICS} at {where} ({type(e).__name__}: {e}): name a git revision "
            "where the plot stage ran (`git log --oneline`, `dvc exp list`)."
        ) from None
    tied = summary.get("tied_with_best") if isinstance(summary, dict) else None
    if not isinstance(tied, list):
        raise PipelineError(f"{METRICS} at {where} has no tied set (tied_with_best): run `dvc repro plot` there.")
    return [str(name) for name in tied]


def tied_diff(before: list[str], after: list[str]) -> tuple[list[str], list[str]]:
    """(joined, left): the names in `after` and not in `before`, in `after`'s order, and the reverse."""
    return [a for a in after if a not in before], [b for b in before if b not in after]


def main(argv: list[str] | None = None) -> list[str]:
    """Print the two sets' sizes and the architectures that joined and left; return the lines."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev_a", nargs="?", default="HEAD", help="the earlier revision (default HEAD)")
    ap.add_argument("rev_b", nargs="?", default=None, help="the later revision (default the workspace)")
    args = ap.parse_args(argv)
    before, after = tied_at(args.rev_a), tied_at(args.rev_b)
    joined, left = tied_diff(before, after)
    lines = [
        f"tied with the best: {len(before)} at {args.rev_a} -> {len(after)} at {args.rev_b or 'the workspace'}",
        "joined: " + (", ".join(joined) or "none"),
        "left: " + (", ".join(left) or "none"),
    ]
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    run_main(main)
