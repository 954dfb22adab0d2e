"""`make bench`: the pipeline's costs on this machine, each against a plain baseline measured in the same run.

    python -m bench.run [--only train,sweep,zoo,data] [--work DIR]

Sections: `train` (bench/gpu.py: our training against a plain PyTorch loop and the bare step, a stage's start-up;
the GPU sizes where CUDA is, small CPU sizes elsewhere); on request, `sweep` (bench/sweep.py, `make bench-sweep`),
`zoo` (bench/zoo.py, `make bench-zoo`: DVC's bookkeeping with the whole zoo) and `data` (bench/data.py:
duplicate groups on real low-detail images, and their speed). Writes bench/results.json: the
headline figures at the top, each section's details (with the load average before and after it) below; what
was not measured this time keeps its last figures. A script, not a test: the figures depend on the machine and
on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench/results.json"
# section -> the bench module whose section(work) runs it
SECTIONS = {"train": "gpu", "sweep": "sweep", "zoo": "zoo", "data": "data"}
DEFAULT = ("train",)
ZOO = ("status_s", "status_ratio", "status_ratio_file", "repro_dry_s", "commit_one_s", "commit_one_ratio")
ZOO += ("lock_write_s", "lock_write_ratio", "restore_s", "restore_lock_write_s", "restore_dvc_repro_s")
HEADLINE = {  # headline key -> (section, key in the section's results)
    **{k: ("train", k) for k in ("train_overhead_ratio", "in_stage_over_step_alone", "startup_s")},
    **{f"sweep_{k}": ("sweep", k) for k in ("jobs1_overhead_per_entry_s", "jobs1_start_s", "jobs2_over_jobs1")},
    **{f"zoo_{k}": ("zoo", f"zoo_{k}") for k in (*ZOO, "marginal_entry_s")},
    **{f"duplicates_{k}": ("data", k) for k in ("recall", "distinct_merged", "hash_10k_s", "group_100k_s")},
}


def env() -> dict[str, str]:
    """This environment with this Python's folder first on PATH (stages run `python`), DVC without analytics."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1"}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a command; an error with the end of its output if it fails."""
    res = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"{' '.join(args)} failed in {cwd}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def dvc(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], ws)


def git_commit(ws: Path, message: str) -> None:
    run(["git", "add", "-A"], ws)
    run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", message], ws)


def new_project(ws: Path) -> None:
    ws.mkdir(parents=True)
    run(["git", "init", "-q"], ws)
    dvc(ws, "init", "-q")


def demo_workspace(ws: Path) -> None:
    """`python -m demo.run --dir ws`: the whole pipeline once, offline, on generated data."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run([sys.executable, "-m", "demo.run", "--dir", str(ws), "--port", str(port)], ROOT)


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(fn(), wall seconds, CPU seconds of this process and its finished children)."""
    import resource

    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    wall, c = time.perf_counter(), cpu()
    result = fn()
    return result, time.perf_counter() - wall, cpu() - c


def machine() -> dict[str, Any]:
    """Cores, CPU model, load and the versions that matter for the figures."""
    import importlib.metadata as md

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").open() if "model name" in line), "")
    versions = {pkg: md.version(pkg) for pkg in ("torch", "fastai", "timm", "dvc")}
    return dict(cores=os.cpu_count(), cpu=cpu, load_average=round(os.getloadavg()[0], 2), **versions)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, print the headline figures, update bench/results.json; 1 if a section failed."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(DEFAULT), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--work", type=Path, help="scratch folder, kept (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    if unknown := sorted(set(only) - set(SECTIONS)):
        ap.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning (on a shared machine, spinning made
    # a CPU training step several times slower). Offline: no hub retries.
    for key, value in (("OMP_WAIT_POLICY", "PASSIVE"), ("HF_HUB_OFFLINE", "1"), ("DVC_NO_ANALYTICS", "1")):
        os.environ.setdefault(key, value)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-"))
    results: dict[str, Any] = {}
    try:
        for name in only:
            info, start = machine(), time.perf_counter()
            print(f"[{time.strftime('%H:%M:%S')}] {name} on {json.dumps(info)}", flush=True)
            (work / name).mkdir(parents=True, exist_ok=True)
            try:
                results[name] = importlib.import_module(f"bench.{SECTIONS[name]}").section(work / name)
            except Exception as e:  # noqa: BLE001 - one broken section must not lose the others' figures
                traceback.print_exc()
                results[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
            took = round(time.perf_counter() - start, 1)
            results[name].update(machine=info, load_after=round(os.getloadavg()[0], 2), took_s=took)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    figures = {key: results[s].get(k) for key, (s, k) in HEADLINE.items() if s in results and k in results[s]}
    print("\n".join(f"{key:<40} {value}" for key, value in figures.items()))
    print("\n".join(f"FAILED {name}: {res['error']}" for name, res in results.items() if "error" in res))
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    RESULTS.write_text(json.dumps({**previous, **figures, **results}, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 1 if any("error" in res for res in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
