"""Section 2: verify + resize of Pets-size JPEGs, ours (stages.images) against fastai's verify_images +
resize_images, on the same files with the same number of workers.

Ours: clean_image(size=256) + encode_jpeg(quality 90) per file (one decode that both verifies and feeds the
resize), in a pool of 2 threads as stages.download_pets.extract_images runs it, and in a pool of 2 processes.
fastai: verify_images(files) (a draft decode of each file, fastcore.parallel with defaults.cpus processes),
then resize_images(src, max_workers=2, max_size=342, dest=..., quality=90), which verifies every file again,
decodes it fully, resizes the longer side to 342 (500x375 -> 342x256: the same shorter side as ours, 256) with
the same bilinear filter and saves it at quality 90.
"""
from __future__ import annotations

import shutil
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import THREADS, Sample, photo_jpegs, ratio, summary, timed

SIZE = 256  # shorter side, as download_pets.image_size
FASTAI_MAX_SIZE = 342  # longer side that gives fastai the same 256 px shorter side on 500x375 / 375x500
QUALITY = 90


def convert_one(src: Path, dest_dir: Path) -> bool:
    """Ours for one file: decode + checks + RGB + resize (stages.images.clean_image), encode, write.
    False when the image is rejected."""
    from imgclf.sources.images import ImageRejected, clean_image, encode_jpeg

    try:
        (dest_dir / src.name).write_bytes(encode_jpeg(clean_image(src, size=SIZE), quality=QUALITY))
    except ImageRejected:
        return False
    return True


def ours(files: list[Path], dest: Path, processes: bool) -> int:
    """Convert `files` into `dest` with THREADS workers (threads or processes); return how many were kept."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    pool = ProcessPoolExecutor(THREADS) if processes else ThreadPoolExecutor(THREADS)
    with pool:
        return sum(pool.map(convert_one, files, [dest] * len(files), chunksize=16 if processes else 1))


def fastai_way(src: Path, files: list[Path], dest: Path) -> int:
    """fastai's verify_images then resize_images on the same folder; return how many files it wrote."""
    from fastai.vision.utils import resize_images, verify_images

    shutil.rmtree(dest, ignore_errors=True)
    failed = verify_images(files)
    if len(failed):
        raise RuntimeError(f"fastai rejected {len(failed)} generated images")
    resize_images(src, max_workers=THREADS, max_size=FASTAI_MAX_SIZE, dest=dest, quality=QUALITY)
    return sum(1 for _ in dest.iterdir())


def per_image_costs(files: list[Path], n: int = 200) -> dict[str, float]:
    """Single-thread CPU milliseconds per image of the steps both ways pay (full decode, bilinear resize to a
    256 px shorter side, JPEG encode) and of the one only fastai pays (a 1/8-scale draft decode, twice: once in
    verify_images, once in resize_image): what bounds the speed-up."""
    import io
    import time

    from PIL import Image

    def cost(step) -> float:
        start = time.process_time()
        for f in files[:n]:
            step(f)
        return round((time.process_time() - start) / min(n, len(files)) * 1000, 3)

    def decoded(f: Path) -> Image.Image:
        with Image.open(f) as img:
            img.load()
            return img.copy()

    def draft(f: Path) -> None:
        with Image.open(f) as img:
            img.draft(img.mode, (32, 32))
            img.load()

    sample = decoded(files[0])
    small = sample.resize((SIZE * sample.width // min(sample.size), SIZE * sample.height // min(sample.size)))
    return {"decode_ms": cost(decoded), "draft_decode_ms": cost(draft),
            "resize_ms": cost(lambda f: sample.resize(small.size, Image.Resampling.BILINEAR)),
            "encode_ms": cost(lambda f: small.save(io.BytesIO(), "JPEG", quality=QUALITY))}


def prep_speed(work: Path, n_images: int = 1000, repeats: int = 3) -> dict[str, Any]:
    """Images/s of each way (median of `repeats`, interleaved after one warm-up each) and ours/fastai."""
    from fastcore.basics import defaults
    from PIL import Image

    src = work / "photos"
    files = photo_jpegs(src, n_images)
    ways = {
        "ours_threads": lambda: ours(files, work / "out_threads", processes=False),
        "ours_processes": lambda: ours(files, work / "out_processes", processes=True),
        "fastai": lambda: fastai_way(src, files, work / "out_fastai"),
    }
    samples: dict[str, list[Sample]] = {name: [] for name in ways}
    counts: dict[str, int] = {}
    for name, fn in ways.items():
        counts[name] = fn()  # warm-up: imports, page cache
    for _ in range(repeats):
        for name, fn in ways.items():
            counts[name], sample = timed(fn)
            samples[name].append(sample)
    result: dict[str, Any] = {"images": len(files), "workers": THREADS, "fastai_verify_workers": defaults.cpus,
                              "fastai_max_size": FASTAI_MAX_SIZE, "quality": QUALITY, "shorter_side": SIZE,
                              "written": counts}
    for name in ways:
        s = summary(samples[name])
        result[name] = {**s, "images_per_s": round(len(files) / s["wall_s"], 1),
                        "images_per_cpu_s": round(len(files) / s["cpu_s"], 1)}
    with Image.open(work / "out_threads" / files[1].name) as a, Image.open(work / "out_fastai" / files[1].name) as b:
        result["output_size"] = {"ours": list(a.size), "fastai": list(b.size)}
    result["per_image_cpu"] = per_image_costs(files)
    best = max(("ours_threads", "ours_processes"), key=lambda n: result[n]["images_per_s"])
    result["ours_best"] = best
    result["speedup_wall"] = ratio(result[best]["images_per_s"], result["fastai"]["images_per_s"])
    result["speedup_cpu"] = ratio(result[best]["images_per_cpu_s"], result["fastai"]["images_per_cpu_s"])
    return result
