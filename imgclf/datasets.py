"""Where each dataset's images live and how they are labelled: the one definition stages share."""
from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def pet_is_cat(name: str) -> bool:
    """Oxford-IIIT Pets: cat breeds are capitalised (`Abyssinian_1.jpg`), dog breeds are not (`beagle_1.jpg`)."""
    return name[:1].isupper()


def pet_breed(name: str) -> str:
    """Oxford-IIIT Pets: the breed is the file name before the trailing `_<n>.jpg` (`great_pyrenees_12.jpg`)."""
    return Path(name).stem.rsplit("_", 1)[0]


def pet_label(name: str, label: str) -> str:
    """Label of a Pets file for a task: `cat_vs_dog` ("cat"/"dog") or `breed`."""
    if label == "cat_vs_dog":
        return "cat" if pet_is_cat(name) else "dog"
    if label == "breed":
        return pet_breed(name)
    raise ValueError(f"Pets images support the labels cat_vs_dog and breed, not {label!r}")


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, sorted, so every machine lists them in the same order."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def labelled_items(images_dir: Path, label: str) -> tuple[list[Path], list[str]]:
    """(files, labels) of a dataset folder: `folder` labels by parent folder (web datasets,
    `images/<class>/<hash>.jpg`); `cat_vs_dog` and `breed` label Pets files by name."""
    files = image_files(images_dir)
    if label == "folder":
        labels = [f.parent.name for f in files]
    else:
        labels = [pet_label(f.name, label) for f in files]
    return files, labels
