"""Section 5: from launching a stage process to its first training batch, and how much of that is imports."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import training_images

IMPORTS = {  # each in a fresh interpreter; later ones include earlier ones (fastai imports torch and timm)
    "python": "pass",
    "torch": "import torch",
    "timm": "import timm",
    "fastai.vision.all": "import fastai.vision.all",
    "dvclive": "import dvclive",
    "all": "import torch, timm, fastai.vision.all, dvclive.fastai",
}


def import_times(repeats: int = 3) -> dict[str, float]:
    """Median wall seconds of a fresh `python -c "import X"` for each entry of IMPORTS."""
    out = {}
    for name, stmt in IMPORTS.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", stmt], check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        out[name] = round(statistics.median(times), 3)
    return out


def first_batch(work: Path, repeats: int = 3) -> dict[str, Any]:
    """Median seconds from Popen to each phase of `bench.first_batch` (imports done, DataLoaders built,
    learner built, first training batch)."""
    images = work / "train_images"
    training_images(images)
    phases: dict[str, list[float]] = {"imported": [], "data_ready": [], "learner_ready": [], "first_batch": []}
    for i in range(repeats):
        launched = time.time()
        res = subprocess.run([sys.executable, "-m", "bench.first_batch", str(images), str(work / f"fb{i}")],
                             capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
        if res.returncode or not lines:
            raise RuntimeError(f"bench.first_batch failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
        marks = json.loads(lines[-1])
        for phase in phases:
            phases[phase].append(marks[phase] - launched)
    med = {phase: round(statistics.median(v), 3) for phase, v in phases.items()}
    return {"seconds_from_launch": med, "repeats": repeats,
            "import_share": round(med["imported"] / med["first_batch"], 3) if med["first_batch"] else 0.0}


def startup(work: Path) -> dict[str, Any]:
    """Both measurements of section 5."""
    return {"imports_s": import_times(), **first_batch(work)}
