"""Deterministic synthetic data standing in for the web: a Pets-style tarball and web-image folders.

Each class is drawn as its own shape and colour family on a noisy background, so a tiny model can learn
it in an epoch or two. Everything depends only on names and a fixed seed, so the bytes (and DVC's hashes)
are the same on every run and machine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("ellipse", "rectangle", "triangle", "cross", "ring")
# Pets-style breeds: capitalised names are cats, lower-case names are dogs (as in Oxford-IIIT Pets).
CAT_BREEDS = ("Abyssinian", "Bengal", "Persian", "Siamese")
DOG_BREEDS = ("beagle", "boxer", "pug", "shiba_inu")


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big"))


def draw(name: str, class_index: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """One image of class `class_index`: that class's shape and hue, random placement, noise."""
    rng = _rng(name)
    w, h = size
    base = rng.integers(60, 140, size=3)
    noise = rng.normal(0, 18, size=(h, w, 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    hue = np.array([(class_index * 97) % 256, (class_index * 53 + 120) % 256, (class_index * 181 + 60) % 256])
    color = tuple(int(c) for c in np.clip(hue + rng.integers(-25, 25, size=3), 0, 255))
    r = int(rng.integers(min(w, h) // 4, min(w, h) // 2))
    cx, cy = int(rng.integers(r, w - r + 1)), int(rng.integers(r, h - r + 1))
    box = (cx - r, cy - r, cx + r, cy + r)
    d = ImageDraw.Draw(img)
    shape = SHAPES[class_index % len(SHAPES)]
    if shape == "ellipse":
        d.ellipse(box, fill=color)
    elif shape == "rectangle":
        d.rectangle(box, fill=color)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    elif shape == "cross":
        d.rectangle((cx - r, cy - r // 3, cx + r, cy + r // 3), fill=color)
        d.rectangle((cx - r // 3, cy - r, cx + r // 3, cy + r), fill=color)
    else:
        d.ellipse(box, outline=color, width=max(3, r // 3))
    return img


def jpeg_bytes(img: Image.Image) -> bytes:
    """JPEG encoding with fixed settings (deterministic)."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def pets_tarball(path: Path, per_breed: int = 12) -> None:
    """A tarball laid out like fastai's oxford-iiit-pet.tgz (`oxford-iiit-pet/images/<Breed>_<n>.jpg`),
    plus a non-image file as the real one has. Fixed mtimes and gzip header: same bytes every time."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))

        for breed in CAT_BREEDS + DOG_BREEDS:
            cls = 0 if breed in CAT_BREEDS else 1
            for n in range(1, per_breed + 1):
                add(f"oxford-iiit-pet/images/{breed}_{n}.jpg", jpeg_bytes(draw(f"pets/{breed}/{n}", cls)))
        add("oxford-iiit-pet/images/Abyssinian_100.mat", b"MATLAB 5.0 MAT-file, not an image")
        add("oxford-iiit-pet/annotations/README", b"synthetic stand-in for the Oxford-IIIT Pets annotations\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue())


def web_images(root: Path, dataset: str, classes: list[str], per_class: int, wrong: int = 0) -> list[tuple[str, str]]:
    """Write `root/<dataset>/<class>/<n>.jpg` and return (class, relative URL path) rows, with a few rows
    a real scrape meets: a dead link, an HTML page named .jpg, and the same bytes under two URLs. And label
    noise, as image search returns it: `wrong` images per class that are drawn as the next class but listed
    under this one (`<class>/wrong<n>.jpg`, so the URL tells which they are)."""
    rows = []
    for i, cls in enumerate(classes):
        folder = root / dataset / cls
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, per_class + 1):
            (folder / f"{n}.jpg").write_bytes(jpeg_bytes(draw(f"{dataset}/{cls}/{n}", i)))
            rows.append((cls, f"{dataset}/{cls}/{n}.jpg"))
        for n in range(1, wrong + 1):
            other = (i + 1) % len(classes)
            (folder / f"wrong{n}.jpg").write_bytes(jpeg_bytes(draw(f"{dataset}/{cls}/wrong{n}", other)))
            rows.append((cls, f"{dataset}/{cls}/wrong{n}.jpg"))
    first = classes[0]
    (root / dataset / first / "page.jpg").write_bytes(b"<!doctype html><html><body>not an image</body></html>")
    (root / dataset / first / "copy.jpg").write_bytes((root / dataset / first / "1.jpg").read_bytes())
    rows += [
        (first, f"{dataset}/{first}/missing.jpg"),
        (first, f"{dataset}/{first}/page.jpg"),
        (first, f"{dataset}/{first}/copy.jpg"),
    ]
    return rows
