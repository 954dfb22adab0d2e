"""The calls into DVC's internals that `make sweep` makes (pinned dvc 3.67.1), in one module, so that a DVC upgrade
touches one file.

Why internals: the sweep records each entry as `dvc repro` would (DVC's `Stage.run`: remove the outputs, restore
them from the run-cache or save the deps and run the command, then save and commit), but runs the command itself on
warm workers and writes dvc.lock once for all entries. DVC has no public API for these steps.

Each function names the DVC function it calls; the rest of the sweep sees stages only through these and the
stage's plain attributes (`addressing`, `cmd`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def dvc_error() -> type[Exception]:
    """DVC's base exception (`dvc.exceptions.DvcException`): every error DVC raises on purpose."""
    from dvc.exceptions import DvcException

    return DvcException


@contextlib.contextmanager
def locked_repo(ws: Path) -> Iterator:
    """The DVC repository `ws`, open and locked (`Repo`, `lock_repo`) for the block: no other DVC process changes
    dvc.lock or the cache meanwhile."""
    from dvc.repo import Repo, lock_repo

    with Repo(str(ws)) as repo, lock_repo(repo):
        yield repo


@contextlib.contextmanager
def open_repo(ws: Path) -> Iterator:
    """The DVC repository `ws`, open (not locked), as it is on disk now."""
    from dvc.repo import Repo

    with Repo(str(ws)) as repo:
        yield repo


def matrix_entries(repo, stage: str) -> list:
    """The entries `<stage>@<key>` of a matrix stage in dvc.yaml, in dvc.yaml's order (`repo.index.stages`)."""
    return [s for s in repo.index.stages if s.addressing.startswith(f"{stage}@")]


def stale_upstream(repo, entries: list) -> list[str]:
    """The stages whose outputs `entries` read (directly or not) and that are not up to date (`Stage.changed`)."""
    import networkx as nx

    graph = repo.index.graph  # edges run from a stage to the stages whose outputs it reads
    upstream = set().union(*(nx.descendants(graph, s) for s in entries)) - set(entries)
    return sorted(s.addressing for s in upstream if s.changed())


def reproduce(repo, targets: list[str], env: dict[str, str]) -> None:
    """`dvc repro <targets>` in this process (`Repo.reproduce`), the stages' commands run with `env` on top."""
    repo.reproduce(targets, run_env=env)


def is_pending(stage) -> bool:
    """Whether `dvc status` lists the entry (`Stage.changed`: a dep, an output or the command differs)."""
    return stage.changed()


def remove_outs(stage) -> None:
    """Delete the entry's outputs, as `Stage.run` does first (`Stage.remove_outs`)."""
    stage.remove_outs(ignore_remove=False, force=False)


def restore_from_run_cache(repo, stage) -> bool:
    """Put the entry's outputs back from the run-cache (`StageCache.restore`): True if a result for its deps and
    command is cached, else False (nothing changed)."""
    from dvc.stage.cache import RunCacheNotFoundError

    try:
        repo.stage_cache.restore(stage)
    except RunCacheNotFoundError:
        return False
    return True


def save_deps(stage) -> None:
    """Hash the entry's deps into the stage (`Stage.save_deps`): a folder's tree of file md5s included."""
    stage.save_deps()


def save_outs_and_commit(repo, stage, run_cache: bool) -> None:
    """The rest of `Stage.save` and then `Stage.commit`: hash the outputs, the stage's md5, the run-cache record
    (only with `run_cache`, and never for a stage with uncached outputs other than metrics and plots, as DVC does),
    then the outputs into the cache."""
    stage.save_outs()
    stage.md5 = stage.compute_md5()
    uncached = any(not out.use_cache for out in stage.outs if not (out.is_metric or out.is_plot))
    if run_cache and not uncached:
        repo.stage_cache.save(stage)
    stage.commit()


def write_lock(stages: list) -> None:
    """dvc.lock with `stages` updated in it, in one write (`ProjectFile.dump_stages`)."""
    if stages:
        stages[0].dvcfile.dump_stages(stages, update_pipeline=False)


def dep_hashes(stage, suffix: str, folders: tuple[str, ...]) -> dict[str, str]:
    """The entry's dep files ending in `suffix` -> their md5 as DVC last hashed them (`save_deps`): such files
    listed as deps, and each such file inside a dep folder whose first path part is in `folders` (DVC records a
    folder as one hash; its tree, `dep.obj`, holds each file's md5). A folder whose tree this process has not
    built stands as one entry, its own hash, so that it can match nothing but itself."""
    hashes = {}
    for dep in stage.deps:
        path = str(dep.def_path)
        if path.endswith(suffix) and dep.hash_info:
            hashes[path] = dep.hash_info.value
        elif path.split("/")[0] in folders and dep.hash_info and dep.hash_info.isdir:
            if dep.obj is None:
                hashes[path] = dep.hash_info.value
                continue
            for key, (_, file_hash) in dep.obj.iteritems():
                if key[-1].endswith(suffix):
                    hashes["/".join((path, *key))] = file_hash.value
    return hashes


def uncached_out_objects(repo, names: set[str]) -> list:
    """The hash objects of the `cache: false` outputs of the stages named `names` (their metrics files), which
    `dvc push` leaves out but a clone needs to restore those stages from the run-cache."""
    return [
        out.hash_info
        for stage in repo.index.stages
        if stage.addressing in names
        for out in stage.outs
        if not out.use_cache and out.hash_info
    ]


def push_objects(repo, objs: list) -> None:
    """Send `objs` from the cache to the default remote (`DataCloud.push`)."""
    if objs:
        repo.cloud.push(objs)


def locked_entries(repo) -> dict[str, dict]:
    """dvc.lock's stages -> their data, as on disk (`Lockfile.load`)."""
    import os

    from dvc.dvcfile import Lockfile

    return Lockfile(repo, os.path.join(repo.root_dir, "dvc.lock")).load().get("stages", {})


def remove_locked(repo, entries: dict[str, dict]) -> list[str]:
    """What `dvc remove` does for stages dvc.yaml no longer makes (it refuses those): each entry of dvc.lock in
    `entries` built from its dvc.lock data (`StageLoader.load_stage`), its outputs removed with their .gitignore
    lines (every output taken as cached, so that its line goes too), then those entries deleted from dvc.lock in
    one write (`modify_yaml`). Returns, per entry, a line naming what was removed."""
    import os

    from dvc.dvcfile import load_file
    from dvc.stage.loader import StageLoader
    from dvc.utils.serialize import modify_yaml

    dvcfile = load_file(repo, os.path.join(repo.root_dir, "dvc.yaml"))
    removed = []
    for name, data in entries.items():
        definition = {"cmd": data["cmd"], "outs": [out["path"] for out in data.get("outs", [])]}
        stage = StageLoader.load_stage(dvcfile, name, definition, data)
        stage.remove_outs(ignore_remove=True, force=True)
        removed.append(f"{name}: removed {', '.join(str(out) for out in stage.outs) or 'no outputs'}")
    with modify_yaml(os.path.join(repo.root_dir, "dvc.lock"), fs=repo.fs) as lock:
        for name in entries:
            del lock["stages"][name]
    return removed


def reload(repo) -> None:
    """Have `repo` read dvc.yaml and dvc.lock again (`Repo._reset`), after this process changed them."""
    repo._reset()


def downstream(repo, stage: str) -> list[str]:
    """The stages that read the outputs of a matrix stage's entries (directly or not), upstream first."""
    import networkx as nx

    graph = repo.index.graph  # edges run from a stage to the stages whose outputs it reads
    entries = [s for s in graph if s.addressing.startswith(f"{stage}@")]
    readers = set().union(*(nx.ancestors(graph, s) for s in entries)) - set(entries)
    return [s.addressing for s in reversed(list(nx.topological_sort(graph))) if s in readers]


def reproduce_alone(repo, targets: list[str], env: dict[str, str] | None) -> None:
    """`dvc repro --single-item <targets>` in this process: each target alone, not what it reads."""
    repo.reproduce(targets, single_item=True, run_env=env)


def code_md5s(root: Path, folders: tuple[str, ...]) -> dict[str, str]:
    """The md5 of every `.py` file under `root`'s `folders` (relative POSIX path -> md5), by DVC's own file hashing
    (dvc_data's `file_md5`, the md5 dvc.lock records for a dep); the same as
    imgclf.training.checkpoint.code_hashes, without importing the training code (which takes seconds)."""
    from dvc_data.hashfile.hash import file_md5

    files = sorted(p for folder in folders for p in (root / folder).rglob("*.py") if p.is_file())
    return {p.relative_to(root).as_posix(): file_md5(str(p), name="md5") for p in files}


def dep_snapshot(stage) -> dict[str, object]:
    """Each dep of the entry (a file, a folder, params.yaml's keys) -> its hash as last saved (`save_deps`): the
    hashes of what the command is about to run on."""
    return {str(dep.def_path): dep.hash_info for dep in stage.deps}


def changed_dep(stage, snapshot: dict[str, object]) -> str | None:
    """The first dep whose hash, as just saved, is not the one in `snapshot` (with the params that differ named);
    None when all match."""
    for dep in stage.deps:
        path, before = str(dep.def_path), snapshot.get(str(dep.def_path))
        if dep.hash_info != before:
            old, new = getattr(before, "value", None), dep.hash_info.value
            if isinstance(old, dict) and isinstance(new, dict):
                keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
                return f"{path} ({', '.join(keys)})"
            return path
    return None
