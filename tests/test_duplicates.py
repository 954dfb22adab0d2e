"""imgclf.duplicates on real low-detail images (scikit-learn's digits, classes 0-4, 901 images at 64 px), where
distinct images look alike: planted copies of each kind are found, distinct images are not merged, and the
candidate search scales."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from sklearn.datasets import load_digits

from imgclf import duplicates

PLANTED = 90


@pytest.fixture(scope="module")
def digits() -> list[Image.Image]:
    data = load_digits(n_class=5).data
    grey = (data.reshape(-1, 8, 8) * 255 / 16).astype(np.uint8)
    return [Image.fromarray(g).resize((64, 64), Image.Resampling.BICUBIC).convert("RGB") for g in grey]


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _crop(img: Image.Image, rng: np.random.Generator, fraction: float) -> Image.Image:
    w, h = img.size
    dx, dy = int(w * fraction), int(h * fraction)
    x, y = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
    return img.crop((x, y, x + w - dx, y + h - dy)).resize((w, h), Image.Resampling.BICUBIC)


KINDS = {
    "resize": lambda img, rng: img.resize((int(64 * (s := rng.choice([0.5, 0.75, 1.5, 2.0]))), int(64 * s))),
    "jpeg q30": lambda img, rng: _jpeg(img, 30),
    "brightness": lambda img, rng: ImageEnhance.Brightness(img).enhance(rng.choice([0.8, 1.2])),
    "contrast": lambda img, rng: ImageEnhance.Contrast(img).enhance(rng.choice([0.8, 1.2])),
    "crop 5%": lambda img, rng: _crop(img, rng, 0.05),
}


def _recall(digits: list[Image.Image], kind: str) -> tuple[float, np.ndarray]:
    rng = np.random.default_rng(sorted(KINDS).index(kind))
    picks = rng.choice(len(digits), PLANTED, replace=False)
    images = digits + [KINDS[kind](digits[i], rng) for i in picks]
    groups = duplicates.duplicate_groups(images)
    found = groups[len(digits) :] == groups[picks]
    return float(found.mean()), groups


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "crop 5%"])
def test_planted_copies_are_found(digits: list[Image.Image], kind: str) -> None:
    recall, groups = _recall(digits, kind)
    assert recall >= 0.95, f"{kind}: recall {recall:.2f}"
    assert np.bincount(groups).max() == 2  # each copy joins its original and nothing else


@pytest.mark.xfail(strict=True, reason="known gap: a 5% crop moves pHash past 8 bits or fails the confirm")
def test_cropped_copies_are_found(digits: list[Image.Image]) -> None:
    recall, _ = _recall(digits, "crop 5%")
    assert recall >= 0.95, f"crop: recall {recall:.2f}"


def test_distinct_low_detail_images_stay_apart(digits: list[Image.Image]) -> None:
    groups = duplicates.duplicate_groups(digits)
    sizes = np.bincount(groups)
    merged = int((sizes[groups] > 1).sum())
    assert merged / len(digits) <= 0.01, f"{merged} of {len(digits)} distinct digits merged"
    assert sizes.max() <= 2


def test_exact_copies_group_whatever_their_bytes(digits: list[Image.Image]) -> None:
    copy = digits[3].copy()
    assert duplicates.exact_key(copy) == duplicates.exact_key(digits[3])
    assert duplicates.exact_key(digits[4]) != duplicates.exact_key(digits[3])
    groups = duplicates.duplicate_groups([digits[3], digits[4], copy])
    assert groups.tolist() == [0, 1, 0]


def test_candidate_pairs_are_every_pair_within_the_distance() -> None:
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, 400, dtype=np.int64).astype(np.uint64)
    near = hashes[:40] ^ (np.uint64(1) << rng.integers(0, 64, 40).astype(np.uint64))  # one bit away
    near ^= np.uint64(1) << np.uint64(7)
    hashes = np.concatenate([hashes, near])
    for distance in (2, 3, 6):
        xor = hashes[:, None] ^ hashes[None, :]
        i, j = np.nonzero(np.triu(np.bitwise_count(xor) <= distance, k=1))
        expected = sorted(zip(i.tolist(), j.tolist()))
        got = sorted(map(tuple, duplicates.candidate_pairs(hashes, distance).tolist()))
        assert got == expected and len(got) >= 30


def test_a_chain_of_look_alikes_does_not_merge() -> None:
    # 0~1 and 1~2 confirm, 0 and 2 do not: 2 must not join 0's group through 1
    same = {(0, 1): True, (1, 2): True, (0, 2): False}
    groups, refused = duplicates.group(3, np.array([[0, 1], [1, 2]]), lambda i, j: same[(i, j)])
    assert groups.tolist() == [0, 0, 2] and refused == 1
    # when 0 and 2 confirm too, all three join
    same[(0, 2)] = True
    groups, refused = duplicates.group(3, np.array([[0, 1], [1, 2]]), lambda i, j: same[(i, j)])
    assert groups.tolist() == [0, 0, 0] and refused == 0


@pytest.mark.slow
def test_speed_hashing_and_grouping(digits: list[Image.Image]) -> None:
    images = [digits[i % len(digits)] for i in range(10_000)]
    start = time.perf_counter()
    for img in images:
        duplicates.perceptual_hash(img)
    hashing = time.perf_counter() - start
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 100_000, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    start = time.perf_counter()
    pairs = duplicates.candidate_pairs(hashes, duplicates.DEFAULT_DISTANCE)
    duplicates.group(len(hashes), duplicates.by_distance(hashes, pairs), lambda i, j: True)
    grouping = time.perf_counter() - start
    print(f"hashing 10,000 images: {hashing:.1f} s; grouping 100,000 hashes: {grouping:.1f} s")
    assert grouping <= 10
