"""What every benchmark section shares: wall + CPU timing, medians, and the generated inputs."""
from __future__ import annotations

import io
import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

THREADS = 2  # torch threads and pool workers on both sides of every comparison


@dataclass(frozen=True)
class Sample:
    """One timed call: wall seconds, CPU seconds of this process plus its finished children, and the share
    of the machine's cores other processes kept busy meanwhile (0 = we had the machine to ourselves).

    When `others` is high, wall times include waiting for other jobs; CPU time counts only our own work."""

    wall: float
    cpu: float
    others: float


def _cpu_now() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _machine_busy() -> float:
    """CPU seconds all processes have used since boot (Linux /proc/stat; 0.0 elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], Any]) -> tuple[Any, Sample]:
    """Call `fn()` and return its result with the wall and CPU time it took."""
    busy, cpu, wall = _machine_busy(), _cpu_now(), time.perf_counter()
    result = fn()
    wall, cpu = time.perf_counter() - wall, _cpu_now() - cpu
    others = max(0.0, _machine_busy() - busy - cpu) / ((os.cpu_count() or 1) * wall) if busy else 0.0
    return result, Sample(wall, cpu, min(others, 1.0))


def median(values: list[float]) -> float:
    """The median (0.0 for no values, so an empty section still prints)."""
    return statistics.median(values) if values else 0.0


def summary(samples: list[Sample]) -> dict[str, Any]:
    """Median wall and CPU seconds of `samples`, plus the raw values (rounded) for results.json."""
    return {"wall_s": round(median([s.wall for s in samples]), 4), "cpu_s": round(median([s.cpu for s in samples]), 4),
            "wall_min_s": round(min((s.wall for s in samples), default=0.0), 4),
            "others_share": round(median([s.others for s in samples]), 3),
            "wall_all_s": [round(s.wall, 4) for s in samples], "cpu_all_s": [round(s.cpu, 4) for s in samples]}


def ratio(a: float, b: float) -> float:
    """a / b rounded for the table; 0.0 when b is 0 (a section that did not run)."""
    return round(a / b, 3) if b else 0.0


def load_average() -> float:
    """The 1-minute load average: above the core count, wall times include other jobs' work."""
    return round(os.getloadavg()[0], 2)


def training_images(root: Path, n_classes: int = 10, per_class: int = 64, size: int = 64) -> list[Path]:
    """`n_classes * per_class` demo-style images (demo.synthetic.draw), stored as the data stages store them:
    shorter side `size`, deterministic JPEG (stages.images), one folder per class. Returns the files, sorted."""
    from demo.synthetic import draw, jpeg_bytes
    from imgclf.sources.images import clean_image, encode_jpeg

    files = []
    for c in range(n_classes):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            path = folder / f"{n:03d}.jpg"
            if not path.is_file():
                raw = jpeg_bytes(draw(f"bench/{c}/{n}", c))
                path.write_bytes(encode_jpeg(clean_image(raw, size=size)))
            files.append(path)
    return sorted(files)


def photo_jpeg(index: int) -> bytes:
    """A deterministic photo-like JPEG the size of a Pets image (500x375 or 375x500, quality 90): smooth
    gradients, sensor-like noise and a few filled shapes, so it compresses like a photo, not like flat colour."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(index)
    w, h = (375, 500) if index % 3 == 0 else (500, 375)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * rng.uniform(0.1, 0.5) + rng.uniform(0, 100)) % 256,
                     (yy * rng.uniform(0.1, 0.5) + rng.uniform(0, 100)) % 256,
                     ((xx + yy) * 0.2 + rng.uniform(0, 100)) % 256], axis=-1)
    img = Image.fromarray(np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0, s = int(rng.integers(0, w - 50)), int(rng.integers(0, h - 50)), int(rng.integers(20, 150))
        draw.ellipse((x0, y0, x0 + s, y0 + s), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def photo_jpegs(root: Path, n: int = 1000) -> list[Path]:
    """`n` photo-like JPEGs in `root` (generated once; reused when present)."""
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        path = root / f"photo_{i:04d}.jpg"
        if not path.is_file():
            path.write_bytes(photo_jpeg(i))
        files.append(path)
    return files
