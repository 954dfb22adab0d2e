"""Warm workers for the sweep: processes that import torch, timm, fastai and DVCLive once and then train sweep
entries one after another, each by calling the workspace's own `stages.sweep.main` with the arguments of the
entry's command in dvc.yaml, in the workspace, as `python -m stages.sweep ...` would (imgclf/parallel.py records
each entry in DVC).

A `Slot` is one worker: a `concurrent.futures.ProcessPoolExecutor` of one process (spawn context), so a worker
that dies loses only its running entry, and a new slot replaces it.

Each worker:
- imports the workspace's code, with the workspace first on sys.path and as its working directory (WORKSPACE=.demo
  has its own copy, and that copy is what DVC records); `warm_up` says where its code came from;
- notes the code it runs: the parent hashes every source file of the package and the stages (DVC's md5) before
  it starts the process (a spawned process imports the parent's main module, and with it `imgclf.common`,
  `metrics`, `training.device`, before its initializer runs: a hash taken in the worker would come after those
  imports); the worker imports every module the sweep stage lists as a dep in dvc.yaml, then hashes again. The
  parent records an entry only if the stage's code deps on disk still have those hashes, and they go into the
  checkpoint key. A file edited between the parent's hash and the worker's leaves it with no hashes: the parent
  records none of its entries, and replaces it;
- dies with the parent (PR_SET_PDEATHSIG on Linux; elsewhere a thread watches the parent), so an orphan never
  writes an entry's outputs;
- ignores Ctrl-C: the terminal sends it to the whole process group, and the parent kills the workers;
- never sets torch's threads: base.threads is each entry's param (it changes the weights).

Nothing leaks from one entry into the next:
- Reset before each entry (`_fresh_state`): torch's CPU threads and fastai's global `defaults`, as after the
  imports. Restored after it: the environment, the working directory, the root logger, the warnings filters.
  Each entry's stdout and stderr (file descriptors 1 and 2, so C libraries' output too) go to its own log file.
- Reset by the entry itself, as in a fresh process: the random states and cuDNN's flags (fastai's `set_seed` at
  the start of every training attempt), the peak-memory counters, the DVCLive run (one `Live` per entry; DVCLive
  keeps no process-wide state) and the hub-cache cleanup.
- Kept on purpose, and safe: the imported modules; the decoded dataset and its copy on the GPU, into which
  nothing writes; the parameter counts per name (a pure function of the name); cuDNN's autotuning cache (which
  kernel runs a shape, not what it computes). fastai's hooks go with the model; no library here registers global
  module hooks. Counting FLOPs on the meta device (`arch_flops`) draws nothing an entry keeps.
- After each entry the worker collects garbage and returns the GPU's cached memory. A failed entry, or a CUDA
  context that no longer answers, retires the worker: the next entry gets a new one.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import faulthandler
import importlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STAGE = "sweep"  # the matrix stage in dvc.yaml: its entries are `sweep@<key>`
STAGE_MODULE = "stages.sweep"  # what the workers run; the entries' command is `python -m stages.sweep <args>`
# what an entry imports on its way besides imgclf.training.learner.TRAINING_LIBRARIES: imported at the start
WARM_IMPORTS = (
    STAGE_MODULE,
    "imgclf.training.callbacks",
    "imgclf.training.checkpoint",
    "fastai.callback.channelslast",
    "fastai.callback.progress",
    "fastai.callback.schedule",
    "fastai.losses",
    "fastai.metrics",
)
_START: dict[str, Any] = {}  # this worker's state after its start, which `_fresh_state` restores


class WorkerDied(Exception):
    """The worker process ended while it ran an entry (a crash, a kill, the out-of-memory killer)."""


class Slot:
    """One warm worker, started at once: a ProcessPoolExecutor of one process, with `env` (its GPU) on top of
    this process's environment, importing the code of the workspace `ws`."""

    def __init__(self, number: int, ws: Path, env: dict[str, str]):
        from imgclf import dvc_ops
        from imgclf.common import CODE_FOLDERS

        self.number, self.ws, self.env = number, ws, env
        snapshot = dvc_ops.code_md5s(ws, CODE_FOLDERS)  # before the process imports anything of the project
        self.executor = cf.ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=(str(ws), env, os.getpid(), snapshot),
        )
        self.started = time.time()  # wall clock: the worker says when it was ready by the same clock
        before = set(multiprocessing.active_children())
        # the process starts in this submit, from sys.path and the working directory as they are now
        with contextlib.chdir(ws), _first_on_path(ws):
            self._ready = self.executor.submit(warm_up)
        self.process = next(iter(set(multiprocessing.active_children()) - before), None)
        self.pid: int | None = None
        self.warm_s: float | None = None
        self.code: dict[str, str] = {}  # the md5 of each source file as it ran: the snapshot, if the worker agrees

    def wait_ready(self) -> None:
        """Block until the worker has imported everything; raise WorkerDied if it could not start, or
        RuntimeError if it imported code from elsewhere than the workspace."""
        if self.pid is not None:
            return
        try:
            ready = self._ready.result()
        except BrokenProcessPool as e:
            raise WorkerDied(f"worker {self.number} could not start (its output is above): {e}") from None
        if {Path(c) for c in ready["folders"]} != {self.ws}:
            raise RuntimeError(
                f"worker {self.number} imported its code from {', '.join(ready['folders'])}, not {self.ws}"
            )
        self.pid, self.warm_s, self.code = ready["pid"], ready["ready_at"] - self.started, ready["code"]

    def submit(self, args: list[str], log_file: Path) -> cf.Future:
        """Run one entry (`run_entry`) on this worker."""
        return self.executor.submit(run_entry, args, str(log_file))

    def count_flops(self, archs: list[str], img_size: int | None) -> cf.Future:
        """`arch_flops` of `archs` on this worker."""
        return self.executor.submit(arch_flops, archs, img_size)

    def close(self) -> None:
        """End the worker now, whatever it runs. Between entries it holds nothing worth a clean exit (an entry's
        outputs are written and closed when it returns), and a clean exit would spend its time tearing down the
        libraries."""
        if self.process is not None:
            self.process.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _first_on_path(folder: Path):
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


# --- in the worker process -----------------------------------------------------------------------------------


def _start(ws: str, env: dict[str, str], parent: int, snapshot: dict[str, str]) -> None:
    """The worker's initializer: tie its life to the parent's, take `env`, import the training libraries and every
    code module of the sweep stage once (as a stage process does: imgclf.common.import_libraries), note the code it
    runs (`snapshot`, the parent's hashes from before this process started, if the code on disk still has them
    after the imports; else none), and remember the state to restore."""
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    os.environ.update(env)  # CUDA_VISIBLE_DEVICES: before torch is imported
    os.chdir(ws)
    faulthandler.enable()  # a crash prints the Python stack (into the entry's log)
    from imgclf.common import configure_logging, import_libraries

    configure_logging()
    import_libraries(WARM_IMPORTS + code_modules(Path(ws)))
    from imgclf.training import checkpoint
    from imgclf.training.learner import TRAINING_LIBRARIES

    import_libraries(TRAINING_LIBRARIES)
    # edited since the parent's snapshot, before or during the imports: which version runs is unknown
    code = snapshot if checkpoint.code_hashes(Path(ws)) == snapshot else {}
    checkpoint.note_running_code(code)
    import torch
    from fastai.torch_core import defaults

    _START.update(threads=torch.get_num_threads(), defaults=_copied(vars(defaults)), code=code)


def code_modules(ws: Path) -> tuple[str, ...]:
    """The modules of the sweep stage's code deps in `ws`'s dvc.yaml, a code folder standing for every module in it
    (`imgclf/training/learner.py` -> `imgclf.training.learner`): imported at the worker's start, so that no entry
    imports code edited since."""
    import yaml

    from imgclf.common import CODE_FOLDERS

    path = ws / "dvc.yaml"
    if not path.is_file():
        return ()
    deps = yaml.safe_load(path.read_text(encoding="utf-8"))["stages"][STAGE]["deps"]
    files = []
    for dep in (d for d in deps if isinstance(d, str)):
        if dep.endswith(".py"):
            files.append(dep)
        elif dep.split("/")[0] in CODE_FOLDERS and (ws / dep).is_dir():  # a code folder: every module in it
            files += sorted(p.relative_to(ws).as_posix() for p in (ws / dep).rglob("*.py") if p.name != "__init__.py")
    return tuple(f.removesuffix(".py").replace("/", ".") for f in files)


def _die_with(parent: int) -> None:
    """Have this process killed when `parent` ends (its thread that started us, on Linux: the main thread)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (OSError, AttributeError):  # not Linux: watch the parent instead, once a second
        threading.Thread(target=_watch, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # it ended before the request took effect
        os._exit(1)


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def warm_up() -> dict[str, Any]:
    """The worker's first task, after its initializer: its pid, the folders its code came from (the stage's and
    the package's), the hashes of the code it runs (`_start`; empty if unknown), and when it was ready
    (time.time())."""
    import imgclf

    stage = importlib.import_module(STAGE_MODULE)
    folders = sorted({str(Path(m.__file__).resolve().parents[i]) for m, i in ((stage, 1), (imgclf, 1))})
    return {"pid": os.getpid(), "folders": folders, "code": _START["code"], "ready_at": time.time()}


def arch_flops(archs: list[str], img_size: int | None) -> dict[str, float | None]:
    """Each architecture's forward FLOPs for one image at its training input size (`img_size`, or its pretrained
    size when None), counted as each entry counts its own (imgclf.training.inference.forward_flops), on the meta
    device: no memory, no weights. Training time follows it, which is all the pool's largest-first order needs.
    None where the count fails (timm cannot build it on the meta device). Nothing here touches what an entry
    starts from: an entry seeds its own random states."""
    from imgclf.training.archs import meta_model, model_setup
    from imgclf.training.inference import forward_flops

    flops: dict[str, float | None] = {}
    for arch in archs:
        try:
            setup = model_setup(arch, img_size)
            flops[arch] = forward_flops(meta_model(arch, **setup["model_kwargs"]), setup["size"])
        except Exception:  # noqa: BLE001 - an unknown cost: the entry itself says what is wrong
            flops[arch] = None
    return flops


def run_entry(args: list[str], log_file: str) -> dict[str, Any]:
    """Train one sweep entry: `stages.sweep.main(args)` in a fresh state, with its output in `log_file`. Returns
    its exit status as the stage process would have it (`code`), its wall time (`seconds`), and whether this
    worker should retire (`retire`)."""
    from imgclf.common import exit_code

    main = importlib.import_module(STAGE_MODULE).main
    start = time.perf_counter()
    with _output_to(Path(log_file)), _fresh_state():
        try:
            code = exit_code(main, args)
        except Exception:  # noqa: BLE001 - what a stage process prints before it exits with 1
            traceback.print_exc()
            code = 1
    return {"code": code, "seconds": round(time.perf_counter() - start, 3), "retire": code != 0 or not _healthy()}


@contextlib.contextmanager
def _fresh_state():
    """The process state an entry starts from, as after the worker's start (the module docstring lists it)."""
    import gc

    import torch
    from fastai.torch_core import defaults

    env, cwd = dict(os.environ), os.getcwd()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    torch.set_num_threads(_START["threads"])
    vars(defaults).clear()
    vars(defaults).update(_copied(_START["defaults"]))
    try:
        with warnings.catch_warnings():
            yield
    finally:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        root.handlers[:] = handlers
        root.setLevel(level)
        gc.collect()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()


def _copied(values: dict[str, Any]) -> dict[str, Any]:
    """A copy of `values` whose lists and dicts are new (fastai's default callbacks are a list)."""
    return {k: (type(v)(v) if isinstance(v, (list, dict, set)) else v) for k, v in values.items()}


@contextlib.contextmanager
def _output_to(path: Path):
    """File descriptors 1 and 2 (stdout, stderr: Python's and C libraries') into `path` for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "wb") as f:
            os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os.dup2(saved[0], 1), os.dup2(saved[1], 2)
    finally:
        os.close(saved[0]), os.close(saved[1])


def _healthy() -> bool:
    """Whether the CUDA context (if any) still works: after a device-side error every later call fails."""
    import torch

    if not torch.cuda.is_initialized():
        return True
    try:
        torch.cuda.synchronize()
        return bool(torch.ones(1, device="cuda").item() == 1)
    except RuntimeError:
        return False
