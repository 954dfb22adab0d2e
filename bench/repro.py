"""Section 4: a no-op `dvc repro` of the demo workspace against DVC's floor, a one-stage project, plus the
measured parts of the difference (YAML parsing, and one dvc.yaml change tried on a copy of the workspace)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Sample, ratio, summary, timed

ROOT = Path(__file__).resolve().parents[1]
# check_params reads params.yaml as a whole-file *param*: DVC parses it and copies every value into dvc.lock.
# As a plain file dependency it is hashed instead; check_params still reruns on any change to the file.
WHOLE_FILE_PARAM = "    params:\n      - params.yaml:        # the whole file: a typo anywhere fails here, before any work\n"
FILE_DEP = "      - params.yaml         # the whole file: a typo anywhere fails here, before any work\n"


def _env() -> dict[str, str]:
    """This venv first on PATH (stages run `python`), no analytics."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1"}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{' '.join(args)} failed in {cwd}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def _dvc(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "dvc", *args], ws)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_workspace(ws: Path) -> float:
    """Build the demo workspace (`python -m demo.run`, the whole pipeline once); return the seconds it took."""
    start = time.perf_counter()
    _run([sys.executable, "-m", "demo.run", "--dir", str(ws), "--port", str(free_port())], ROOT)
    return time.perf_counter() - start


def trivial_project(path: Path) -> None:
    """DVC's floor: git init + dvc init + one `echo` stage, run once and committed."""
    path.mkdir(parents=True)
    _run(["git", "init", "-q"], path)
    _dvc(path, "init", "-q")
    _dvc(path, "stage", "add", "-q", "-n", "hello", "-o", "out.txt", "echo hello > out.txt")
    _dvc(path, "repro", "-q")
    _run(["git", "add", "-A"], path)
    _run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "floor"], path)


def noop_repro(ws: Path) -> Sample:
    """Time one `dvc repro` that must find everything up to date (else the measurement is refused)."""
    res, sample = timed(lambda: _dvc(ws, "repro"))
    if "Running stage" in res.stdout:
        raise RuntimeError(f"`dvc repro` in {ws} was not a no-op:\n{res.stdout[-2000:]}")
    return sample


def yaml_costs(ws: Path, repeats: int = 5) -> dict[str, Any]:
    """Milliseconds DVC's YAML parser (ruamel, round-trip) takes on each pipeline file, and how many stages
    there are: a no-op repro parses dvc.lock twice and params.yaml once per stage with params."""
    from dvc.utils.serialize._yaml import parse_yaml

    out: dict[str, Any] = {}
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        text = (ws / name).read_text()
        parse_yaml(text, name)
        start = time.perf_counter()
        for _ in range(repeats):
            lock = parse_yaml(text, name)
        out[name] = {"bytes": len(text), "parse_ms": round((time.perf_counter() - start) / repeats * 1000, 1)}
        if name == "dvc.lock":
            stages = lock["stages"]
            out["stages"] = len(stages)
            out["stages_with_params"] = sum(1 for s in stages.values() if s.get("params"))
    return out


def file_dep_variant(dvc_yaml: str) -> str | None:
    """dvc.yaml with check_params' whole-file param turned into a file dependency; None when dvc.yaml no
    longer has that param (the change was made, or the stage was rewritten)."""
    anchor = "      - stages/training.py\n    outs:\n      - data/params.ok:"
    text = dvc_yaml.replace(WHOLE_FILE_PARAM, "", 1)
    if text == dvc_yaml or anchor not in text:
        return None
    return text.replace(anchor, anchor.replace("    outs:", FILE_DEP.rstrip("\n") + "\n    outs:"), 1)


def repro_overhead(work: Path, repeats: int = 5) -> dict[str, Any]:
    """Median wall time of `repeats` no-op reruns of the demo workspace and of the floor (interleaved), and
    the same for a copy of the workspace where check_params depends on params.yaml as a file."""
    ws, floor, variant = work / "demo", work / "floor", work / "demo_file_dep"
    build_s = demo_workspace(ws)
    trivial_project(floor)
    changed = file_dep_variant((ws / "dvc.yaml").read_text())
    has_variant = changed is not None
    if changed is not None:
        shutil.copytree(ws, variant, symlinks=True)
        (variant / "dvc.yaml").write_text(changed)
        _dvc(variant, "repro")  # reruns check_params only; its output is unchanged, so nothing after it
    sides = {"demo": ws, "floor": floor, **({"demo_file_dep": variant} if has_variant else {})}
    for path in sides.values():
        noop_repro(path)  # warm-up: page cache, DVC's state database
    samples: dict[str, list[Sample]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, path in sides.items():
            samples[name].append(noop_repro(path))
    result: dict[str, Any] = {"demo_build_s": round(build_s, 1), "repeats": repeats,
                              **{name: summary(s) for name, s in samples.items()}, "yaml": yaml_costs(ws)}
    result["ratio_wall"] = ratio(result["demo"]["wall_s"], result["floor"]["wall_s"])
    result["ratio_cpu"] = ratio(result["demo"]["cpu_s"], result["floor"]["cpu_s"])
    if has_variant:
        result["file_dep_ratio_wall"] = ratio(result["demo_file_dep"]["wall_s"], result["floor"]["wall_s"])
        result["file_dep_lock_bytes"] = len((variant / "dvc.lock").read_text())
    return result
