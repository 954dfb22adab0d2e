"""`make sweep`: pending sweep entries trained by warm workers and recorded in DVC as `dvc repro` records them;
a fresh state for every entry; failures, dead workers, a killed parent and Ctrl-C; shards on several clones
sharing a remote."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from imgclf import dvc_ops
from imgclf.common import CODE_FOLDERS, PipelineError
from imgclf.metrics import TIMINGS
from imgclf.parallel import (
    by_flops,
    entry_args,
    one_per_gpu,
    parse_shard,
    shard_entries,
    threads_warning,
    visible_gpus,
    worker_envs,
)
from imgclf.pool import Slot, arch_flops
from imgclf.training.checkpoint import code_hashes
from imgclf.training.device import CPU_SHARED_FLAG
from tests.conftest import ROOT, git, run_dvc, stages_run

TINY = ["test_convnext", "test_byobnet", "test_nfnet", "test_vit2"]
SEED = 42  # sweep.seeds: [42], the default
# the only fields of a record allowed to differ: the timings, and whether they were measured (the load decides)
NOISY = set(TIMINGS) | {"infer_status"}


def test_shards_are_disjoint_and_cover_the_list():
    archs = [f"a{i}" for i in range(11)]
    shards = [shard_entries(archs, i, 3) for i in (1, 2, 3)]
    assert sorted(a for shard in shards for a in shard) == sorted(archs)
    assert shards[0] == ["a0", "a3", "a6", "a9"] and shards[2] == ["a2", "a5", "a8"]
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "1-2", "a/b", "1/0"):
        with pytest.raises(PipelineError, match="i/K"):
            parse_shard(bad)


def test_workers_spread_over_the_visible_gpus():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 5"}) == ["2", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    envs = worker_envs(4, ["2", "5"], per_gpu=2, env={})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "5", "2", "5"]
    assert worker_envs(1, [], per_gpu=1, env={}) == [{}]  # CPU: no GPU variable, base.threads each


def test_workers_sharing_the_cores_wait_passively_unless_told_otherwise():
    passive = {"OMP_WAIT_POLICY": "PASSIVE"}
    cores = {CPU_SHARED_FLAG: "1"}  # and they are told so: their inference timings would mean nothing
    assert worker_envs(3, [], per_gpu=1, env={}) == [{**passive, **cores}] * 3
    shared = {**passive, "CUDA_VISIBLE_DEVICES": "0", "IMGCLF_GPU_SHARED": "1"}
    assert worker_envs(2, ["0"], per_gpu=2, env={}) == [shared] * 2
    assert worker_envs(2, [], per_gpu=1, env={"OMP_WAIT_POLICY": "ACTIVE"}) == [cores, cores]  # the user's choice
    with pytest.raises(PipelineError, match="PER_GPU"):
        worker_envs(3, ["0"], per_gpu=2)


def test_only_workers_that_share_a_gpu_are_told_so_and_never_the_rerun_alone():
    """IMGCLF_GPU_SHARED=1 (imgclf.training.device.gpu_shared: out of memory, exit 75 for a rerun alone) for two
    workers on one GPU; not for one worker allowed 8 per GPU, nor for the GPU a worker has to itself; and the
    rerun alone after running out of memory while sharing gets it on no worker (it would exit 75 again)."""
    flag = "IMGCLF_GPU_SHARED"
    two = worker_envs(2, ["0"], per_gpu=2, env={})
    assert [e.get(flag) for e in two] == ["1", "1"]
    assert flag not in worker_envs(1, ["0"], per_gpu=8, env={})[0]  # JOBS=1 PER_GPU=8: shares nothing
    three = worker_envs(3, ["0", "1"], per_gpu=2, env={})  # GPU 0: workers 0 and 2; GPU 1: worker 1 alone
    assert [(e["CUDA_VISIBLE_DEVICES"], e.get(flag)) for e in three] == [("0", "1"), ("1", None), ("0", "1")]
    alone = one_per_gpu(three)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in alone] == ["0", "1"] and not any(flag in e for e in alone)
    assert all(e.get(flag) == "1" for e in three if e["CUDA_VISIBLE_DEVICES"] == "0")  # new dicts: these untouched


def test_warns_when_jobs_ask_for_more_threads_than_cores():
    assert threads_warning(2, 1, 2) is None
    assert "4 threads on 2 cores" in threads_warning(2, 2, 2)
    assert "= 8 cores" in threads_warning(2, 0, 8)  # 0: torch takes every core
    assert threads_warning(1, 0, 8) is None


def test_the_largest_architectures_go_first():
    """FLOPs counted on the meta device rank test_nfnet (91 MFLOP at 64 px; 12 s of training in make bench-sweep)
    above the other tiny models (10-13 MFLOP; 3-4 s); an architecture timm cannot build has no count."""
    flops = arch_flops(["test_nfnet", "test_convnext", "test_vit2", "no_such_arch"], 64)
    assert flops["no_such_arch"] is None
    assert flops["test_nfnet"] > 5 * max(flops["test_convnext"], flops["test_vit2"]) > 0
    stage = {
        name: SimpleNamespace(addressing=f"sweep@{name}", cmd=f"python -m stages.sweep --arch {name.split('-')[0]}")
        for name in ("a-42", "b-42", "a-7", "c-42", "d-42")
    }
    order = by_flops(list(stage.values()), {"a": 1.0, "b": 3.0, "c": None, "d": 3.0})
    assert [s.addressing for s in order] == ["sweep@c-42", "sweep@b-42", "sweep@d-42", "sweep@a-42", "sweep@a-7"]


def test_workers_run_the_entries_own_command():
    entry = SimpleNamespace(addressing="sweep@x", cmd="python -m stages.sweep --arch x --out 'models/sweep/a b'")
    assert entry_args(entry) == ["--arch", "x", "--out", "models/sweep/a b"]
    with pytest.raises(PipelineError, match=r"sweep@x's command .* `python -m stages.sweep \.\.\.`"):
        entry_args(SimpleNamespace(addressing="sweep@x", cmd="python train.py --arch x"))


# --- the warm worker, on a workspace whose stages/sweep.py probes and dirties the process state ----------------

PROBE_STAGE = '''"""A sweep stage that reports the state it finds, then leaves every kind of state behind."""
import json, logging, os, sys, time, warnings


def main(argv):
    import torch
    from fastai.torch_core import defaults

    from imgclf.common import PipelineError

    out, mode = argv
    found = {
        "threads": torch.get_num_threads(), "leak": os.environ.get("LEAK"), "lr": defaults.lr,
        "callbacks": len(defaults.callbacks), "handlers": len(logging.getLogger().handlers),
        "filters": len(warnings.filters), "cwd": os.getcwd(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
    }
    with open(out, "w") as f:
        json.dump(found, f)
    torch.set_num_threads(1)
    os.environ["LEAK"] = "1"
    defaults.lr = 99.0
    defaults.callbacks.append(object)
    logging.getLogger().addHandler(logging.NullHandler())
    warnings.simplefilter("ignore")
    os.chdir("/")
    print("python stdout")
    print("python stderr", file=sys.stderr)
    os.write(2, b"C-level stderr\\n")
    if mode == "fail":
        raise PipelineError("bad input")
    if mode == "crash":
        raise RuntimeError("boom")
    if mode == "oom":
        sys.exit(75)
    if mode == "sleep":
        time.sleep(600)
'''


@pytest.fixture(scope="module")
def probe_ws(tmp_path_factory) -> Path:
    """A folder with its own stages/sweep.py (PROBE_STAGE): the code a worker must import."""
    ws = tmp_path_factory.mktemp("probe_ws")
    shutil.copytree(ROOT / "imgclf", ws / "imgclf")
    (ws / "stages").mkdir()
    (ws / "stages/__init__.py").write_text("")
    (ws / "stages/sweep.py").write_text(PROBE_STAGE)
    return ws


def test_each_entry_starts_from_the_workers_fresh_state(probe_ws, tmp_path):
    """Two entries on one warm worker: the second finds what the first found, though the first changed torch's
    threads, an environment variable, fastai's defaults, the loggers, the warnings filters and the working
    directory; each entry's output (Python's and C's) is in its own log; exit codes are the stage process's."""
    slot = Slot(0, probe_ws, {"CUDA_VISIBLE_DEVICES": ""})
    try:
        slot.wait_ready()
        runs = {}
        for name in ("first", "second", "fail", "crash", "oom"):
            mode = name if name in ("fail", "crash", "oom") else "ok"
            result = slot.submit([str(tmp_path / f"{name}.json"), mode], tmp_path / f"{name}.log").result(timeout=120)
            runs[name] = (result, json.loads((tmp_path / f"{name}.json").read_text()))
    finally:
        slot.close()
    first, second = runs["first"][1], runs["second"][1]
    assert first == second, (first, second)
    assert slot.code and slot.code == code_hashes(probe_ws)  # the code it runs, noted at its start
    assert first["leak"] is None and first["lr"] == 0.001 and first["cwd"] == str(probe_ws) and first["gpu"] == ""
    assert {r["pid"] for _, r in runs.values()} == {slot.pid}  # one process did them all
    assert [runs[n][0]["code"] for n in ("first", "fail", "crash", "oom")] == [0, 1, 1, 75]
    assert not runs["first"][0]["retire"] and runs["fail"][0]["retire"]  # a failure retires the worker
    assert {"python stdout", "python stderr", "C-level stderr"} <= set((tmp_path / "first.log").read_text().split("\n"))
    assert "error: bad input" in (tmp_path / "fail.log").read_text()
    assert "RuntimeError: boom" in (tmp_path / "crash.log").read_text()


def test_an_edit_while_a_worker_starts_leaves_it_with_no_code_to_record(probe_ws, tmp_path):
    """The code is hashed by the parent before the worker process starts: an edit while it starts (when the spawned
    process is importing the parent's modules, before any hash of its own) leaves the worker with no code, so none
    of its entries can be recorded; the hashes agree with DVC's and the checkpoint's."""
    ws = tmp_path / "ws"
    shutil.copytree(probe_ws, ws)
    assert dvc_ops.code_md5s(ws, CODE_FOLDERS) == code_hashes(ws)
    slot = Slot(0, ws, {})
    try:
        with open(ws / "imgclf/metrics.py", "a") as f:  # the worker has started, and has imported nothing yet
            f.write("# edited while the worker starts\n")
        slot.wait_ready()
    finally:
        slot.close()
    assert slot.code == {}


def test_a_worker_imports_the_workspaces_code_or_says_so(tmp_path):
    """A folder without its own code would have the worker run this checkout's instead: refused."""
    slot = Slot(0, tmp_path, {})
    try:
        with pytest.raises(RuntimeError, match=rf"imported its code from {ROOT}, not {tmp_path}"):
            slot.wait_ready()
    finally:
        slot.close()


PARENT = """import sys, time
from pathlib import Path
from imgclf.pool import Slot
slot = Slot(0, Path(sys.argv[1]), {})
slot.wait_ready()
slot.submit([sys.argv[2], "sleep"], Path(sys.argv[3]))
time.sleep(600)
"""


def test_a_worker_dies_with_its_parent(probe_ws, tmp_path):
    """kill -9 of the parent: the worker, busy with an entry, goes too, instead of writing outputs no one records."""
    args = [sys.executable, "-c", PARENT, str(probe_ws), str(tmp_path / "found.json"), "/dev/null"]
    parent = subprocess.Popen(args, cwd=ROOT)
    try:
        worker = _wait_for(lambda: json.loads((tmp_path / "found.json").read_text())["pid"], 120)
        parent.kill()
        parent.wait()
        assert _wait_for(lambda: not _alive(worker), 10), "the worker outlived its parent"
    finally:
        parent.kill()


def _wait_for(probe, timeout_s: float):
    """probe()'s first truthy value within timeout_s (exceptions count as not yet), else None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if value := probe():
                return value
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    return None


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


# --- end to end, on copies of the demo workspace ------------------------------------------------------------

# Test faults, appended to a workspace's stages/sweep.py and called first in main(): a marker file
# <FOLDER>/<arch>.<fault> switches one on for that architecture (so the code, a dep of the entries, stays the
# same when a test removes the marker for the rerun).
FAULTS = """

def _faults(argv):
    import os, signal, sys, time

    arch = (argv if argv is not None else sys.argv[1:])[1]
    marker = os.path.join({folder!r}, arch)
    if os.path.exists(marker + ".exit3"):
        print("injected failure", file=sys.stderr)
        sys.exit(3)
    if os.path.exists(marker + ".kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    if os.path.exists(marker + ".oom"):  # once: out of GPU memory while sharing it
        os.remove(marker + ".oom")
        sys.exit(75)
    if os.path.exists(marker + ".sleep"):
        with open(marker + ".pid", "w") as f:
            f.write(str(os.getpid()))
        time.sleep(600)
    if os.path.exists(marker + ".oom_min"):
        _out_of_memory(marker + ".oom_min")


def _out_of_memory(marker):
    # while `marker` exists, the model timm builds for its architecture runs out of memory in every forward, as
    # CUDA's caching allocator reports it: at every batch, down to the smallest (the machine's fault, not the model's)
    import os, timm, torch

    arch, real = os.path.basename(marker).split(".")[0], timm.create_model
    if getattr(real, "out_of_memory", None) == marker:  # a warm worker: hooked by an entry before
        return

    def create_model(name, *args, **kwargs):
        model = real(name, *args, **kwargs)
        if name == arch and os.path.exists(marker):
            def forward(*_args, **_kwargs):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
            model.forward = model.forward_features = forward  # fastai's TimmBody calls the latter
        return model

    create_model.out_of_memory = marker
    timm.create_model = create_model
"""


def use_tiny_archs(ws: Path, archs: list[str] = TINY, epochs: int | None = None) -> None:
    """Sweep `archs`, by default the four tiny architectures (none trained yet), for `epochs` if given, and commit
    that like a user would."""
    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["sweep"]["archs"] = list(archs)
    params["export"]["model"] = f"{archs[0]}-{params['sweep']['seeds'][0]}"  # the export stage's dep: a sweep entry
    if epochs is not None:
        params["sweep"]["epochs"] = epochs
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    git(ws, "commit", "-q", "-m", "sweep the tiny architectures", "params.yaml")


def with_faults(ws: Path, folder: Path, archs: list[str] = TINY, epochs: int | None = None, **faults: str) -> Path:
    """`archs` (by default the four tiny architectures) with the FAULTS hook in the workspace's stage code and
    `faults` (arch=fault) switched on; returns the markers' folder."""
    use_tiny_archs(ws, archs, epochs)
    stage = ws / "stages/sweep.py"
    doc = '    """Train one sweep architecture and write its record and metrics."""\n'
    assert doc in stage.read_text()
    main_guard = '\nif __name__ == "__main__":'  # the hook before it: a `dvc repro` process runs it too
    text = stage.read_text().replace(doc, doc + "    _faults(argv)\n")
    assert text.count(main_guard) == 1
    stage.write_text(text.replace(main_guard, FAULTS.format(folder=str(folder)) + "\n" + main_guard))
    folder.mkdir(exist_ok=True)
    for arch, fault in faults.items():
        (folder / f"{arch}.{fault}").touch()
    git(ws, "commit", "-q", "-m", "test faults", "stages/sweep.py")
    return folder


def sweep_cmd(ws: Path, *args: str) -> list[str]:
    """`python -m tools.sweep` (what `make sweep` runs) on the workspace `ws`."""
    return [sys.executable, "-m", "tools.sweep", "--workspace", str(ws), *args]


def sweep(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(ws, *args), cwd=ROOT, capture_output=True, text=True, check=False)


def entry(arch: str) -> str:
    """An architecture's sweep entry with the default seed: `sweep@<arch>-<seed>` is its stage, and its outputs are
    named `<arch>-<seed>`."""
    return f"{arch}-{SEED}"


def entries(*archs: str) -> list[str]:
    return sorted(entry(a) for a in archs)


def trained(output: str) -> list[str]:
    """The entries `make sweep` (or `dvc repro`) trained, from its output."""
    return sorted(s.split("@")[1] for s in stages_run(output.replace("INFO imgclf.parallel: ", "")) if "sweep@" in s)


def pending(ws: Path) -> set[str]:
    """The sweep entries `dvc status` lists."""
    status = json.loads(run_dvc(ws, "status", "--json").stdout)
    return {s.split("@")[1] for s in status if s.startswith("sweep@")}


def run_cache_records(root: Path) -> list[dict]:
    """Every run-cache record under `root` (a workspace's `.dvc/cache/runs`, or a remote's `runs`): the stage's
    command, deps and outs as DVC saved them."""
    folder = root / ".dvc/cache/runs" if (root / ".dvc").is_dir() else root / "runs"
    return [yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*/*/*")) if p.is_file()]


def sweep_metrics(ws: Path) -> dict[str, dict]:
    return {a: json.loads((ws / f"records/sweep/{entry(a)}.json").read_text()) for a in TINY}


@pytest.mark.slow
def test_failures_stay_isolated_and_the_rerun_trains_only_them(copy_workspace, tmp_path):
    """Two workers, the workspace's own (faulty) code: one entry's stage fails, another's worker is killed, a third
    runs out of GPU memory while sharing it. The others are recorded, the failed one is named with its log and
    stays pending; the killed one is recorded failed for the machine's sake (cause worker_died), out of the
    run-cache; the third runs again alone. The rerun trains only the failed one and, again, the killed one, and
    then the plot alone, so `dvc repro` runs nothing. The first, with a failed entry, leaves the plot pending."""
    ws, _ = copy_workspace
    faults = with_faults(ws, tmp_path / "faults", test_nfnet="exit3", test_byobnet="kill", test_vit2="oom")
    res = sweep(ws, "--jobs", "2")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "largest first (forward FLOPs of 4 architectures counted in" in res.stderr
    assert f"): {entry('test_nfnet')}, " in res.stderr  # 91 MFLOP, the others 10-13
    assert "1 of 4 sweep entries failed or were not recorded" in res.stderr
    log = ws / f".dvc/tmp/sweep-logs/{entry('test_nfnet')}.log"
    assert f"sweep@{entry('test_nfnet')}: {log} (exit 3)" in res.stderr and "injected failure" in log.read_text()
    assert f"sweep@{entry('test_byobnet')}: its worker died while training it" in res.stderr
    assert f"running {entry('test_vit2')} again, alone" in res.stderr and not (faults / "test_vit2.oom").exists()
    assert pending(ws) == set(entries("test_nfnet"))
    assert "Running stage 'plot'" not in out  # an entry failed: the plot waits for it
    killed = json.loads((ws / f"records/sweep/{entry('test_byobnet')}.json").read_text())
    assert (killed["status"], killed["cause"], killed["machine_dependent"]) == ("failed", "worker_died", True)
    assert killed["device"].startswith("CPU") and (ws / f"models/sweep/{entry('test_byobnet')}/failure.txt").is_file()
    assert "kept out of the run-cache, as failed for the machine's sake" in res.stderr
    assert not [r for r in run_cache_records(ws) if "--arch test_byobnet " in r["cmd"]]
    assert json.loads((ws / f"records/sweep/{entry('test_vit2')}.json").read_text())["status"] == "ok"

    for marker in faults.iterdir():
        marker.unlink()
    res = sweep(ws, "--jobs", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 of 4 sweep entries pending (status in" in res.stderr
    assert trained(res.stderr) == entries("test_byobnet", "test_nfnet")
    # every entry recorded: the stages that read the sweep, alone (export.model is test_convnext's entry now)
    assert sorted(stages_run(res.stdout)) == ["export", "plot"], res.stdout
    assert json.loads(run_dvc(ws, "status", "--json").stdout) == {}  # up to date
    repro = run_dvc(ws, "repro")
    assert stages_run(repro.stdout) == [], repro.stdout
    assert all(m["status"] == "ok" for m in sweep_metrics(ws).values())
    assert all(a in (ws / "plots/sweep/leaderboard.csv").read_text() for a in TINY)


@pytest.mark.slow
def test_a_warm_worker_trains_what_a_fresh_process_trains(copy_workspace, tmp_path):
    """On CPU, the fourth entry of one warm worker has the same weights (bitwise) and metrics (but the timings)
    as `dvc repro` of that entry in a fresh process."""
    ws, _ = copy_workspace
    use_tiny_archs(ws)
    res = sweep(ws, "--jobs", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr.count("worker 0 ready") == 1 and trained(res.stderr) == entries(*TINY)  # one worker, all four
    last = entry(TINY[-1])
    assert res.stderr.rindex(f"Running stage 'sweep@{last}' on worker 0") == res.stderr.rindex("Running stage")
    warm_weights = (ws / f"models/sweep/{last}/model.safetensors").read_bytes()
    warm = json.loads((ws / f"records/sweep/{last}.json").read_text())
    repro = run_dvc(ws, "repro", "--force", "--single-item", f"sweep@{last}")
    assert stages_run(repro.stdout) == [f"sweep@{last}"]
    fresh = json.loads((ws / f"records/sweep/{last}.json").read_text())
    assert (ws / f"models/sweep/{last}/model.safetensors").read_bytes() == warm_weights
    assert {k: v for k, v in warm.items() if k not in NOISY} == {k: v for k, v in fresh.items() if k not in NOISY}


# make sweep's run_sweep with each write of dvc.lock counted (the number of stages in each), as JSON on the last line
COUNTED_SWEEP = """import json, sys
from pathlib import Path
from dvc.dvcfile import Lockfile
from imgclf.common import configure_logging
from imgclf.parallel import run_sweep
writes, real = [], Lockfile.dump_stages
def counted(self, stages, **kwargs):
    writes.append(len(stages))
    return real(self, stages, **kwargs)
Lockfile.dump_stages = counted
configure_logging()
done = run_sweep(Path(sys.argv[1]), 1)
print(json.dumps({"done": done, "writes": writes}))
"""


@pytest.mark.slow
def test_after_kill_9_of_the_sweep_the_rerun_restores_what_finished(copy_workspace, tmp_path):
    """kill -9 of `make sweep` while its worker trains the third entry, once the second is recorded: the worker
    goes too, and dvc.lock was not written, but the two finished entries are in the run-cache. The rerun restores
    them, trains the other two, and writes dvc.lock once for all four (then once each for the plot and the export)."""
    ws, _ = copy_workspace
    faults = with_faults(ws, tmp_path / "faults", test_nfnet="sleep")
    with open(tmp_path / "sweep.log", "w") as out:
        parent = subprocess.Popen(sweep_cmd(ws, "--jobs", "1"), cwd=ROOT, stdout=out, stderr=out)
    try:
        worker = _wait_for(lambda: int((faults / "test_nfnet.pid").read_text()), 300)
        assert worker, "the third entry never started"
        # the third entry starts before the second is recorded (the worker trains while the parent records)
        recorded = f"sweep@{entry('test_byobnet')}: accuracy"
        assert _wait_for(lambda: recorded in (tmp_path / "sweep.log").read_text(), 60), "the second never recorded"
        parent.kill()
        parent.wait()
        assert _wait_for(lambda: not _alive(worker), 10), "the worker outlived `make sweep`"
    finally:
        parent.kill()
    assert pending(ws) == set(entries(*TINY))  # nothing in dvc.lock
    (faults / "test_nfnet.sleep").unlink()
    res = subprocess.run([sys.executable, "-c", COUNTED_SWEEP, str(ws)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    # the four entries in one write, then the plot's and the export's own (make sweep ends up to date)
    assert json.loads(res.stdout.splitlines()[-1]) == {"done": [entry(a) for a in TINY], "writes": [4, 1, 1]}
    for arch in TINY[:2]:
        assert f"Stage 'sweep@{entry(arch)}' is cached - skipping run" in res.stdout
    assert trained(res.stderr) == entries("test_nfnet", "test_vit2")
    assert pending(ws) == set()


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_with_what_finished_recorded(copy_workspace, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) while the third entry trains: the sweep stops there with
    exit 130, its worker is gone, and the two entries before it are in dvc.lock."""
    ws, _ = copy_workspace
    faults = with_faults(ws, tmp_path / "faults", test_nfnet="sleep")
    sweeping = subprocess.Popen(
        sweep_cmd(ws, "--jobs", "1"), cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        worker = _wait_for(lambda: int((faults / "test_nfnet.pid").read_text()), 300)
        assert worker, "the third entry never started"
        os.killpg(sweeping.pid, signal.SIGINT)
        _, err = sweeping.communicate(timeout=60)
    finally:
        sweeping.kill()
    assert sweeping.returncode == 130, err
    assert "interrupted: workers stopped, 2 finished entries recorded" in err and "Traceback" not in err
    assert "run `make sweep` again" in err and "dvc repro" not in err  # as the README says
    assert not _alive(worker)
    assert pending(ws) == set(entries("test_nfnet", "test_vit2"))


@pytest.mark.slow
def test_a_dvc_error_is_a_message(copy_workspace):
    """An error DVC raises (here: another DVC process holds the workspace's lock) is one line, no traceback."""
    ws, _ = copy_workspace
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom dvc.repo import Repo\nr = Repo(sys.argv[1])\n"
            "r.lock.lock()\nprint('locked', flush=True)\ntime.sleep(600)\n",
            str(ws),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = sweep(ws, "--jobs", "1")
    finally:
        holder.kill()
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"error: DVC failed in {ws}: Unable to acquire lock" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_shards_on_two_clones_meet_in_a_third(copy_workspace, tmp_path):
    origin, _ = copy_workspace  # tmp_path/ws
    use_tiny_archs(origin)
    run_dvc(origin, "repro", "check_params")  # the data stages up to date and committed: what clones pull
    run_dvc(origin, "remote", "add", "-d", "shared", "../storage")
    git(origin, "add", "dvc.lock", ".dvc/config")
    git(origin, "commit", "-q", "-m", "share on a remote")
    run_dvc(origin, "push")
    for i in (1, 2):
        clone = tmp_path / f"machine{i}"
        subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
        # --allow-missing: the new sweep entries have no outputs in dvc.lock yet, which plain `dvc pull` reports
        run_dvc(clone, "pull", "--allow-missing")
        res = sweep(clone, "--jobs", "1", "--shard", f"{i}/2")
        assert res.returncode == 0, res.stdout + res.stderr
        assert trained(res.stderr) == entries(*shard_entries(TINY, i, 2))
    third = tmp_path / "machine3"
    subprocess.run(["git", "clone", "-q", str(origin), str(third)], check=True)
    # `dvc pull --run-cache` brings the run records only; `repro --pull` fetches each entry's objects to restore it
    run_dvc(third, "pull", "--run-cache", "--allow-missing")
    repro = run_dvc(third, "repro", "--pull")
    assert sorted(stages_run(repro.stdout)) == ["export", "plot"], repro.stdout  # the sweep's readers
    assert all(a in (third / "plots/sweep/leaderboard.csv").read_text() for a in TINY)
    # the same sweep on one machine, with the same base.threads: only the timings differ
    repro = run_dvc(origin, "repro")
    assert trained(repro.stdout) == entries(*TINY)
    git(origin, "add", "-A", "metrics", "dvc.lock")
    git(origin, "commit", "-q", "-m", "the sweep on one machine")
    subprocess.run(["git", "fetch", "-q", str(origin), "HEAD"], cwd=third, check=True)
    # the metrics (accuracies, the best and its tied set) are the same; the records differ in their timings only
    assert json.loads(run_dvc(third, "metrics", "diff", "FETCH_HEAD", "--json").stdout) == {}
    for name in entries(*TINY):
        here, there = (json.loads((ws / f"records/sweep/{name}.json").read_text()) for ws in (third, origin))
        assert {k: v for k, v in here.items() if k not in NOISY} == {k: v for k, v in there.items() if k not in NOISY}
