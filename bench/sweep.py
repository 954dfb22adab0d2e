"""`make bench-sweep`: `make sweep` (`python -m tools.sweep`) on 4 pending tiny entries of the demo, with JOBS=1 and
JOBS=2, each run on a fresh copy of the same workspace, interleaved, `rounds` times.

    python -m bench.run --only sweep [--work DIR]

Per run: the wall time; the pool's start, until the first entry is handed to a worker (the workers' imports,
overlapped with DVC's status in this process); the sum of the entries' `train_time_s`; and the overhead per entry,
(wall - start - the sum of train_time_s) / entries: what the sweep costs besides the training, the bookkeeping
and the writing of dvc.lock included. base.threads is 1, so JOBS=2 uses the 2 cores of the machine this was
written on without oversubscribing them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ["test_convnext", "test_byobnet", "test_nfnet", "test_vit2"]
ENTRIES = [f"{a}-42" for a in ARCHS]  # sweep@<arch>-<seed>, with params.yaml's sweep.seeds: [42]
JOBS = (1, 2)


def _env() -> dict[str, str]:
    """This environment with this Python's folder first on PATH: stages run `python`."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _run(args: list[str], cwd: Path) -> None:
    res = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"{' '.join(args)} failed in {cwd}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


def base_workspace(work: Path) -> Path:
    """The demo (`python -m demo.run`), then sweep.archs = ARCHS and base.threads = 1, committed, with the stages
    the entries read brought up to date: what is left pending is the four entries."""
    import yaml

    ws = work / "base"
    if ws.is_dir():
        return ws
    _run([sys.executable, "-m", "demo.run", "--dir", str(ws), "--port", str(_free_port())], ROOT)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["base"]["threads"] = 1
    params["sweep"]["archs"] = ARCHS
    params["export"]["model"] = ENTRIES[0]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run([sys.executable, "-m", "dvc", "repro", "check_params", "decode"], ws)
    _run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam", "4 pending"], ws)
    return ws


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_sweep(ws: Path, jobs: int = 1) -> dict[str, Any]:
    """`python -m tools.sweep --jobs <jobs>` (what `make sweep` runs) in `ws`, each line of its log timed: its wall
    time, when it handed the first entry to a worker (`start_s`), the entries it trained and their train_time_s,
    how many it restored from the run-cache, and what its log says of the one-time costs (DVC's status, the
    dvc.lock write, the workers' start). The overhead per trained entry is (wall - start - training) / entries;
    the bookkeeping per entry leaves the one write of dvc.lock out too."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:  # DVC's own messages ("... is cached - skipping run")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tools.sweep", "--workspace", str(ws), "--jobs", str(jobs)],
            cwd=ROOT,
            env=_env(),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines = [(time.perf_counter() - start, line) for line in proc.stderr]
        proc.wait()
        wall = time.perf_counter() - start
        out.seek(0)
        restored = out.read().count("is cached - skipping run")
    log = "".join(line for _, line in lines)
    if proc.returncode:
        raise RuntimeError(f"make sweep failed in {ws}:\n{log[-3000:]}")
    trained = re.findall(r"Running stage 'sweep@([^']+)'", log)
    first = min((t for t, line in lines if "Running stage 'sweep@" in line), default=wall)
    train = sum(json.loads((ws / f"records/sweep/{a}.json").read_text())["train_time_s"] for a in trained)
    lock_write = float(m.group(1)) if (m := re.search(r"in one write \(([\d.]+) s\)", log)) else 0.0
    return {
        "jobs": jobs,
        "wall_s": round(wall, 2),
        "start_s": round(first, 2),
        "train_s": round(train, 2),
        "trained": trained,
        "restored": restored,
        "overhead_per_entry_s": round((wall - first - train) / len(trained), 3) if trained else None,
        "bookkeeping_per_entry_s": round((wall - first - train - lock_write) / len(trained), 3) if trained else None,
        "workers_ready_s": [float(x) for x in re.findall(r"worker \d+ ready in ([\d.]+) s", log)],
        "status_s": float(re.search(r"status in ([\d.]+) s", log).group(1)),
        "lock_write_s": lock_write,
        "load_before": round(load, 2),
    }


def timed_sweep(base: Path, ws: Path, jobs: int) -> dict[str, Any]:
    """`make_sweep` on a fresh copy `ws` of `base`; it must train the four entries."""
    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(base, ws, symlinks=True)
    run = make_sweep(ws, jobs)
    if sorted(run["trained"]) != sorted(ENTRIES):
        raise RuntimeError(f"make sweep trained {run['trained']}, not {ENTRIES}")
    return run


def section(work: Path, rounds: int = 2) -> dict[str, Any]:
    """Interleaved runs with JOBS=1 and JOBS=2, `rounds` each, and their medians."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work.mkdir(parents=True, exist_ok=True)
    base = base_workspace(work)
    runs = [timed_sweep(base, work / f"r{r}-j{j}", j) for r in range(rounds) for j in JOBS]
    out: dict[str, Any] = {"entries": len(ARCHS), "archs": ARCHS, "runs": runs}
    for j in JOBS:
        mine = [r for r in runs if r["jobs"] == j]
        for key in ("wall_s", "start_s", "train_s", "overhead_per_entry_s"):
            out[f"jobs{j}_{key}"] = round(statistics.median(r[key] for r in mine), 3)
    out["jobs2_over_jobs1"] = round(out["jobs2_wall_s"] / out["jobs1_wall_s"], 3)
    return out
