"""`make sweep`: pending sweep entries in parallel on DVC's experiment queue, results back through the run-cache;
shards on several clones sharing a remote; failures reported and rerun alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imgclf.common import PipelineError
from imgclf.parallel import (
    Dvc,
    check_visible_to_jobs,
    exit_code_in_log,
    parse_queue_status,
    parse_shard,
    shard_archs,
    threads_warning,
    visible_gpus,
    worker_envs,
)
from tests.conftest import ROOT, git, run_dvc, stages_run

TINY = ["test_convnext", "test_byobnet", "test_nfnet", "test_vit2"]
NOISY = {"train_time_s", "images_per_s", "peak_memory_mb"}  # timings: the only metrics allowed to differ


def test_shards_are_disjoint_and_cover_the_list():
    archs = [f"a{i}" for i in range(11)]
    shards = [shard_archs(archs, i, 3) for i in (1, 2, 3)]
    assert sorted(a for shard in shards for a in shard) == sorted(archs)
    assert shards[0] == ["a0", "a3", "a6", "a9"] and shards[2] == ["a2", "a5", "a8"]
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "1-2", "a/b", "1/0"):
        with pytest.raises(PipelineError, match="i/K"):
            parse_shard(bad)


def test_jobs_spread_over_the_visible_gpus():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 5"}) == ["2", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    envs = worker_envs(4, ["2", "5"], per_gpu=2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "5", "2", "5"]
    assert worker_envs(3, [], per_gpu=1) == [{}, {}, {}]  # CPU: no GPU variable, base.threads each
    with pytest.raises(PipelineError, match="PER_GPU"):
        worker_envs(3, ["0"], per_gpu=2)


def test_warns_when_jobs_ask_for_more_threads_than_cores():
    assert threads_warning(2, 1, 2) is None
    assert "4 threads on 2 cores" in threads_warning(2, 2, 2)
    assert "= 8 cores" in threads_warning(2, 0, 8)  # 0: torch takes every core
    assert threads_warning(1, 0, 8) is None


def test_reads_dvc_queue_status_and_logs():
    text = (
        "Task     Name              Created    Status\n"
        "7edcca6  sweep-test_vit2   06:20 AM   Failed\n"
        "6712509  sweep-test_nfnet  Nov 24, 2026   Success\n"
        "0d1e2f3                    06:21 AM   Queued\n\n"
        "Worker status: 1 active, 2 idle\n"
    )
    assert parse_queue_status(text) == (
        {"sweep-test_vit2": "Failed", "sweep-test_nfnet": "Success", "0d1e2f3": "Queued"},
        3,
    )
    assert parse_queue_status("No experiment tasks in the queue.\n\nWorker status: 0 active, 0 idle\n") == ({}, 0)
    log = "ERROR: failed to reproduce 'sweep@x': failed to run: python -m stages.sweep ..., exited with 75\n"
    assert exit_code_in_log(log) == 75 and exit_code_in_log("Updating lock file 'dvc.lock'") is None


def test_refuses_files_the_queued_jobs_would_not_see(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "urls").mkdir()
    (tmp_path / "urls/five_class.csv").write_text("class,url\n")
    (tmp_path / "notes.txt").write_text("not read by the sweep")
    with pytest.raises(PipelineError, match=r"dvc.lock is not tracked by git.*#8854"):
        check_visible_to_jobs(Dvc(tmp_path), {"urls/five_class.csv"})
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    git(tmp_path, "add", "dvc.lock")  # added, not committed: DVC's queue takes changes to tracked files along
    with pytest.raises(PipelineError, match=r"git does not track .*: urls/five_class.csv\. .*`git add`") as e:
        check_visible_to_jobs(Dvc(tmp_path), {"urls", "params.yaml"})
    assert "notes.txt" not in str(e.value)  # only what the jobs read
    git(tmp_path, "add", "urls")
    check_visible_to_jobs(Dvc(tmp_path), {"urls", "params.yaml"})


# --- end to end, on copies of the demo workspace ------------------------------------------------------------


def sweep(ws: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m tools.sweep` (what `make sweep` runs) on the workspace `ws`."""
    return subprocess.run(
        [sys.executable, "-m", "tools.sweep", "--workspace", str(ws), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def use_tiny_archs(ws: Path) -> None:
    """Sweep the four tiny architectures (none trained yet), and commit that like a user would."""
    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["sweep"]["archs"] = TINY
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    git(ws, "commit", "-q", "-m", "sweep the tiny architectures", "params.yaml")


def trained(output: str) -> list[str]:
    return sorted(s.split("@")[1] for s in stages_run(output) if s.startswith("sweep@"))


def sweep_metrics(ws: Path) -> dict[str, dict]:
    return {a: json.loads((ws / f"metrics/sweep/{a}.json").read_text()) for a in TINY}


def faults(tmp_path: Path, crash: str, oom_once: str, crash_code: int = 3) -> dict[str, str]:
    """An environment in which the sweep stage of `crash` dies at start-up with `crash_code` (3: a crash the
    stage cannot turn into a `failed` record; 130: stopped by Ctrl-C), and the stage of `oom_once` exits with 75
    (out of GPU memory while sharing) the first time only. A sitecustomize module: every Python process imports
    it."""
    folder = tmp_path / "faults"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import os, sys\n"
        "argv = open('/proc/self/cmdline', 'rb').read().split(b'\\0')\n"
        "if b'stages.sweep' in argv:\n"
        f"    if b'{crash}' in argv:\n"
        "        print('injected crash', file=sys.stderr, flush=True)\n"
        f"        os._exit({crash_code})\n"
        f"    if b'{oom_once}' in argv and not os.path.exists({str(folder / 'oom_done')!r}):\n"
        f"        open({str(folder / 'oom_done')!r}, 'w').close()\n"
        "        print('injected out of memory', file=sys.stderr, flush=True)\n"
        "        os._exit(75)\n"
    )
    return {**os.environ, "PYTHONPATH": str(folder)}


@pytest.mark.slow
def test_parallel_sweep_failure_and_rerun(copy_workspace, tmp_path):
    ws, _ = copy_workspace
    use_tiny_archs(ws)
    res = sweep(ws, "--jobs", "2", env=faults(tmp_path, crash="test_nfnet", oom_once="test_vit2"))
    # one entry failed: the others finished, the exit status says so, and the message names it with its log
    assert res.returncode == 1, res.stdout + res.stderr
    assert "1 of 4 sweep entries failed" in res.stderr
    # the one out of GPU memory ran again, alone, and passed
    assert "running test_vit2 again, one at a time" in res.stderr
    assert (tmp_path / "faults/oom_done").is_file()
    assert "sweep@test_vit2" not in res.stderr[res.stderr.index("sweep entries failed") :]
    log = ws / ".dvc/tmp/sweep-logs/test_nfnet.log"
    assert f"sweep@test_nfnet: {log} (exit 3)" in res.stderr
    assert "injected crash" in log.read_text()
    status = json.loads(run_dvc(ws, "status", "--json").stdout)
    assert [s for s in status if s.startswith("sweep@")] == ["sweep@test_nfnet"]
    # no leftovers of the engine: experiments and queue entries removed, workers stopped
    refs = subprocess.run(
        ["git", "for-each-ref", "refs/exps"], cwd=ws, capture_output=True, text=True, check=True
    ).stdout
    assert "sweep-" not in refs and "celery/failed" not in refs
    assert "No experiment tasks in the queue" in run_dvc(ws, "queue", "status").stdout

    assert "so trained here" not in res.stderr  # every finished entry came back from the run-cache

    # the rerun runs only what is pending
    res = sweep(ws, "--jobs", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 of 4 sweep entries pending: test_nfnet" in res.stderr
    assert trained(res.stdout) == ["test_nfnet"]
    # and then `dvc repro` trains nothing: it plots all four
    repro = run_dvc(ws, "repro")
    assert stages_run(repro.stdout) == ["plot"], repro.stdout
    board = (ws / "plots/sweep/leaderboard.csv").read_text()
    assert all(a in board for a in TINY)
    assert all(m["status"] == "ok" for m in sweep_metrics(ws).values())


@pytest.mark.slow
def test_one_job_runs_the_entries_here_and_goes_on_after_a_failure(copy_workspace, tmp_path):
    """JOBS=1: no queue and no clones; DVC runs the entries in this workspace one after another, a crash does not
    stop the others, and dvc.lock records every entry that finished."""
    ws, _ = copy_workspace
    use_tiny_archs(ws)
    res = sweep(ws, "--jobs", "1", env=faults(tmp_path, crash="test_byobnet", oom_once="none"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "1 of 4 sweep entries failed" in res.stderr and "sweep@test_byobnet: its output above" in res.stderr
    assert "injected crash" in res.stdout + res.stderr
    assert trained(res.stdout) == sorted(TINY)  # all four started, here
    status = json.loads(run_dvc(ws, "status", "--json").stdout)
    assert [s for s in status if s.startswith("sweep@")] == ["sweep@test_byobnet"]
    assert (
        "sweep-"
        not in subprocess.run(
            ["git", "for-each-ref", "refs/exps"], cwd=ws, capture_output=True, text=True, check=True
        ).stdout
    )


@pytest.mark.slow
def test_one_job_stops_at_ctrl_c_with_what_finished_recorded(copy_workspace, tmp_path):
    """Ctrl-C reaches the running stage (DVC ignores it while a stage runs): the sweep stops there instead of
    going on with the next entry, and what finished before is recorded."""
    ws, _ = copy_workspace
    use_tiny_archs(ws)
    res = sweep(ws, "--jobs", "1", env=faults(tmp_path, crash="test_byobnet", oom_once="none", crash_code=130))
    assert res.returncode == 130, res.stdout + res.stderr
    ran = [s.split("@")[1] for s in stages_run(res.stdout) if s.startswith("sweep@")]
    assert ran[-1] == "test_byobnet" and len(ran) == len(set(ran)) < len(TINY), ran  # it stopped there
    status = json.loads(run_dvc(ws, "status", "--json").stdout)
    pending = {s.split("@")[1] for s in status if s.startswith("sweep@")}
    assert pending == set(TINY) - set(ran[:-1])  # the entries before it are recorded


@pytest.mark.slow
def test_entries_come_back_from_the_run_cache_in_one_write_of_dvc_lock(copy_workspace):
    """What the queue's jobs trained comes back from the run-cache, and dvc.lock is written once for all the
    entries (`dvc repro` writes it after each: 24 s per entry with the whole zoo recorded); an entry missing from
    the run-cache is trained here, and said so. In its own process, as make sweep runs it: DVC's loggers keep the
    stdout they found when DVC was first imported, which pytest closes after that test."""
    ws, _ = copy_workspace
    use_tiny_archs(ws)
    run_dvc(ws, "repro", "sweep@test_convnext", "sweep@test_byobnet")  # into the run-cache, as a job would
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    for arch in ("test_convnext", "test_byobnet"):  # the workspace as the queue leaves it: no record, no outputs
        del lock["stages"][f"sweep@{arch}"]
        for out in (f"models/sweep/{arch}", f"plots/live/sweep/{arch}"):
            shutil.rmtree(ws / out)
    (ws / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))

    res = subprocess.run(
        [sys.executable, "-c", COUNTED_REPRODUCE, str(ws), "test_convnext", "test_byobnet", "test_nfnet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout.splitlines()[-1])
    assert out["here"] == ["test_nfnet"] and out["failed"] == []  # not in the run-cache: trained here
    assert out["writes"] == [3]
    status = json.loads(run_dvc(ws, "status", "--json").stdout)
    assert not [s for s in status if s.startswith("sweep@") and s != "sweep@test_vit2"], status
    assert (ws / "models/sweep/test_convnext").is_dir()


@pytest.mark.slow
def test_a_dvc_error_is_a_message(copy_workspace):
    """An error DVC raises before any entry runs (here: no such stage) is one line naming it, no traceback."""
    ws, _ = copy_workspace
    code = (
        "import sys\nfrom pathlib import Path\nfrom imgclf.common import run_main\n"
        "from imgclf.parallel import Dvc, reproduce_here\n"
        "run_main(lambda: reproduce_here(Dvc(Path(sys.argv[1])), ['no_such_arch']))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(ws)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "error: `dvc repro` of the sweep entries failed" in res.stderr and "sweep@no_such_arch" in res.stderr
    assert "Traceback" not in res.stderr


# reproduce_here with each write of dvc.lock counted (the number of stages in each), as JSON on the last line
COUNTED_REPRODUCE = """import json, sys
from pathlib import Path
from dvc.dvcfile import Lockfile
from imgclf.parallel import Dvc, reproduce_here
writes, real = [], Lockfile.dump_stages
def counted(self, stages, **kwargs):
    writes.append(len(stages))
    return real(self, stages, **kwargs)
Lockfile.dump_stages = counted
here, failed = reproduce_here(Dvc(Path(sys.argv[1])), sys.argv[2:])
print(json.dumps({"here": here, "failed": failed, "writes": writes}))
"""


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
        assert trained(res.stdout) == sorted(shard_archs(TINY, i, 2))
    third = tmp_path / "machine3"
    subprocess.run(["git", "clone", "-q", str(origin), str(third)], check=True)
    # `dvc pull --run-cache` brings the run records only; `repro --pull` fetches each entry's objects to restore it
    run_dvc(third, "pull", "--run-cache", "--allow-missing")
    repro = run_dvc(third, "repro", "--pull")
    assert stages_run(repro.stdout) == ["plot"], repro.stdout
    assert all(a in (third / "plots/sweep/leaderboard.csv").read_text() for a in TINY)
    # the same sweep on one machine, with the same base.threads: only the timings differ
    repro = run_dvc(origin, "repro")
    assert trained(repro.stdout) == sorted(TINY)
    git(origin, "add", "-A", "metrics", "dvc.lock")
    git(origin, "commit", "-q", "-m", "the sweep on one machine")
    subprocess.run(["git", "fetch", "-q", str(origin), "HEAD"], cwd=third, check=True)
    diff = json.loads(run_dvc(third, "metrics", "diff", "FETCH_HEAD", "--json").stdout)
    changed = {key for changes in diff.values() for key in changes}
    assert changed and changed <= NOISY, changed
