"""`make prune`: the sweep entries that left params.yaml (an architecture or a seed taken out) leave nothing behind.

DVC never drops the dvc.lock entry of a stage that left dvc.yaml (treeverse/dvc#5293), and `dvc remove` refuses
the entries of a matrix stage; the entry's outputs stay in the workspace too, and the plot stage's folder deps
(records/sweep, plots/live/sweep, plots/confusion/sweep) then include them. So for each `sweep@...` entry in
dvc.lock that dvc.yaml no longer makes, this does what `dvc remove` does for a stage it accepts: it builds the
entry as DVC would from its dvc.lock entry (`StageLoader.load_stage`), removes its outputs and their .gitignore
lines (`Stage.remove_outs`: the model, the record, the metrics file, the curves, the predictions), then drops
every such entry from dvc.lock in one write (`modify_yaml`, as `Lockfile.dump_stages` writes it). Then, when
every sweep entry is up to date, the stages that read the sweep's outputs (the plot, the export), each alone
(`dvc repro --single-item plot export`), so the workspace ends up to date.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from imgclf import dvc_ops
from imgclf.common import PipelineError, plural
from imgclf.pool import STAGE

log = logging.getLogger(__name__)


def stale_entries(repo) -> dict[str, dict]:
    """The sweep entries dvc.lock records but dvc.yaml (with params.yaml) no longer makes -> their dvc.lock data."""
    lock = dvc_ops.locked_entries(repo)
    current = {s.addressing for s in repo.index.stages}
    return {name: data for name, data in lock.items() if name.startswith(f"{STAGE}@") and name not in current}


RESTORE_HINT = (
    "putting an architecture or seed back in params.yaml restores its entry from the run-cache (`make sweep`)"
)


def kept_stale(repo) -> dict[str, dict]:
    """Warn about the sweep entries that left params.yaml, naming them, and keep them: only `make prune` removes
    them (a shortened `sweep.archs` for a quick try loses nothing). Returns them."""
    stale = stale_entries(repo)
    if stale:
        log.warning(
            "%s no longer in params.yaml, kept (their outputs and dvc.lock entries, which the plot reads): %s. "
            "`make prune` removes them; %s.",
            plural(len(stale), "sweep entry", "sweep entries"),
            ", ".join(stale),
            RESTORE_HINT,
        )
    return stale


def remove_entries(repo, stale: dict[str, dict]) -> None:
    """Remove each stale entry's outputs (and their .gitignore lines), then its dvc.lock entry, in one write."""
    for line in dvc_ops.remove_locked(repo, stale):
        log.info("%s", line)


def prune(repo, plot: bool = True, run_env: dict[str, str] | None = None) -> list[str]:
    """Remove the stale sweep entries of `repo` (an open, locked `dvc.repo.Repo`); with `plot`, then bring the plot
    (and the other stages that read the sweep) up to date when anything was pruned and no sweep entry is pending
    (else they wait for them: `make sweep`). Returns the pruned entries' names."""
    stale = stale_entries(repo)
    if not stale:
        log.info("prune: no sweep entry left params.yaml; nothing to remove")
        return []
    log.info(
        "prune: removing %s (outputs, dvc.lock entries): %s",
        plural(len(stale), "sweep entry", "sweep entries"),
        ", ".join(stale),
    )
    remove_entries(repo, stale)
    log.info(
        "prune: %s removed from the workspace and dvc.lock: %s; %s",
        plural(len(stale), "sweep entry", "sweep entries"),
        ", ".join(stale),
        RESTORE_HINT,
    )
    dvc_ops.reload(repo)  # the index and dvc.lock as they are now
    if plot:
        pending = [s.addressing for s in dvc_ops.matrix_entries(repo, STAGE) if dvc_ops.is_pending(s)]
        if pending:
            log.info(
                "prune: the plot waits for %s: run `make sweep`",
                plural(len(pending), "pending sweep entry", "pending sweep entries"),
            )
        else:
            reproduce_downstream(repo, run_env)
    return list(stale)


def reproduce_downstream(repo, run_env: dict[str, str] | None = None) -> None:
    """The stages that read the sweep entries' outputs (the plot, the export), each alone, upstream first: `dvc
    repro --single-item plot export`. A plain `dvc repro` would also train any failed entry again, one at a time,
    outside the sweep's workers."""
    order = dvc_ops.downstream(repo, STAGE)
    if not order:
        return
    try:
        dvc_ops.reproduce_alone(repo, order, run_env)
    except dvc_ops.dvc_error() as e:
        names = ", ".join(order)
        raise PipelineError(f"{names} could not be brought up to date: {e} (DVC's output is above)") from e


def prune_workspace(ws: Path, plot: bool = True, run_env: dict[str, str] | None = None) -> list[str]:
    """`prune` in the DVC workspace `ws`, holding its lock."""
    with contextlib.chdir(ws), dvc_ops.locked_repo(ws) as repo:
        return prune(repo, plot, run_env)
