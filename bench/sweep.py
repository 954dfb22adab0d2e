"""`make bench-sweep`: `make sweep` (`python -m tools.sweep`) on 4 pending tiny entries of the demo, with JOBS=1
and JOBS=2, each on a fresh copy of the same workspace, interleaved. Per run: the wall time; the start, until the
first entry is handed to a worker; the entries' `train_time_s`; and the overhead per entry, (wall - start -
training) / entries: the bookkeeping and the dvc.lock write included. `make_sweep` also serves bench/zoo.py.
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

import yaml

from bench.run import ROOT, demo_workspace, dvc, env, git_commit

ARCHS = ["test_convnext", "test_byobnet", "test_nfnet", "test_vit2"]
ENTRIES = [f"{a}-42" for a in ARCHS]  # sweep@<arch>-<seed>, with params.yaml's sweep.seeds: [42]
JOBS = (1, 2)


def base_workspace(work: Path) -> Path:
    """The demo, then sweep.archs = ARCHS and base.threads = 1 (JOBS=2 on 2 cores without oversubscribing them),
    committed, with the stages the entries read up to date: the four entries are what is pending."""
    ws = work / "base"
    demo_workspace(ws)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["base"]["threads"] = 1
    params["sweep"]["archs"] = ARCHS
    params["export"]["model"] = ENTRIES[0]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(ws, "repro", "check_params", "decode")
    git_commit(ws, "4 pending")
    return ws


def make_sweep(ws: Path, jobs: int = 1, check: bool = True) -> dict[str, Any]:
    """`python -m tools.sweep --jobs <jobs>` (what `make sweep` runs) in `ws`, each line of its log timed: wall,
    `start_s` (the first entry handed to a worker), the entries it trained and their train_time_s, how many it
    restored from the run-cache, and what its log says of DVC's status and the one dvc.lock write. With `check`
    false, a failure after the dvc.lock write (the plot stage's) is no error."""
    load, start = os.getloadavg()[0], time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:  # DVC's own messages ("... is cached - skipping run")
        args = [sys.executable, "-m", "tools.sweep", "--workspace", str(ws), "--jobs", str(jobs)]
        proc = subprocess.Popen(args, cwd=ROOT, env=env(), stdout=out, stderr=subprocess.PIPE, text=True)
        lines = [(time.perf_counter() - start, line) for line in proc.stderr]
        proc.wait()
        wall = time.perf_counter() - start
        out.seek(0)
        restored = out.read().count("is cached - skipping run")
    log = "".join(line for _, line in lines)
    if proc.returncode and (check or "in one write" not in log):
        raise RuntimeError(f"make sweep failed in {ws}:\n{log[-3000:]}")
    trained = re.findall(r"Running stage 'sweep@([^']+)'", log)
    first = min((t for t, line in lines if "Running stage 'sweep@" in line), default=wall)
    train = sum(json.loads((ws / f"records/sweep/{a}.json").read_text())["train_time_s"] for a in trained)
    lock_write = float(m.group(1)) if (m := re.search(r"in one write \(([\d.]+) s\)", log)) else 0.0
    spent, n = wall - first - train, len(trained)
    status = float(re.search(r"status in ([\d.]+) s", log).group(1))
    figures = dict(wall_s=wall, start_s=first, train_s=train, status_s=status, lock_write_s=lock_write)
    return {"jobs": jobs, **{k: round(v, 2) for k, v in figures.items()}, "trained": trained, "restored": restored,
            "overhead_per_entry_s": round(spent / n, 3) if n else None,
            "bookkeeping_per_entry_s": round((spent - lock_write) / n, 3) if n else None,  # but the dvc.lock write
            "load_before": round(load, 2)}  # fmt: skip


def section(work: Path, rounds: int = 2) -> dict[str, Any]:
    """Runs with JOBS=1 and JOBS=2, interleaved, `rounds` each, on fresh copies of the base workspace; medians."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    base, runs = base_workspace(work), []
    for r in range(rounds):
        for jobs in JOBS:
            ws = work / f"r{r}-j{jobs}"
            shutil.copytree(base, ws, symlinks=True)
            runs.append(make_sweep(ws, jobs))
            if sorted(runs[-1]["trained"]) != sorted(ENTRIES):
                raise RuntimeError(f"make sweep trained {runs[-1]['trained']}, not {ENTRIES}")
    out: dict[str, Any] = {"entries": len(ARCHS), "archs": ARCHS, "runs": runs}
    for j in JOBS:
        for key in ("wall_s", "start_s", "train_s", "overhead_per_entry_s"):
            out[f"jobs{j}_{key}"] = round(statistics.median(r[key] for r in runs if r["jobs"] == j), 3)
    out["jobs2_over_jobs1"] = round(out["jobs2_wall_s"] / out["jobs1_wall_s"], 3)
    return out
