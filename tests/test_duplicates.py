"""imgclf.duplicates on real low-detail images (scikit-learn's digits, classes 0-4, 901 images at 64 px), where
distinct images look alike: planted copies of each kind are found, distinct images are not merged, and the
candidate search scales."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench import data
from imgclf import duplicates


@pytest.fixture(scope="module")
def digits() -> list[Image.Image]:
    return data.digits()


@pytest.mark.parametrize("kind", [k for k in data.KINDS if k != "crop 5%"])
def test_planted_copies_are_found(digits: list[Image.Image], kind: str) -> None:
    recall, largest = data.planted(digits, kind)
    assert recall >= 0.95, f"{kind}: recall {recall:.2f}"
    assert largest == 2  # each copy joins its original and nothing else


@pytest.mark.xfail(strict=True, reason="known gap: a 5% crop moves pHash past 8 bits or fails the confirm")
def test_cropped_copies_are_found(digits: list[Image.Image]) -> None:
    recall, _ = data.planted(digits, "crop 5%")
    assert recall >= 0.95, f"crop: recall {recall:.2f}"


def test_distinct_low_detail_images_stay_apart(digits: list[Image.Image]) -> None:
    merged, largest = data.distinct(digits)
    assert merged / len(digits) <= 0.01, f"{merged} of {len(digits)} distinct digits merged"
    assert largest <= 2


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
    figures = data.speed(digits)
    print(figures)
    assert figures["group_100k_s"] <= 10
