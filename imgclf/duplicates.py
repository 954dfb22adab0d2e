"""Duplicate groups: exact copies (the same decoded pixels) and near copies (resized, re-encoded, brightness or
contrast changed, lightly cropped).

A perceptual hash (imagehash's pHash, 64 bits) only proposes candidate pairs: low-detail images that are distinct
sit within a few bits of each other, so a second, finer check confirms each pair (the correlation of aligned grey
thumbnails). Candidates come from a multi-index over hash bands: two hashes within r bits agree exactly on at
least one of r + 1 bands (pigeonhole), so bucketing by each band finds every such pair without comparing all
pairs. Groups are formed by union-find over confirmed pairs only, and two groups join only when their
representatives confirm against each other, so a chain of look-alikes never merges distinct images into one group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import imagehash
import numpy as np
from PIL import Image

THUMB = 32  # side of the grey thumbnails the confirm step compares
CROP = 0.04  # the crop the confirm step's views undo (a crop of up to 5% is nearer this view than the whole)
DEFAULT_DISTANCE = 8  # pHash bits within which a pair is a candidate (brightness ±20% moves up to 8)
MIN_CORRELATION = 0.993  # thumbnails this correlated are one image (distinct digits reach 0.992, docs/cleaning.md)
MAX_DIFFERENCE = 4.0  # or thumbnails within this rms of grey levels after the best brightness/contrast fit


def exact_key(img: Image.Image) -> str:
    """Hash of the decoded pixels (mode, size and bytes): equal for exact copies whatever their file bytes."""
    digest = hashlib.sha256(f"{img.mode} {img.size}".encode())
    digest.update(img.tobytes())
    return digest.hexdigest()[:16]


def perceptual_hash(img: Image.Image) -> int:
    """imagehash's 64-bit pHash as an int: close for resized, re-encoded or lightly edited copies."""
    bits = imagehash.phash(img).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


Look = tuple[np.ndarray, float]  # an image's normalised thumbnail views and its whole view's grey-level sd


def look(img: Image.Image) -> Look:
    """What the confirm step compares: thumbnail views and the whole view's spread of grey levels."""
    grey = np.asarray(img.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.float32)
    return thumbnail(img), float(grey.std())


def same_image(a: Look, b: Look) -> bool:
    """Confirm a candidate pair: the thumbnails correlate at least MIN_CORRELATION, or differ by at most
    MAX_DIFFERENCE grey levels once brightness and contrast are fitted. The second rule is for flat images,
    where re-encoding noise is much of what varies and lowers the correlation of true copies."""
    r = correlation(a[0], b[0])
    return r >= MIN_CORRELATION or min(a[1], b[1]) * np.sqrt(max(0.0, 1 - r * r)) <= MAX_DIFFERENCE


def thumbnail(img: Image.Image) -> np.ndarray:
    """Grey THUMB x THUMB thumbnails, zero mean and unit norm (brightness and contrast drop out): the whole image
    first, then crops of CROP of its side from each corner and the centre, so a cropped copy has a view aligned
    with its original."""
    grey = img.convert("L")
    w, h = grey.size
    dx, dy = w * CROP, h * CROP
    boxes = [(0, 0, w, h)] + [(x, y, x + w - dx, y + h - dy) for x, y in ((0, 0), (dx, 0), (0, dy), (dx, dy))]
    boxes.append((dx / 2, dy / 2, w - dx / 2, h - dy / 2))
    views = [np.asarray(grey.resize((THUMB, THUMB), Image.Resampling.BOX, box=b), dtype=np.float32) for b in boxes]
    return np.stack([_normalise(v) for v in views])


def _normalise(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    norm = float(np.linalg.norm(a))
    return a / norm if norm > 0 else a


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """The best correlation between one image's whole view and any view of the other (either way round)."""
    return float(max((a[1:] * b[0]).sum(axis=(1, 2)).max(), (b * a[0]).sum(axis=(1, 2)).max()))


def _bands(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of max_distance + 1 contiguous bit bands covering 64 bits."""
    count = max_distance + 1
    edges = np.linspace(0, 64, count + 1).round().astype(int)
    return [(int(lo), int(hi - lo)) for lo, hi in zip(edges[:-1], edges[1:])]


def candidate_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """All index pairs (i < j) whose 64-bit hashes differ in at most `max_distance` bits, as an (m, 2) array.
    Multi-index: sort by each band's bits, pair the images within each run of equal band values (one numpy step
    per offset within a run), keep the pairs within the distance."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    found = []
    for shift, width in _bands(max_distance):
        keys = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys, sorted_hashes = keys[order], hashes[order]
        offset = 1
        while offset < len(order):
            same = sorted_keys[offset:] == sorted_keys[:-offset]
            if not same.any():
                break  # runs are contiguous: no run is longer than this offset
            close = np.flatnonzero(
                same & (np.bitwise_count(sorted_hashes[offset:] ^ sorted_hashes[:-offset]) <= max_distance)
            )
            a, b = order[close], order[close + offset]
            found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
            offset += 1
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(found).astype(np.int64), axis=0)


def group(n: int, pairs: np.ndarray, confirm: Callable[[int, int], bool]) -> tuple[np.ndarray, int]:
    """Union-find over the candidate pairs (closest first, as given) that `confirm(i, j)`; two groups join only
    when their representatives (each group's first image) also confirm. Returns each image's group id (the
    index of its representative) and the number of confirmed pairs refused by that guard."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    refused = 0
    for i, j in pairs.tolist():
        ri, rj = root(i), root(j)
        if ri == rj or not confirm(i, j):
            continue
        if (ri, rj) != (i, j) and not confirm(ri, rj):
            refused += 1
            continue
        parent[max(ri, rj)] = min(ri, rj)  # the representative stays the earliest image
    return np.array([root(i) for i in range(n)]), refused


def by_distance(hashes: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The pairs sorted closest first (then by index), the order `group` takes them in."""
    distance = np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]])
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0], distance))]


def duplicate_groups(
    images: Sequence[Image.Image],
    max_distance: int = DEFAULT_DISTANCE,
) -> np.ndarray:
    """Group id per image (the index of the group's first image): exact copies by decoded pixels, near copies by
    pHash candidates confirmed by thumbnail correlation."""
    keys = [exact_key(img) for img in images]
    first: dict[str, int] = {}
    exact = np.array([first.setdefault(k, i) for i, k in enumerate(keys)])
    unique = np.flatnonzero(exact == np.arange(len(images)))
    hashes = np.array([perceptual_hash(images[i]) for i in unique], dtype=np.uint64)
    looks = [look(images[i]) for i in unique]
    pairs = by_distance(hashes, candidate_pairs(hashes, max_distance))
    near, _ = group(len(unique), pairs, lambda i, j: same_image(looks[i], looks[j]))
    return unique[near][np.searchsorted(unique, exact)]
