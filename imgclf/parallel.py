"""The sweep in parallel: the pending `sweep@<arch>` entries run N at a time on DVC's experiment queue, and
their results come back through DVC's run-cache.

DVC runs one stage at a time per workspace (iterative/dvc#755). Its experiment queue (Celery, installed with
DVC) runs each queued experiment in its own temporary copy of the repository, and those copies share the
workspace's cache, run-cache included. So one experiment per pending entry (`dvc exp run --queue sweep@<arch>`),
N queue workers (`dvc queue start`), and then `dvc repro sweep@<arch>...` in the workspace (through DVC's Python
API, writing dvc.lock once) restores every finished entry from the run-cache instead of training it. No
scheduler, server or lock of our own. With one job there is nothing to run in parallel: the same in-process
`dvc repro` trains the entries here, one after another, without the queue's clone and commit per entry.

- Queued experiments see only what git tracks (iterative/dvc#8854), plus the changes to tracked files: the
  sweep's data stages must be up to date here and `dvc.lock` tracked, or every job would run them again.
- GPUs: worker k (1-based) is started alone with `CUDA_VISIBLE_DEVICES` = the (k-1)-th visible GPU, modulo
  their number; DVC's workers pass their environment on to the stages they run.
- A failed entry does not stop the others; its log is kept in `.dvc/tmp/sweep-logs/<arch>.log`. An entry
  that exits with 75 (out of GPU memory while sharing the GPU) is run again alone at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from imgclf.common import PipelineError

log = logging.getLogger(__name__)

EXP_PREFIX = "sweep-"  # experiment name of an entry: sweep-<arch>
LOG_DIR = Path(".dvc/tmp/sweep-logs")  # under .dvc/tmp: git-ignored, DVC's own scratch space
OOM_EXIT = 75  # the sweep stage's exit code for "out of GPU memory": retry alone
INTERRUPTED = (130, -2)  # a stage stopped by Ctrl-C (imgclf.common.run_main's exit code, or SIGINT's)
SHARD_RE = re.compile(r"^(\d+)/(\d+)$")


def parse_shard(text: str) -> tuple[int, int]:
    """`i/K` -> (i, K), with 1 <= i <= K."""
    m = SHARD_RE.match(text.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise PipelineError(
            f"SHARD={text!r} should be i/K with 1 <= i <= K, e.g. SHARD=1/2 and SHARD=2/2 on two machines."
        )
    return int(m.group(1)), int(m.group(2))


def shard_archs(archs: list[str], index: int, count: int) -> list[str]:
    """The `index`-th (1-based) of `count` disjoint shards of `archs`, every count-th entry: the shards cover
    the list, and each gets a mix of early (often larger) and late entries."""
    return archs[index - 1 :: count]


def visible_gpus(env: dict[str, str] | None = None) -> list[str]:
    """The GPUs jobs may use: CUDA_VISIBLE_DEVICES when set (empty = none), else what `nvidia-smi -L` lists."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    res = subprocess.run(["nvidia-smi", "-L"], check=False, capture_output=True, text=True)
    return [str(i) for i, line in enumerate(res.stdout.splitlines()) if line.startswith("GPU ")]


def worker_envs(jobs: int, gpus: list[str], per_gpu: int) -> list[dict[str, str]]:
    """The extra environment of each queue worker: worker k gets GPU k modulo their number, so jobs spread
    evenly; at most `per_gpu` jobs share one GPU."""
    if jobs < 1 or per_gpu < 1:
        raise PipelineError(f"JOBS={jobs} and PER_GPU={per_gpu} should both be at least 1.")
    if not gpus:
        return [{} for _ in range(jobs)]
    if jobs > len(gpus) * per_gpu:
        raise PipelineError(
            f"JOBS={jobs} is more than {len(gpus)} GPU(s) x PER_GPU={per_gpu}: raise PER_GPU to run "
            "several jobs on one GPU (small models leave a GPU mostly idle), or lower JOBS."
        )
    return [{"CUDA_VISIBLE_DEVICES": gpus[k % len(gpus)]} for k in range(jobs)]


def threads_warning(jobs: int, threads: int, cores: int) -> str | None:
    """A warning when `jobs` CPU jobs of `threads` torch threads each (0 = torch's default, one per core) ask
    for more threads than there are cores; None when they fit."""
    per_job = threads or cores
    if jobs * per_job <= cores:
        return None
    return (
        f"JOBS={jobs} x base.threads={threads or f'0 (= {cores} cores)'} = {jobs * per_job} threads on {cores} "
        "cores: the jobs will slow each other down. Lower JOBS, or set base.threads (it changes the weights, "
        "so the sweep never overrides it)."
    )


def parse_queue_status(text: str) -> tuple[dict[str, str], int]:
    """`dvc queue status` output -> ({experiment name: status}, number of workers)."""
    tasks, workers = {}, 0
    for line in text.splitlines():
        fields = line.split()
        if line.startswith("Worker status:"):
            workers = sum(int(n) for n in re.findall(r"(\d+) (?:active|idle)", line))
        elif len(fields) >= 4 and fields[0] != "Task" and re.fullmatch(r"[0-9a-f]{7}", fields[0]):
            # Task  Name  Created (one or more words)  Status; a task queued without a name has none
            tasks[fields[1] if len(fields) >= 5 else fields[0]] = fields[-1]
    return tasks, workers


def exit_code_in_log(text: str) -> int | None:
    """The exit code of the failed stage command in a `dvc queue logs` text, if DVC reported one."""
    codes = re.findall(r"exited with (-?\d+)", text)
    return int(codes[-1]) if codes else None


class Dvc:
    """This venv's DVC in one workspace, with the venv first on PATH: stages call `python`, and DVC starts
    its queue workers as `dvc`."""

    def __init__(self, ws: Path):
        self.ws = ws
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, capture: bool = True, check: bool = True
    ) -> subprocess.CompletedProcess:
        # output goes through files, not pipes: `dvc queue start` leaves workers holding its stdout and stderr,
        # and reading a pipe would wait for them to exit
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            res = subprocess.run(
                [sys.executable, "-m", "dvc", *args],
                cwd=self.ws,
                env={**self.env, **(env or {})},
                stdout=out if capture else None,
                stderr=err if capture else None,
                text=True,
                check=False,
            )
            if capture:
                out.seek(0), err.seek(0)
                res.stdout, res.stderr = out.read(), err.read()
        if check and res.returncode:
            out = f"\n{res.stdout or ''}{res.stderr or ''}".rstrip() if capture else ""
            raise PipelineError(f"`dvc {' '.join(args[:4])}{' ...' if len(args) > 4 else ''}` failed in {self.ws}{out}")
        return res

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.ws, capture_output=True, text=True, check=True).stdout

    def queue_status(self) -> tuple[dict[str, str], int]:
        return parse_queue_status(self("queue", "status").stdout)


def sweep_params(ws: Path) -> tuple[list[str], int]:
    """`sweep.archs` and `base.threads` of the workspace's params.yaml."""
    path = ws / "params.yaml"
    if not path.is_file():
        raise PipelineError(f"no params.yaml in {ws}: point WORKSPACE at a DVC workspace of this project.")
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    return list(params["sweep"]["archs"]), int(params["base"]["threads"])


def job_inputs(ws: Path, targets: list[str]) -> tuple[list[str], set[str]]:
    """The stages upstream of the target stages, and the files and folders (relative to `ws`) that the targets
    and those stages read."""
    import networkx as nx
    from dvc.repo import Repo

    with contextlib.chdir(ws), Repo(str(ws)) as repo:  # DVC resolves some paths from the current directory
        graph = repo.index.graph  # edges run from a stage to the stages whose outputs it reads
        stages = [s for s in graph if s.addressing in targets]
        upstream = set().union(*(nx.descendants(graph, s) for s in stages)) - set(stages)
        deps = {os.path.relpath(dep.fs_path, repo.root_dir) for stage in upstream.union(stages) for dep in stage.deps}
        return sorted(s.addressing for s in upstream), deps


def check_visible_to_jobs(dvc: Dvc, deps: set[str]) -> None:
    """Queued experiments are made from git (the last commit plus changes to tracked files): refuse to start
    jobs that would not see the workspace's `dvc.lock` or a file they read (`deps`, from job_inputs)."""
    if not dvc.git("ls-files", "dvc.lock").strip():
        raise PipelineError(
            "dvc.lock is not tracked by git, and queued experiments see only what git tracks "
            "(DVC #8854): every job would rerun the data stages. Run `git add dvc.lock` (and commit "
            "it to share it), then rerun."
        )
    untracked = [
        f
        for f in dvc.git("ls-files", "--others", "--exclude-standard", "-z").split("\0")
        if f and any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)
    ]
    if untracked:
        shown = ", ".join(untracked[:10]) + (f" and {len(untracked) - 10} more" if len(untracked) > 10 else "")
        raise PipelineError(
            f"the sweep reads files git does not track in {dvc.ws}: {shown}. Queued experiments "
            "see only what git tracks (DVC #8854), so the jobs would miss them: `git add` them, then "
            "rerun."
        )


def check_queue_idle(dvc: Dvc) -> None:
    """Refuse to share the queue: `dvc exp run --run-all` would run other queued experiments too, and running
    workers keep the environment (GPU) they were started with. Remove leftovers of an earlier sweep."""
    tasks, workers = dvc.queue_status()
    busy = sorted(n for n, s in tasks.items() if s in ("Queued", "Running"))
    if busy or workers:
        raise PipelineError(
            f"DVC's experiment queue in {dvc.ws} is in use ({len(busy)} queued or running: "
            f"{', '.join(busy[:5]) or 'none'}; {workers} worker(s)). Wait for it (`dvc queue status`)"
            ", or clear it: `dvc queue stop`, `dvc queue remove --queued`."
        )
    ours = sorted(n for n in tasks if n.startswith(EXP_PREFIX))
    if ours:
        log.info("removing %d finished experiment(s) left by an earlier sweep", len(ours))
        dvc("exp", "remove", *ours)


def queue_experiments(ws: Path, archs: list[str]) -> None:
    """`dvc exp run --queue sweep@<arch> --name sweep-<arch>` for each entry, in this process: the same call
    the command makes, without DVC's start-up per entry (about 0.1 s per entry instead of 1-2 s)."""
    from dvc.repo import Repo

    logging.getLogger("kombu").setLevel(logging.ERROR)  # Celery's broker warns about its default host name
    with contextlib.chdir(ws), Repo(str(ws)) as repo:
        for arch in archs:
            repo.experiments.run(targets=[f"sweep@{arch}"], queue=True, name=EXP_PREFIX + arch)


def run_queue(dvc: Dvc, archs: list[str], envs: list[dict[str, str]]) -> dict[str, str]:
    """Queue one experiment per entry, start one worker per job with its environment, wait for them all, and
    return {arch: Success | Failed | ...}."""
    start = time.monotonic()
    queue_experiments(dvc.ws, archs)
    log.info("queued %d experiment(s) in %.1f s", len(archs), time.monotonic() - start)
    # one worker at a time: `dvc queue start -j k` starts only the missing worker k, with this environment
    for k, env in enumerate(envs, start=1):
        dvc("queue", "start", "--jobs", str(k), env=env)
    # blocks until every queued experiment is done, showing their logs; its exit status ignores failures
    try:
        dvc("exp", "run", "--run-all", "--jobs", str(len(envs)), capture=False, check=False)
    except KeyboardInterrupt:
        raise PipelineError(
            "interrupted: the queued jobs go on in the background (`dvc queue status`). Stop them "
            "with `dvc queue stop --kill`, then rerun `make sweep`: it removes what they left and runs "
            "what is still pending."
        ) from None
    log.info("the jobs ran in %.1f s", time.monotonic() - start)
    stop_workers(dvc)
    tasks, _ = dvc.queue_status()
    return {arch: tasks.get(EXP_PREFIX + arch, "Unknown") for arch in archs}


def stop_workers(dvc: Dvc, timeout_s: float = 120) -> None:
    """Stop the queue's workers and wait until none is left. An idle worker lingers about 10 s: one left from
    a batch would take the next batch's first job (the out-of-memory rerun, meant to run alone) with its own
    environment, before `dvc exp run --run-all` follows it; the test suite once saw that call then wait forever."""
    dvc("queue", "stop", check=False)
    deadline = time.monotonic() + timeout_s
    while dvc.queue_status()[1]:
        if time.monotonic() > deadline:
            raise PipelineError(
                f"DVC's queue workers in {dvc.ws} did not stop within {timeout_s:.0f} s of `dvc queue stop`: "
                "see `dvc queue status`; `dvc queue stop --kill` ends them."
            )
        time.sleep(1)


def keep_logs(dvc: Dvc, archs: list[str]) -> dict[str, tuple[Path, int | None]]:
    """Save each entry's queue log under LOG_DIR; {arch: (log file, the stage's exit code)}."""
    out = {}
    for arch in archs:
        res = dvc("queue", "logs", EXP_PREFIX + arch, check=False)
        path = dvc.ws / LOG_DIR / f"{arch}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(res.stdout + res.stderr)
        out[arch] = (path, exit_code_in_log(res.stdout))
    return out


def reproduce_here(dvc: Dvc, archs: list[str], env: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """`dvc repro --keep-going sweep@<arch>...` in the workspace, run in this process through DVC's Python API
    with one difference: dvc.lock is written once, at the end (or when stopped), instead of after every entry.
    With the whole zoo recorded each write parses and dumps 113,000 lines: 24 s on 2 cores (README "Running the
    whole zoo"). What finished is in the run-cache anyway, so an entry not yet recorded when the process dies
    is restored, not trained, by the next run. Entries the run-cache has (what the queue's jobs trained) are
    checked out; the others are trained here, with `env` (the job's GPU). Returns (the entries trained here,
    those that failed)."""
    if not archs:
        return [], []
    from dvc.exceptions import DvcException, ReproductionError
    from dvc.repo import Repo, lock_repo

    done: list = []
    failed: list[str] = []

    def reproduce(stage, **kwargs):  # dvc.repo.reproduce._reproduce_stage, without its write of dvc.lock
        try:
            result = stage.reproduce(**kwargs)
        except Exception as e:
            failed.append(stage.addressing)
            if exit_code_in_log(str(e)) in INTERRUPTED:  # Ctrl-C: DVC ignores it, the stage did not
                raise KeyboardInterrupt from None
            raise  # DVC logs it and goes on with the others (keep-going)
        if result is not None:
            done.append(result)
        return result

    # the stages' `python` is this venv's, as in the dvc commands above
    run_env = {"PATH": dvc.env["PATH"], **(env or {})}
    try:
        with contextlib.chdir(dvc.ws), Repo(str(dvc.ws)) as repo, lock_repo(repo), _StagesRun() as output:
            try:
                targets = [f"sweep@{a}" for a in archs]
                repo.reproduce(targets, repro_fn=reproduce, on_error="keep-going", run_env=run_env)
            except ReproductionError:
                pass  # `failed` names them
            finally:
                if done:
                    done[0].dvcfile.dump_stages(done, update_pipeline=False)
    except DvcException as e:  # what the `dvc repro` command would print as its error (a lock held, no stage)
        raise PipelineError(f"`dvc repro` of the sweep entries failed in {dvc.ws}: {e}") from None
    here = [a for a in archs if f"sweep@{a}" in output.ran]
    log.info("%d entries from the run-cache, %d trained here; dvc.lock written once", len(done) - len(here), len(here))
    return here, [a for a in archs if f"sweep@{a}" in failed]


class _StagesRun(logging.Handler):
    """While active, the stages DVC runs (its "Running stage '<name>':") rather than restores from the run-cache.
    DVC prints its messages itself: importing it sets up its loggers, on stdout as `dvc repro` shows them."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.ran: set[str] = set()
        self.logger = logging.getLogger("dvc.stage.run")

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("Running stage") and record.args:
            self.ran.add(str(record.args[0]))

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


def push_results(dvc: Dvc, archs: list[str]) -> None:
    """`dvc push --run-cache`, plus the objects of the entries' `cache: false` outputs (their metrics files).
    `dvc push` sends the run-cache's records and the workspace's cached outputs only, but a clone restores an
    entry from the run-cache only if it can fetch every output's object, these included: DVC keeps them in
    its cache for the run-cache."""
    from dvc.repo import Repo

    dvc("push", "--run-cache", capture=False)
    targets = {f"sweep@{a}" for a in archs}
    with contextlib.chdir(dvc.ws), Repo(str(dvc.ws)) as repo:
        objs = [
            out.hash_info
            for stage in repo.index.stages
            if stage.addressing in targets
            for out in stage.outs
            if not out.use_cache and out.hash_info
        ]
        if objs:
            repo.cloud.push(objs)


def run_sweep(ws: Path, jobs: int | None = None, shard: str | None = None, per_gpu: int = 1) -> list[str]:
    """Run the pending entries of `sweep.archs` (of one shard `i/K` if given) `jobs` at a time on DVC's queue and
    restore them into the workspace, or with one job here, one after another; with a shard, push outputs and
    run-cache to the default remote. Returns the pending entries; raises PipelineError naming the failed ones."""
    dvc = Dvc(ws.resolve())
    archs, threads = sweep_params(dvc.ws)
    if shard:
        archs = shard_archs(archs, *parse_shard(shard))
    gpus = visible_gpus()
    jobs = jobs or max(1, len(gpus) * per_gpu)
    envs = worker_envs(jobs, gpus, per_gpu)
    if not gpus and (warning := threads_warning(jobs, threads, len(os.sched_getaffinity(0)))):
        log.warning(warning)
    changed = json.loads(dvc("status", "--json").stdout or "{}")
    todo = [a for a in archs if f"sweep@{a}" in changed]
    log.info(
        "%d of %d sweep entries pending%s: %s",
        len(todo),
        len(archs),
        f" in shard {shard}" if shard else "",
        ", ".join(todo) or "none",
    )
    failed: dict[str, tuple[Path | None, int | None]] = {}
    if todo:
        upstream, deps = job_inputs(dvc.ws, [f"sweep@{a}" for a in todo])
        stale = [s for s in upstream if s in changed]
        if stale:  # run here, once, what the jobs need: otherwise every job would run them again
            log.info("bringing %s up to date first (the jobs need their outputs)", ", ".join(stale))
            dvc("repro", *stale, capture=False)
        if len(envs) == 1:  # one job: no queue, no clones; the entries run here, one after another
            _, failed_here = reproduce_here(dvc, todo, envs[0])
            failed = dict.fromkeys(failed_here, (None, None))
        else:
            failed = run_parallel(dvc, todo, envs, deps)
    if shard:
        push_results(dvc, [a for a in archs if a not in failed])
    if failed:
        lines = "".join(
            f"\n  sweep@{a}: "
            + (f"{path}" if path else "its output above")
            + (f" (exit {code})" if code is not None else "")
            for a, (path, code) in failed.items()
        )
        raise PipelineError(
            f"{len(failed)} of {len(todo)} sweep entries failed; the others are done. Logs:{lines}\n"
            "Fix the cause and rerun: only what is still pending runs."
        )
    return todo


def run_parallel(
    dvc: Dvc, todo: list[str], envs: list[dict[str, str]], deps: set[str]
) -> dict[str, tuple[Path | None, int | None]]:
    """The entries on DVC's queue, one worker per job, then back into the workspace: {failed arch: (its log,
    the stage's exit code)}. An entry out of GPU memory while sharing it runs again, alone."""
    check_queue_idle(dvc)
    check_visible_to_jobs(dvc, deps)
    status = run_queue(dvc, todo, envs)
    failed = keep_logs(dvc, [a for a, s in status.items() if s != "Success"])
    dvc("exp", "remove", *(EXP_PREFIX + a for a in todo if status[a] != "Unknown"), check=False)
    oom = [a for a, (_, code) in failed.items() if code == OOM_EXIT]
    if oom:  # out of memory while sharing a GPU: once more, alone
        log.info("out of GPU memory while sharing: running %s again, one at a time", ", ".join(oom))
        status.update(run_queue(dvc, oom, envs[:1]))
        failed = {a: failed[a] for a in failed if a not in oom} | keep_logs(
            dvc, [a for a in oom if status[a] != "Success"]
        )
        dvc("exp", "remove", *(EXP_PREFIX + a for a in oom if status[a] != "Unknown"), check=False)
    here, failed_here = reproduce_here(dvc, [a for a in todo if a not in failed])
    if here:
        log.warning("not found in the run-cache, so trained here one at a time: %s", ", ".join(here))
    return {**failed, **dict.fromkeys(failed_here, (None, None))}
