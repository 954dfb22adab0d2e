"""No-op `dvc repro`: the demo workspace (every stage up to date) against DVC's floor, a one-stage project."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]


def _run(args: list[str], cwd: Path) -> str:
    """Run a command with this venv first on PATH (stages run `python`); its stdout, or an error with its output."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1"}
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{' '.join(args)} failed in {cwd}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def floor_project(path: Path) -> None:
    """git init + dvc init + one `echo` stage, run once and committed."""
    path.mkdir(parents=True)
    commit = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "floor"]
    stage = ["stage", "add", "-q", "-n", "hello", "-o", "out.txt", "echo hi > out.txt"]
    steps = [["git", "init", "-q"], [*DVC, "init", "-q"], [*DVC, *stage], [*DVC, "repro", "-q"], ["git", "add", "-A"]]
    for cmd in [*steps, commit]:
        _run(cmd, path)


def noop_seconds(ws: Path) -> float:
    """Wall seconds of one `dvc repro` that must find everything up to date (else the figure is refused)."""
    start = time.perf_counter()
    out = _run([*DVC, "repro"], ws)
    if "Running stage" in out:
        raise RuntimeError(f"`dvc repro` in {ws} was not a no-op:\n{out[-2000:]}")
    return time.perf_counter() - start


def noop_repro(work: Path, repeats: int = 3) -> dict[str, Any]:
    """Build the demo workspace (`python -m demo.run`: the whole pipeline once), then time no-op reruns of it
    and of the floor, interleaved, after one warm-up each."""
    demo, floor = work / "demo", work / "floor"
    start = time.perf_counter()
    _run([sys.executable, "-m", "demo.run", "--dir", str(demo), "--port", str(_free_port())], ROOT)
    build_s = time.perf_counter() - start
    floor_project(floor)
    sides = {"demo": demo, "floor": floor}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(repeats + 1):
        for name, ws in sides.items():
            seconds = noop_seconds(ws)
            if i:  # the first round warms the page cache and DVC's state database
                times[name].append(seconds)
    med = {name: round(statistics.median(t), 3) for name, t in times.items()}
    stages = len(_run([*DVC, "stage", "list"], demo).splitlines())
    out = dict(noop_repro_s=med["demo"], floor_s=med["floor"], ratio=round(med["demo"] / med["floor"], 3))
    return {**out, "stages": stages, "repeats": repeats, "demo_build_s": round(build_s, 1)}
