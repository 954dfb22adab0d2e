"""`python -m bench.run --only data`: imgclf.duplicates on real low-detail images and its speed.

scikit-learn's digits (classes 0-4, 901 images, 8x8 greys shown at 64 px) are real images no one here drew, and
distinct ones look alike: the hard case for a perceptual hash. Per kind of copy, PLANTED digits get a copy made
that way; recall is the share of copies grouped with their original. On the distinct digits alone: how many are
merged with another, and the largest group. Speed: pHash of 10,000 images; candidate search and grouping of
100,000 random 64-bit hashes. tests/test_duplicates.py asserts the same figures' bounds.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from imgclf import duplicates

PLANTED = 90


def digits() -> list[Image.Image]:
    """scikit-learn's digits 0-4 (its data ships in the wheel) as 64 px RGB images."""
    from sklearn.datasets import load_digits

    grey = (load_digits(n_class=5).data.reshape(-1, 8, 8) * 255 / 16).astype(np.uint8)
    return [Image.fromarray(g).resize((64, 64), Image.Resampling.BICUBIC).convert("RGB") for g in grey]


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _resize(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    side = int(64 * rng.choice([0.5, 0.75, 1.5, 2.0]))
    return img.resize((side, side), Image.Resampling.BICUBIC)


def _crop(img: Image.Image, rng: np.random.Generator, fraction: float = 0.05) -> Image.Image:
    w, h = img.size
    dx, dy = int(w * fraction), int(h * fraction)
    x, y = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
    return img.crop((x, y, x + w - dx, y + h - dy)).resize((w, h), Image.Resampling.BICUBIC)


KINDS = {  # the copies issue 40 names: resized x0.5-2, JPEG q >= 30, brightness or contrast +-20%, crops <= 5%
    "resize": _resize,
    "jpeg q30": lambda img, rng: _jpeg(img, 30),
    "brightness": lambda img, rng: ImageEnhance.Brightness(img).enhance(rng.choice([0.8, 1.2])),
    "contrast": lambda img, rng: ImageEnhance.Contrast(img).enhance(rng.choice([0.8, 1.2])),
    "crop 5%": _crop,
}


def planted(images: list[Image.Image], kind: str) -> tuple[float, int]:
    """(recall, largest group) with PLANTED copies of one kind added to `images`."""
    rng = np.random.default_rng(sorted(KINDS).index(kind))
    picks = rng.choice(len(images), PLANTED, replace=False)
    groups = duplicates.duplicate_groups(images + [KINDS[kind](images[i], rng) for i in picks])
    return float((groups[len(images) :] == groups[picks]).mean()), int(np.bincount(groups).max())


def distinct(images: list[Image.Image]) -> tuple[int, int]:
    """(images merged with another, largest group) over distinct images."""
    sizes = np.bincount(duplicates.duplicate_groups(images))
    return int(sizes[sizes > 1].sum()), int(sizes.max())


def random_hashes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) << np.uint64(1)


def speed(images: list[Image.Image]) -> dict[str, float]:
    """Seconds to pHash 10,000 images (64 px) and to group 100,000 hashes (candidates + union-find)."""
    start = time.perf_counter()
    for i in range(10_000):
        duplicates.perceptual_hash(images[i % len(images)])
    hashing = time.perf_counter() - start
    hashes = random_hashes(100_000)
    start = time.perf_counter()
    pairs = duplicates.by_distance(hashes, duplicates.candidate_pairs(hashes, duplicates.DEFAULT_DISTANCE))
    duplicates.group(len(hashes), pairs, lambda i, j: True)
    return {"hash_10k_s": round(hashing, 2), "group_100k_s": round(time.perf_counter() - start, 2)}


def section(work: Path) -> dict[str, Any]:
    """The figures of docs/cleaning.md's duplicates section."""
    images = digits()
    merged, largest = distinct(images)
    recall = {kind: round(planted(images, kind)[0], 3) for kind in KINDS}
    return {
        "images": len(images),
        "planted_per_kind": PLANTED,
        "recall": recall,
        "distinct_merged": merged,
        "distinct_largest_group": largest,
        "max_distance": duplicates.DEFAULT_DISTANCE,
        **speed(images),
    }


if __name__ == "__main__":
    print(section(Path(".")))
