"""`make sweep`: the pending sweep entries, trained by warm workers (imgclf/pool.py) and each recorded in DVC as
`dvc repro` would record it, with dvc.lock written once.

DVC runs one stage at a time per workspace (iterative/dvc#755), and every stage is a fresh process that imports
torch, timm, fastai and DVCLive again: 4 s here, for 1-3 s of training of a small model. Here this process holds
the DVC repository, and its lock for the whole sweep (the workers run no DVC command, and no other DVC process
can then write these outputs meanwhile), and does for each pending entry what DVC's `Stage.run` does, in its
order and with its functions: remove the outputs; restore them from the run-cache when it has them
(`StageCache.restore`), or else save the deps and have a warm worker run the command (the one step replaced:
the worker calls the same `stages.sweep.main` with the command's arguments, in the workspace); then `save` (the
hashes of the outputs, and the run-cache record) and `commit` (the outputs into the cache). dvc.lock is written
once, at the end or when stopped: each write rewrites the whole file, 24 s on 2 cores with the zoo recorded. An
entry is in the run-cache as soon as it is saved, so after a kill -9 the next run restores it, not trains it.

- The workers start first, while DVC works out what is pending (the status of the shard's entries, in this
  process) and brings the sweep's inputs (params check, decoded dataset) up to date if they are not.
- Order: with more entries than workers, the largest architectures go first (forward FLOPs at the training size,
  counted on the meta device by the workers, a share each: 0.05-0.15 s per tiny model, about 0.3 s per zoo
  architecture, so some 6 minutes of one core for all 1,102): otherwise the longest entry may start last and
  train alone while the other workers wait. With one worker the order changes nothing and nothing is counted.
- GPUs: worker k (0-based) gets `CUDA_VISIBLE_DEVICES` = the k-th visible GPU modulo their number (`PER_GPU` of
  them may share one). An entry that runs out of GPU memory while sharing (exit 75) runs again at the end, alone
  on a GPU, after every other worker has stopped (idle warm workers hold GPU memory, and NVML counts them).
- Failures: an entry whose stage fails (a non-zero exit) or whose worker dies is reported with its log
  (`.dvc/tmp/sweep-logs/<entry>.log`) and nothing of it is recorded; the others go on, and a rerun trains only
  what is still pending. Ctrl-C (or SIGTERM) kills the workers and records what finished.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import yaml

from imgclf.common import PipelineError
from imgclf.pool import STAGE_MODULE, Slot, WorkerDied

log = logging.getLogger(__name__)

STAGE = "sweep"  # the matrix stage in dvc.yaml: its entries are `sweep@<key>`
LOG_DIR = Path(".dvc/tmp/sweep-logs")  # under .dvc/tmp: git-ignored, DVC's own scratch space
OOM_EXIT = 75  # the sweep stage's exit code for "out of GPU memory while sharing the GPU": retry alone
SHARD_RE = re.compile(r"^(\d+)/(\d+)$")


def parse_shard(text: str) -> tuple[int, int]:
    """`i/K` -> (i, K), with 1 <= i <= K."""
    m = SHARD_RE.match(text.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise PipelineError(
            f"SHARD={text!r} should be i/K with 1 <= i <= K, e.g. SHARD=1/2 and SHARD=2/2 on two machines."
        )
    return int(m.group(1)), int(m.group(2))


def shard_entries(entries: list, index: int, count: int) -> list:
    """The `index`-th (1-based) of `count` disjoint shards of `entries`, every count-th one: the shards cover the
    list, each gets a mix of early (often larger) and late entries, and the same dvc.yaml and params.yaml give the
    same shards on every machine."""
    return entries[index - 1 :: count]


def visible_gpus(env: dict[str, str] | None = None) -> list[str]:
    """The GPUs workers may use: CUDA_VISIBLE_DEVICES when set (empty = none), else what `nvidia-smi -L` lists."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    res = subprocess.run(["nvidia-smi", "-L"], check=False, capture_output=True, text=True)
    return [str(i) for i, line in enumerate(res.stdout.splitlines()) if line.startswith("GPU ")]


def worker_envs(jobs: int, gpus: list[str], per_gpu: int, env: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The extra environment of each worker: worker k gets GPU k modulo their number, so workers spread evenly;
    at most `per_gpu` share one GPU. Several workers share the CPU's cores, so their OpenMP threads wait passively
    (OMP_WAIT_POLICY=PASSIVE, unless `env`, this process's environment, sets it): by default an idle OpenMP thread
    spins and takes a core from another worker (JOBS=2 x base.threads=2 on 2 cores trained 3 demo entries in 60 s,
    and in 18 s with it). How threads wait changes no result: the weights are the same, bit for bit."""
    env = os.environ if env is None else env
    if jobs < 1 or per_gpu < 1:
        raise PipelineError(f"JOBS={jobs} and PER_GPU={per_gpu} should both be at least 1.")
    shared = {"OMP_WAIT_POLICY": "PASSIVE"} if jobs > 1 and "OMP_WAIT_POLICY" not in env else {}
    if not gpus:
        return [dict(shared) for _ in range(jobs)]
    if jobs > len(gpus) * per_gpu:
        raise PipelineError(
            f"JOBS={jobs} is more than {len(gpus)} GPU(s) x PER_GPU={per_gpu}: raise PER_GPU to run "
            "several jobs on one GPU (small models leave a GPU mostly idle), or lower JOBS."
        )
    return [{**shared, "CUDA_VISIBLE_DEVICES": gpus[k % len(gpus)]} for k in range(jobs)]


def threads_warning(jobs: int, threads: int, cores: int) -> str | None:
    """A warning when `jobs` CPU workers of `threads` torch threads each (0 = torch's default, one per core) ask
    for more threads than there are cores; None when they fit."""
    per_job = threads or cores
    if jobs * per_job <= cores:
        return None
    return (
        f"JOBS={jobs} x base.threads={threads or f'0 (= {cores} cores)'} = {jobs * per_job} threads on {cores} "
        "cores: the jobs will slow each other down. Lower JOBS, or set base.threads (it changes the weights, "
        "so the sweep never overrides it)."
    )


def workspace_params(ws: Path) -> dict[str, Any]:
    """The workspace's params.yaml."""
    path = ws / "params.yaml"
    if not path.is_file():
        raise PipelineError(f"no params.yaml in {ws}: point WORKSPACE at a DVC workspace of this project.")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def entry_args(stage) -> list[str]:
    """The arguments of an entry's `python -m stages.sweep <args>` command, which a worker passes to the stage's
    main()."""
    cmd = shlex.split(stage.cmd) if isinstance(stage.cmd, str) else []
    if cmd[:3] != ["python", "-m", STAGE_MODULE]:
        raise PipelineError(
            f"{stage.addressing}'s command in dvc.yaml is {stage.cmd!r}: the sweep's workers run "
            f"`python -m {STAGE_MODULE} ...` commands only. Restore dvc.yaml's sweep stage."
        )
    return cmd[3:]


def entry_arch(stage) -> str:
    """The architecture an entry trains: its command's `--arch`."""
    args = entry_args(stage)
    return args[args.index("--arch") + 1]


def entry_key(stage) -> str:
    """`sweep@resnet18` -> `resnet18`: the entry's name in logs."""
    return stage.addressing.partition("@")[2]


def run_sweep(ws: Path, jobs: int | None = None, shard: str | None = None, per_gpu: int = 1) -> list[str]:
    """Train the pending entries of the sweep (of one shard `i/K` if given) on `jobs` warm workers and record
    each in DVC; with a shard, then push outputs and run-cache to the default remote. Returns the pending
    entries' names; raises PipelineError naming the failed ones."""
    from dvc.repo import Repo, lock_repo

    for name in ("dvc", "dvc_objects", "dvc_data"):  # importing DVC gave them its own handlers, as `dvc` prints
        logging.getLogger(name).propagate = False
    ws = ws.resolve()
    gpus = visible_gpus()
    jobs = jobs or max(1, len(gpus) * per_gpu)
    envs = worker_envs(jobs, gpus, per_gpu)
    params = workspace_params(ws)
    if not gpus and (warning := threads_warning(jobs, int(params["base"]["threads"]), len(os.sched_getaffinity(0)))):
        log.warning(warning)
    start = time.perf_counter()
    # DVC resolves some paths from the working directory
    with contextlib.chdir(ws), Pool(ws, envs) as pool, _sigterm_as_interrupt(), _dvc_errors_as_messages(ws):
        with Repo(str(ws)) as repo, lock_repo(repo):
            entries = _entries(repo, shard)
            pending = [s for s in entries if s.changed()]
            log.info(
                "%d of %d sweep entries pending%s (status in %.1f s): %s",
                len(pending),
                len(entries),
                f" in shard {shard}" if shard else "",
                time.perf_counter() - start,
                ", ".join(entry_key(s) for s in pending) or "none",
            )
            recorder = Recorder(repo)
            try:
                # with one worker, or a worker for each entry, the order changes nothing
                order = pool.largest_first(pending, params["train"]["img_size"]) if len(pending) > jobs > 1 else pending
                failed, oom = pool.run(order, recorder)
                pool.close()
                if oom:  # out of GPU memory while sharing a GPU: once more, alone on it
                    log.info("out of GPU memory while sharing: running %s again, alone", ", ".join(map(entry_key, oom)))
                    failed |= Pool(ws, _one_per_gpu(envs)).run_all(oom, recorder)
            except BaseException as e:
                pool.close()  # before the write below: no worker goes on meanwhile
                if isinstance(e, KeyboardInterrupt):
                    log.warning("interrupted: workers stopped, %d finished entries recorded", len(recorder.done))
                raise
            finally:
                recorder.write_lock()
            names = [s.addressing for s in entries]
    if shard:
        push_results(ws, [n for n in names if n not in failed])
    if failed:
        lines = "".join(f"\n  {name}: {why}" for name, why in failed.items())
        raise PipelineError(
            f"{len(failed)} of {len(pending)} sweep entries failed; the others are recorded:{lines}\n"
            "Fix the cause and rerun: only what is still pending runs."
        )
    return [entry_key(s) for s in pending]


def _entries(repo, shard: str | None) -> list:
    """The sweep's entries (of `shard`), after bringing what they read up to date (the params check, the decoded
    dataset): otherwise every entry would be pending on a stale input, and trained on it."""
    import networkx as nx
    from dvc.exceptions import DvcException

    def collect() -> list:
        found = [s for s in repo.index.stages if s.addressing.startswith(f"{STAGE}@")]
        return shard_entries(found, *parse_shard(shard)) if shard else found

    entries = collect()
    graph = repo.index.graph  # edges run from a stage to the stages whose outputs it reads
    upstream = set().union(*(nx.descendants(graph, s) for s in entries)) - set(entries)
    stale = sorted(s.addressing for s in upstream if s.changed())
    if not stale:
        return entries
    log.info("bringing %s up to date first (the sweep reads their outputs)", ", ".join(stale))
    try:
        repo.reproduce(stale, run_env={"PATH": _venv_path()})
    except DvcException as e:
        raise PipelineError(f"the sweep's inputs could not be brought up to date: {e} (DVC's output is above)") from e
    return collect()  # from a new index: DVC reloads it after running a stage


def _venv_path() -> str:
    """PATH with this Python's folder first: stages run `python`, which must be this venv's."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def by_flops(entries: list, flops: dict[str, float | None]) -> list:
    """`entries` by their architecture's FLOPs, largest first, unknown (None) before all (it may be large);
    otherwise in their given order (the seeds of one architecture stay together)."""
    return sorted(entries, key=lambda s: -math.inf if flops[entry_arch(s)] is None else -flops[entry_arch(s)])


def _one_per_gpu(envs: list[dict[str, str]]) -> list[dict[str, str]]:
    return list({env.get("CUDA_VISIBLE_DEVICES"): env for env in envs}.values())


class Recorder:
    """What DVC's `Stage.run` does around a stage's command, for one entry at a time, and the one write of
    dvc.lock for all of them at the end."""

    def __init__(self, repo):
        self.repo = repo
        self.done: list = []

    def restore_or_prepare(self, stage) -> bool:
        """Remove the entry's outputs, then restore them from the run-cache (True: recorded, nothing to train),
        or save its deps for the run (False)."""
        from dvc.stage.cache import RunCacheNotFoundError

        stage.remove_outs(ignore_remove=False, force=False)
        try:
            self.repo.stage_cache.restore(stage)
        except RunCacheNotFoundError:
            stage.save_deps()
            return False
        self.record(stage)
        return True

    def record(self, stage) -> None:
        """After the command: the outputs' hashes and the run-cache record (`save`), the outputs into the cache
        (`commit`). An interrupt waits for it to finish."""
        with _interrupts_deferred():
            no_cache_outs = any(not out.use_cache for out in stage.outs if not (out.is_metric or out.is_plot))
            stage.save(run_cache=not no_cache_outs)
            stage.commit()
            self.done.append(stage)

    def write_lock(self) -> None:
        """dvc.lock with every recorded entry, in one write."""
        if not self.done:
            return
        start = time.perf_counter()
        with _interrupts_deferred():
            self.done[0].dvcfile.dump_stages(self.done, update_pipeline=False)
        log.info("dvc.lock: %d entries recorded in one write (%.1f s)", len(self.done), time.perf_counter() - start)


class Pool:
    """The warm workers (one `Slot` each, with its environment): started at once, each handed the next entry as
    soon as it is free."""

    def __init__(self, ws: Path, envs: list[dict[str, str]]):
        self.ws, self.envs = ws, envs
        self.slots: list[Slot | None] = [Slot(k, ws, env) for k, env in enumerate(envs)]

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End the workers, whatever they run."""
        for slot in self.slots:
            if slot is not None:
                slot.close()
        self.slots = [None] * len(self.slots)

    def largest_first(self, entries: list, img_size: int | None) -> list:
        """`entries` from the largest architecture to the smallest by forward FLOPs (imgclf.pool.forward_flops,
        each worker counting a share), those of unknown size first, seeds of one architecture together: the
        longest entries start first, so the sweep does not end with one long entry training alone while the other
        workers wait (largest-first list scheduling). The given order if a worker dies while counting."""
        archs, n = sorted({entry_arch(s) for s in entries}), len(self.slots)
        shares = {k: archs[k::n] for k in range(n) if archs[k::n]}
        slots = {k: self._slot(k) for k in shares}  # warm
        start = time.perf_counter()
        counting = {k: slots[k].count_flops(share, img_size) for k, share in shares.items()}
        flops: dict[str, float | None] = {}
        for k, future in counting.items():
            try:
                flops |= future.result()
            except BrokenProcessPool:
                self._result(k, future)  # ends it; the slot starts again when next needed
        if len(flops) < len(archs):
            log.warning("a worker died while counting the architectures' FLOPs: entries in params.yaml's order")
            return entries
        order = by_flops(entries, flops)
        log.info(
            "largest first (forward FLOPs of %d architectures counted in %.1f s): %s",
            len(archs),
            time.perf_counter() - start,
            ", ".join(entry_key(s) for s in order[:5]) + (", ..." if len(order) > 5 else ""),
        )
        return order

    def run_all(self, entries: list, recorder: Recorder) -> dict[str, str]:
        """`run` with no retry: an entry out of memory while sharing is a failure too. Stops the workers."""
        with self:
            failed, oom = self.run(entries, recorder)
        return failed | {s.addressing: "out of GPU memory while sharing the GPU, even alone" for s in oom}

    def run(self, entries: list, recorder: Recorder) -> tuple[dict[str, str], list]:
        """Each entry restored from the run-cache or trained by a free worker, then recorded; a finished entry is
        recorded once the free workers have their next entries, so that they train meanwhile. Returns ({failed
        entry: why}, the entries out of GPU memory while sharing it)."""
        todo, running, finished = deque(entries), {}, deque()
        failed: dict[str, str] = {}
        oom: list = []
        try:
            while todo or running or finished:
                busy = {k for k, _ in running.values()}
                free = [k for k in range(len(self.slots)) if k not in busy]
                while todo and free:
                    stage = todo.popleft()
                    if recorder.restore_or_prepare(stage):
                        continue
                    k = free.pop(0)
                    slot, log_file = self._slot(k), self.ws / LOG_DIR / f"{entry_key(stage)}.log"
                    log.info("Running stage '%s' on worker %d (log: %s)", stage.addressing, k, log_file)
                    running[slot.submit(entry_args(stage), log_file)] = (k, stage)
                while finished:
                    self._record(*finished.popleft(), recorder, failed, oom)
                if running:
                    done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    for future in done:
                        k, stage = running.pop(future)
                        finished.append((stage, self._result(k, future)))
        finally:  # interrupted: what finished is recorded all the same
            while finished:
                self._record(*finished.popleft(), recorder, failed, oom)
        return failed, oom

    def _slot(self, k: int) -> Slot:
        """Slot k, warm (started again if it retired)."""
        if self.slots[k] is None:
            self.slots[k] = Slot(k, self.ws, self.envs[k])
        slot = self.slots[k]
        if slot.pid is None:
            try:
                slot.wait_ready()
            except (WorkerDied, RuntimeError) as e:
                raise PipelineError(str(e)) from None
            log.info("worker %d ready in %.1f s (pid %d)", k, slot.warm_s, slot.pid)
        return slot

    def _result(self, k: int, future: cf.Future) -> dict[str, Any]:
        """What a worker says of the entry it ran (`run_entry`'s result; code None: the worker died); a worker that
        died or retires is ended, and started again when its slot is next needed."""
        try:
            result = future.result()
        except BrokenProcessPool:
            result = {"code": None, "retire": True}
        if result["retire"]:
            self.slots[k].close()
            self.slots[k] = None
        return result

    def _record(self, stage, result: dict[str, Any], recorder: Recorder, failed: dict[str, str], oom: list) -> None:
        """Record a finished entry in DVC, or note why it failed (in `failed`) or that it ran out of GPU memory
        while sharing (in `oom`)."""
        from dvc.exceptions import DvcException

        log_file = self.ws / LOG_DIR / f"{entry_key(stage)}.log"
        if result["code"] is None:
            failed[stage.addressing] = f"its worker died while training it (a crash or a kill); log: {log_file}"
        elif result["code"] == OOM_EXIT:
            oom.append(stage)
        elif result["code"] != 0:
            failed[stage.addressing] = f"{log_file} (exit {result['code']})"
        else:
            try:
                recorder.record(stage)
            except DvcException as e:
                failed[stage.addressing] = f"ran, but DVC could not record it ({e}); log: {log_file}"
                return
            log.info("%s: %s in %.1f s", stage.addressing, _outcome(stage), result["seconds"])


def _outcome(stage) -> str:
    """What the entry's metrics file says, in a few words."""
    args = entry_args(stage)
    try:
        record = json.loads(Path(args[args.index("--metrics") + 1]).read_text())
    except (ValueError, OSError, IndexError):
        return "done"
    if record.get("status") == "ok":
        return f"accuracy {record['accuracy']:.4f}"
    return f"{record.get('status')}: {record.get('reason')}"


@contextlib.contextmanager
def _interrupts_deferred():
    """Ctrl-C and SIGTERM wait until the block is done (a record or dvc.lock half-written helps no one), then
    interrupt."""
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _: caught.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _dvc_errors_as_messages(ws: Path):
    """An error DVC raises (its lock held by another DVC process, a broken dvc.yaml) as one message, as the `dvc`
    command would print it."""
    from dvc.exceptions import DvcException

    try:
        yield
    except DvcException as e:
        raise PipelineError(f"DVC failed in {ws}: {e}") from None


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a batch scheduler's stop) stops the sweep as Ctrl-C does: what finished is recorded."""

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def push_results(ws: Path, names: list[str]) -> None:
    """`dvc push --run-cache`, plus the objects of the entries' `cache: false` outputs (their metrics files).
    `dvc push` sends the run-cache's records and the workspace's cached outputs only, but a clone restores an
    entry from the run-cache only if it can fetch every output's object, these included: DVC keeps them in
    its cache for the run-cache."""
    from dvc.repo import Repo

    env = {**os.environ, "PATH": _venv_path()}
    res = subprocess.run([sys.executable, "-m", "dvc", "push", "--run-cache"], cwd=ws, env=env, check=False)
    if res.returncode:
        raise PipelineError(f"`dvc push --run-cache` failed in {ws} (its output is above): fix it and rerun.")
    targets = set(names)
    with contextlib.chdir(ws), Repo(str(ws)) as repo:
        objs = [
            out.hash_info
            for stage in repo.index.stages
            if stage.addressing in targets
            for out in stage.outs
            if not out.use_cache and out.hash_info
        ]
        if objs:
            repo.cloud.push(objs)
