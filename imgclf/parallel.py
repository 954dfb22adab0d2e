"""`make sweep`: the pending sweep entries, trained by warm workers (imgclf/pool.py) and each recorded in DVC as
`dvc repro` would record it, with dvc.lock written once.

Why: DVC runs one stage at a time per workspace (iterative/dvc#755), and every stage is a fresh process that
imports torch, timm, fastai and DVCLive again, which can take longer than a small model's training. Each write of
dvc.lock rewrites the whole file, the slowest bookkeeping step at the zoo's size (docs/performance.md).

How: this process holds the DVC repository and its lock for the whole sweep (the workers run no DVC command), and
does for each pending entry what DVC's `Stage.run` does, in its order and with its functions: remove the outputs;
restore them from the run-cache (`StageCache.restore`), or else save the deps and have a warm worker run the
command (the one step replaced: the worker calls `stages.sweep.main` with the command's arguments, in the
workspace); then `save` (output hashes, run-cache record) and `commit`. An entry is in the run-cache as soon as it
is saved, so after a kill -9 the next run restores it. dvc.lock is written at the end, or when stopped.

- Before DVC parses anything, params.yaml (every architecture name included) and SHARD are validated (the
  message `check_params` gives); the entries that left params.yaml are named and kept (only `make prune` removes
  them, imgclf/prune.py). Once every entry is recorded (and with no shard), the stages that read
  the sweep run, each alone (`dvc repro --single-item plot export`).
- The workers start while DVC works out what is pending and brings the sweep's inputs up to date.
- Order: with more entries than workers, the largest architectures go first (forward FLOPs at the training size,
  counted on the meta device by the workers), so that the longest entry does not start last and train alone.
- GPUs: worker k gets `CUDA_VISIBLE_DEVICES` = the k-th visible GPU modulo their number (`PER_GPU` may share
  one), and `IMGCLF_GPU_SHARED=1` when another worker has the same GPU. An entry that runs out of GPU memory
  while sharing (exit 75) runs again at the end, alone on a GPU, after every other worker has stopped (idle warm
  workers hold GPU memory, and NVML counts them).
- Code, params, data: an entry is recorded only for what it ran on. The md5 of the code a worker runs is taken
  before the worker process starts (imgclf/pool.py); recording an entry compares its code files (a code folder's
  one by one) with those, and every dep's hash (params, data) with the one saved just before the entry ran. If
  one differs (edited during the sweep), nothing of the entry is recorded, it stays pending, and a warning names
  the dep and says to run `make sweep` again. A stale worker retires before its next entry and a fresh one
  imports the new code.
- Failures for the machine's sake (out of memory at the smallest batch, the time limit, a dead worker: the record
  says `machine_dependent`) are recorded in dvc.lock, so the plot shows them, but never in the run-cache, so no
  other machine restores them; `make sweep` trains them again, `dvc repro` does not.
- Other failures: an entry whose stage fails is reported with its log (`.dvc/tmp/sweep-logs/<entry>.log`) and
  nothing of it is recorded; the others go on. Ctrl-C (or SIGTERM) kills the workers and records what finished.
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

from imgclf import dvc_ops
from imgclf.common import CODE_FOLDERS, PipelineError, plural, write_json
from imgclf.metrics import accuracy_metrics
from imgclf.params import load_params
from imgclf.pool import STAGE, STAGE_MODULE, Slot, WorkerDied
from imgclf.prune import kept_stale, reproduce_downstream
from imgclf.training.device import CPU_SHARED_FLAG, RUNNER_FLAG

log = logging.getLogger(__name__)

LOG_DIR = Path(".dvc/tmp/sweep-logs")  # under .dvc/tmp: git-ignored, DVC's own scratch space
OOM_EXIT = 75  # the sweep stage's exit code for "out of GPU memory while sharing the GPU": retry alone
SHARED_FLAG = "IMGCLF_GPU_SHARED"  # set to 1 for the workers that share their GPU with another worker
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
    spins and takes a core from another worker. How threads wait changes no result: the weights are the same."""
    env = os.environ if env is None else env
    if jobs < 1 or per_gpu < 1:
        raise PipelineError(f"JOBS={jobs} and PER_GPU={per_gpu} should both be at least 1.")
    passive = {"OMP_WAIT_POLICY": "PASSIVE"} if jobs > 1 and "OMP_WAIT_POLICY" not in env else {}
    if not gpus:  # workers on the CPU share its cores: their inference timings would mean nothing
        return [{**passive, **({CPU_SHARED_FLAG: "1"} if jobs > 1 else {})} for _ in range(jobs)]
    if jobs > len(gpus) * per_gpu:
        raise PipelineError(
            f"JOBS={jobs} is more than {len(gpus)} GPU(s) x PER_GPU={per_gpu}: raise PER_GPU to run "
            "several jobs on one GPU (small models leave a GPU mostly idle), or lower JOBS."
        )
    gpu_of = [gpus[k % len(gpus)] for k in range(jobs)]
    # a worker whose GPU another worker uses is told so (imgclf.training.device.gpu_shared): out of memory, it
    # exits for a rerun alone instead of recording a failure; NVML cannot always see the other processes
    return [
        {**passive, "CUDA_VISIBLE_DEVICES": gpu, **({SHARED_FLAG: "1"} if gpu_of.count(gpu) > 1 else {})}
        for gpu in gpu_of
    ]


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
    """The workspace's params.yaml, validated as every stage validates it (`load_params`, from the workspace: a
    bad file gives the same message as `python -m stages.check_params` there)."""
    if not (ws / "params.yaml").is_file():
        raise PipelineError(f"no params.yaml in {ws}: point WORKSPACE at a DVC workspace of this project.")
    with contextlib.chdir(ws):
        return load_params()


def checked_params(ws: Path, shard: str | None = None) -> dict[str, Any]:
    """`workspace_params`, every architecture name checked (`check_params`) and the make variable SHARD parsed:
    all of what `make sweep` and `make prune` are given, validated before either touches anything."""
    from imgclf.training.archs import check_params

    params = workspace_params(ws)
    with contextlib.chdir(ws):
        check_params(params)
    if shard is not None:
        parse_shard(shard)
    return params


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
    """Train and record the pending sweep entries (of one shard `i/K` if given) on `jobs` warm workers, as the
    module's docstring says; with a shard, push outputs and run-cache to the default remote instead of running the
    plot (it waits for every shard). Returns the pending entries' names; raises PipelineError naming the failed."""
    ws = ws.resolve()
    params = checked_params(ws, shard)  # first: bad input is one message, and nothing is touched
    for name in ("dvc", "dvc_objects", "dvc_data"):  # importing DVC gave them its own handlers, as `dvc` prints
        logging.getLogger(name).propagate = False
    gpus = visible_gpus()
    jobs = jobs or max(1, len(gpus) * per_gpu)
    envs = worker_envs(jobs, gpus, per_gpu)
    if not gpus and (warning := threads_warning(jobs, int(params["base"]["threads"]), len(os.sched_getaffinity(0)))):
        log.warning(warning)
    start = time.perf_counter()
    # DVC resolves some paths from the working directory
    with contextlib.chdir(ws), Pool(ws, envs) as pool, _sigterm_as_interrupt(), _dvc_errors_as_messages(ws):
        with dvc_ops.locked_repo(ws) as repo:
            kept_stale(repo)
            entries = _entries(repo, shard)
            pending = [s for s in entries if dvc_ops.is_pending(s)]
            # recorded, but failed for the machine's sake: trained again, never restored
            retry = [s for s in entries if s not in pending and machine_failure(s)]
            log.info(
                "%d of %s pending%s (status in %.1f s): %s",
                len(pending) + len(retry),
                plural(len(entries), "sweep entry", "sweep entries"),
                f" in shard {shard}" if shard else "",
                time.perf_counter() - start,
                ", ".join(entry_key(s) for s in pending + retry) or "none",
            )
            for s in retry:
                log.info("%s: recorded as %s: training it again", s.addressing, machine_failure(s))
            recorder = Recorder(repo)
            forced = frozenset(s.addressing for s in retry)
            todo = pending + retry
            try:
                # with one worker, or a worker for each entry, the order changes nothing
                order = pool.largest_first(todo, params["train"]["img_size"]) if len(todo) > jobs > 1 else todo
                failed, oom = pool.run(order, recorder, forced)
                pool.close()
                if oom:  # out of GPU memory while sharing a GPU: once more, alone on it
                    log.info("out of GPU memory while sharing: running %s again, alone", ", ".join(map(entry_key, oom)))
                    failed |= Pool(ws, one_per_gpu(envs)).run_all(oom, recorder, forced)
            except BaseException as e:
                pool.close()  # before the write below: no worker goes on meanwhile
                if isinstance(e, KeyboardInterrupt):
                    log.warning(
                        "interrupted: workers stopped, %s recorded",
                        plural(len(recorder.done), "finished entry", "finished entries"),
                    )
                raise
            finally:
                recorder.write_lock()
            machine = {s.addressing: why for s in recorder.done if (why := machine_failure(s))}
            names = [s.addressing for s in entries]
    _conclude(ws, shard, names, failed, machine, len(todo))
    return [entry_key(s) for s in todo]


def _conclude(
    ws: Path, shard: str | None, names: list[str], failed: dict[str, str], machine: dict[str, str], n_todo: int
) -> None:
    """After the entries are recorded: name those that failed for the machine's sake; with a shard, push; raise
    naming the failed ones; else (every entry recorded, no shard) the stages that read the sweep (the plot, the
    export), each alone, so the workspace is up to date."""
    if machine:
        log.warning(
            "recorded, but kept out of the run-cache, as failed for the machine's sake (`make sweep` trains them "
            "again, here or on a machine that gets this dvc.lock; `dvc repro` alone does not):%s",
            "".join(f"\n  {name}: {why}" for name, why in machine.items()),
        )
    if shard:
        push_results(ws, [n for n in names if n not in failed and n not in machine])
    if failed:
        lines = "".join(f"\n  {name}: {why}" for name, why in failed.items())
        raise PipelineError(
            f"{len(failed)} of {plural(n_todo, 'sweep entry', 'sweep entries')} failed or were not recorded; the "
            f"others are recorded:{lines}"
            "\nFix the cause and run `make sweep` again: it trains only what is still pending."
        )
    if not shard:  # from the lock file as written; DVC resolves some paths from the working directory
        with contextlib.chdir(ws), dvc_ops.open_repo(ws) as repo:
            reproduce_downstream(repo, {"PATH": venv_path()})


def _entries(repo, shard: str | None) -> list:
    """The sweep's entries (of `shard`), after bringing what they read up to date (the params check, the decoded
    dataset): otherwise every entry would be pending on a stale input, and trained on it."""

    def collect() -> list:
        found = dvc_ops.matrix_entries(repo, STAGE)
        return shard_entries(found, *parse_shard(shard)) if shard else found

    entries = collect()
    stale = dvc_ops.stale_upstream(repo, entries)
    if not stale:
        return entries
    log.info("bringing %s up to date first (the sweep reads their outputs)", ", ".join(stale))
    try:
        dvc_ops.reproduce(repo, stale, {"PATH": venv_path()})
    except dvc_ops.dvc_error() as e:
        raise PipelineError(f"the sweep's inputs could not be brought up to date: {e} (DVC's output is above)") from e
    return collect()  # from a new index: DVC reloads it after running a stage


def venv_path() -> str:
    """PATH with this Python's folder first: stages run `python`, which must be this venv's."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def by_flops(entries: list, flops: dict[str, float | None]) -> list:
    """`entries` by their architecture's FLOPs, largest first, unknown (None) before all (it may be large);
    otherwise in their given order (the seeds of one architecture stay together)."""
    return sorted(entries, key=lambda s: -math.inf if flops[entry_arch(s)] is None else -flops[entry_arch(s)])


def one_per_gpu(envs: list[dict[str, str]]) -> list[dict[str, str]]:
    """The environments of one worker per GPU of `envs`, for the rerun alone after running out of memory while
    sharing: new dicts, without the shared flag (with it, the entry would exit for a rerun alone again)."""
    alone = {env.get("CUDA_VISIBLE_DEVICES"): {k: v for k, v in env.items() if k != SHARED_FLAG} for env in envs}
    return list(alone.values())


class Recorder:
    """What DVC's `Stage.run` does around a stage's command, for one entry at a time, and the one write of
    dvc.lock for all of them at the end."""

    def __init__(self, repo):
        self.repo = repo
        self.done: list = []
        self.deps: dict[str, dict[str, object]] = {}  # entry -> its deps' hashes before it ran

    def restore_or_prepare(self, stage, restore: bool = True) -> bool:
        """Remove the entry's outputs, then restore them from the run-cache (True: recorded, nothing to train),
        or save its deps for the run (False). `restore=False` (a failure for the machine's sake, trained again)
        never restores; neither does a cached result that is such a failure (kept out of the run-cache here, but
        `dvc repro` or an older version may have cached one)."""
        dvc_ops.remove_outs(stage)
        if restore and dvc_ops.restore_from_run_cache(self.repo, stage):
            if failure := machine_failure(stage):
                log.info("%s: the cached result is %s: training it again", stage.addressing, failure)
            elif (changed := self.record(stage, code_deps(stage))) is None:  # the code it was restored for
                return True
            else:
                log.info("%s: %s changed while it was restored: training it instead", stage.addressing, changed)
            dvc_ops.remove_outs(stage)
        dvc_ops.save_deps(stage)
        self.deps[stage.addressing] = dvc_ops.dep_snapshot(stage)
        return False

    def record(self, stage, code: dict[str, str]) -> str | None:
        """After the command: DVC's `Stage.save` (the deps' and outputs' hashes, the run-cache record), then
        `commit` (the outputs into the cache). Unless a code dep of the entry on disk is not the code that ran
        (`code`, the md5 of each file as its worker noted them at its start), or any dep (params, data) is not as
        it was before the entry ran (`restore_or_prepare`'s snapshot): then nothing is recorded, and the changed
        dep is returned. A failure for the machine's sake is recorded, but not in the run-cache. An
        interrupt waits for it to finish."""
        with _interrupts_deferred():
            dvc_ops.save_deps(stage)  # Stage.save's steps, in its order, with the check on the hashes it records
            before = self.deps.pop(stage.addressing, None)
            if changed := changed_code(stage, code) or (before and dvc_ops.changed_dep(stage, before)):
                return changed
            dvc_ops.save_outs_and_commit(self.repo, stage, run_cache=not machine_failure(stage))
            self.done.append(stage)
        return None

    def write_lock(self) -> None:
        """dvc.lock with every recorded entry, in one write."""
        if not self.done:
            return
        start = time.perf_counter()
        with _interrupts_deferred():
            dvc_ops.write_lock(self.done)
        log.info(
            "dvc.lock: %s recorded in one write (%.1f s)",
            plural(len(self.done), "entry", "entries"),
            time.perf_counter() - start,
        )


def code_deps(stage) -> dict[str, str]:
    """The entry's code files -> their md5, as DVC last hashed them (`save_deps`): its `.py` deps, and each `.py`
    file of a code folder it depends on (DVC records the folder as one hash; its tree holds each file's md5)."""
    return dvc_ops.dep_hashes(stage, ".py", CODE_FOLDERS)


def changed_code(stage, code: dict[str, str]) -> str | None:
    """The first code dep of the entry whose md5, as DVC last hashed it, is not the one in `code` (the code that
    ran); None when all match."""
    now = code_deps(stage)
    return next((path for path in sorted(now) if code.get(path) != now[path]), None)


def entry_record(stage) -> dict[str, Any]:
    """The entry's record (its command's `--record`, under records/), or {} when missing or unreadable."""
    args = entry_args(stage)
    try:
        record = json.loads(Path(args[args.index("--record") + 1]).read_text(encoding="utf-8"))
    except (ValueError, OSError, IndexError):
        return {}
    return record if isinstance(record, dict) else {}


def machine_failure(stage) -> str | None:
    """When the entry's record says it failed for the machine's sake (`machine_dependent`: out of memory
    at the smallest batch, the time limit, a dead worker), its cause and device in a few words; else None."""
    record = entry_record(stage)
    if record.get("status") != "failed" or not record.get("machine_dependent"):
        return None
    return f"failed for the machine's sake ({record.get('cause')} on {record.get('device')})"


def write_worker_died(stage, env: dict[str, str], epochs: int) -> None:
    """Write the record of an entry whose worker died while training it (a crash, a kill, the out-of-memory
    killer): failed, cause worker_died, machine-dependent, with the device, and its outputs empty as the stage
    writes them for any failure."""
    from imgclf.training.sweep import _empty_outputs, _record

    args = entry_args(stage)
    arg = dict(zip(args[::2], args[1::2]))
    reason = "its worker died while training it (a crash, a kill or the out-of-memory killer)"
    _empty_outputs(Path(arg["--out"]), Path(arg["--curves"]), Path(arg["--confusion"]), reason, "failure.txt")
    seed = int(arg["--seed"]) if "--seed" in arg else None
    record = _record(arg["--arch"], seed, "failed", reason, epochs)
    device = worker_device(env)
    failure = {"cause": "worker_died", "machine_dependent": True, "device": device, "batch_size": None}
    write_json(Path(arg["--record"]), {**record, **failure})
    write_json(Path(arg["--metrics"]), accuracy_metrics(record))


def worker_device(env: dict[str, str]) -> str:
    """The name of the device a worker with `env` trained on: its GPU's, as `nvidia-smi` names it, or the CPU's."""
    gpu = env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    if gpu and shutil.which("nvidia-smi"):
        res = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", gpu],
            check=False,
            capture_output=True,
            text=True,
        )
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip().splitlines()[0]
    if gpu:
        return f"GPU {gpu}"
    from imgclf.training.device import device_name

    return device_name("cpu")


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
        """`entries` from the largest architecture to the smallest by forward FLOPs (imgclf.pool.arch_flops,
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

    def run_all(self, entries: list, recorder: Recorder, forced: frozenset[str] = frozenset()) -> dict[str, str]:
        """`run` with no retry: an entry out of memory while sharing is a failure too. Stops the workers."""
        with self:
            failed, oom = self.run(entries, recorder, forced)
        return failed | {s.addressing: "out of GPU memory while sharing the GPU, even alone" for s in oom}

    def run(
        self, entries: list, recorder: Recorder, forced: frozenset[str] = frozenset()
    ) -> tuple[dict[str, str], list]:
        """Each entry restored from the run-cache (except those named in `forced`) or trained by a free worker,
        then recorded; a finished entry is recorded once the free workers have their next entries, so that they
        train meanwhile. A worker started before a code dep of its next entry changed retires first. Returns
        ({failed or unrecorded entry: why}, the entries out of GPU memory while sharing it)."""
        todo, running, finished = deque(entries), {}, deque()
        failed: dict[str, str] = {}
        oom: list = []
        try:
            while todo or running or finished:
                busy = {k for k, *_ in running.values()}
                free = [k for k in range(len(self.slots)) if k not in busy]
                while todo and free:
                    stage = todo.popleft()
                    if recorder.restore_or_prepare(stage, restore=stage.addressing not in forced):
                        continue
                    k = free.pop(0)
                    slot, log_file = self._current(k, stage), self.ws / LOG_DIR / f"{entry_key(stage)}.log"
                    log.info("Running stage '%s' on worker %d (log: %s)", stage.addressing, k, log_file)
                    running[slot.submit([*entry_args(stage), RUNNER_FLAG], log_file)] = (k, stage, slot.code)
                while finished:
                    self._record(*finished.popleft(), recorder, failed, oom)
                if running:
                    done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    for future in done:
                        k, stage, code = running.pop(future)
                        finished.append((stage, self._result(k, future), code, self.envs[k]))
        finally:  # interrupted: what finished is recorded all the same
            while finished:
                self._record(*finished.popleft(), recorder, failed, oom)
        return failed, oom

    def _current(self, k: int, stage) -> Slot:
        """Slot k, warm, with the code `stage` would record: a worker that started before one of the entry's code
        deps changed (its deps were just hashed) retires, and a fresh one imports the code as it is now."""
        slot = self._slot(k)
        if changed := changed_code(stage, slot.code):
            log.info("worker %d runs %s as it was before an edit: replacing it", k, changed)
            slot.close()
            self.slots[k] = None
            slot = self._slot(k)
        return slot

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

    def _record(
        self,
        stage,
        result: dict[str, Any],
        code: dict[str, str],
        env: dict[str, str],
        recorder: Recorder,
        failed: dict[str, str],
        oom: list,
    ) -> None:
        """Record a finished entry in DVC under the code its worker ran (`code`), or note why it failed or was not
        recorded (in `failed`) or that it ran out of GPU memory while sharing (in `oom`). An entry whose worker
        died is recorded failed for the machine's sake (`write_worker_died`)."""
        log_file = self.ws / LOG_DIR / f"{entry_key(stage)}.log"
        if result["code"] == OOM_EXIT:
            oom.append(stage)
            return
        if result["code"] not in (0, None):
            failed[stage.addressing] = f"{log_file} (exit {result['code']})"
            return
        if result["code"] is None:
            log.warning("%s: its worker died while training it (log: %s)", stage.addressing, log_file)
            write_worker_died(stage, env, int(workspace_params(self.ws)["sweep"]["epochs"]))
        try:
            changed = recorder.record(stage, code)
        except dvc_ops.dvc_error() as e:
            failed[stage.addressing] = f"ran, but DVC could not record it ({e}); log: {log_file}"
            return
        if changed:
            failed[stage.addressing] = f"not recorded: {changed} changed while it trained"
            log.warning(
                "%s: not recorded, still pending: %s changed while it trained (or after its worker had imported "
                "it), so the result is not what the workspace now computes. Run `make sweep` again to train it on "
                "the workspace as it is now.",
                stage.addressing,
                changed,
            )
            return
        log.info("%s: %s in %.1f s", stage.addressing, _outcome(stage), result.get("seconds", 0.0))


def _outcome(stage) -> str:
    """What the entry's record says, in a few words."""
    record = entry_record(stage)
    if not record:
        return "done"
    if record.get("status") == "ok":
        return f"accuracy {record['accuracy']:.4f}"
    return f"{record.get('status')} ({record.get('cause')}): {record.get('reason')}"


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
    try:
        yield
    except dvc_ops.dvc_error() as e:
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
    env = {**os.environ, "PATH": venv_path()}
    res = subprocess.run([sys.executable, "-m", "dvc", "push", "--run-cache"], cwd=ws, env=env, check=False)
    if res.returncode:
        raise PipelineError(f"`dvc push --run-cache` failed in {ws} (its output is above): fix it and rerun.")
    targets = set(names)
    with contextlib.chdir(ws), dvc_ops.open_repo(ws) as repo:
        dvc_ops.push_objects(repo, dvc_ops.uncached_out_objects(repo, targets))
