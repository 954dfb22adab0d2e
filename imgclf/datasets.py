"""Where each dataset's images live and how they are labelled: the one definition stages share."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from pathlib import Path
from typing import Any, NamedTuple

from imgclf.common import PipelineError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Written by the scrape stage next to the class folders when a label is not its folder's name.
CLASS_MAP = "classes.json"
# A label of these characters is its own folder name (so existing params files keep their folders).
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# Names Windows refuses for a file or folder, with or without an extension.
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


class DatasetClass(NamedTuple):
    """One class of a web dataset: its label (as written, NFC), its search query and its folder name."""

    label: str
    query: str
    folder: str


def class_folder(label: str) -> str:
    """A folder name for `label` that is safe on Linux, macOS and Windows: the label itself when it is a plain
    name (ASCII letters, digits, `_.-`), else an ASCII slug plus a hash of the label ignoring case (`Sagrada
    Família` -> `Sagrada_Familia-<8 hex>`, `東京タワー` -> `<8 hex>`)."""
    label = unicodedata.normalize("NFC", label)
    stem = label.split(".")[0].casefold()
    if (
        _PLAIN.fullmatch(label)
        and not label.endswith(".")
        and stem not in _WINDOWS_RESERVED
        and label.casefold() != CLASS_MAP
    ):
        return label
    ascii_text = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9-]+", "_", ascii_text).strip("_-")[:40].rstrip("_-")
    # casefold: labels that differ only in case get the same hash, so they collide below, as they would on a
    # case-insensitive file system
    digest = hashlib.sha256(label.casefold().encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else digest


def parse_classes(value: Any, key: str = "classes") -> list[DatasetClass]:
    """The classes of `datasets.<name>.classes`: a list of names (each the label and the search query, as in
    `[India Gate, Arc de Triomphe]`) or a mapping label -> search query. Labels are kept as written (Unicode
    NFC, surrounding blanks dropped); two labels whose folders would be the same (equal ignoring case) fail.
    Raises PipelineError naming `key` (and the entry) and the problem."""

    def should(at: str, expected: str, got: Any) -> PipelineError:
        return PipelineError(f"params.yaml: `{key}{at}` should be {expected}, got {got!r}. Fix it in params.yaml.")

    if isinstance(value, list):
        entries = [(f"[{i}]", name, name) for i, name in enumerate(value)]
    elif isinstance(value, dict):
        entries = [(f".{name}", name, query) for name, query in value.items()]
    else:
        raise should(
            "", "a list of class names ([India Gate, Arc de Triomphe]) or a mapping label -> search query", value
        )
    if len(entries) < 2:
        raise should("", "at least two classes", value)
    out: list[DatasetClass] = []
    written: dict[str, str] = {}  # folder, casefolded -> the name as written that took it
    for at, name, query in entries:
        if not (isinstance(name, str) and name.strip()):
            raise should(
                at,
                "a class name: non-empty text (quote one YAML reads as a number, date or boolean, such as '1984')",
                name,
            )
        if not (isinstance(query, str) and query.strip()):
            raise should(at, "a non-empty search query", query)
        label = unicodedata.normalize("NFC", name.strip())
        folder = class_folder(label)
        if folder.casefold() in written:
            raise PipelineError(
                f"params.yaml: `{key}`: classes {written[folder.casefold()]!r} and {name!r} would "
                f"share the folder {folder!r} (labels are compared after Unicode NFC normalisation "
                "and ignoring case, as Windows and macOS file systems do): rename or remove one."
            )
        written[folder.casefold()] = name
        out.append(DatasetClass(label, query.strip(), folder))
    return out


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


def write_class_map(folders: dict[str, str]) -> dict[str, bytes]:
    """{CLASS_MAP: its bytes, JSON folder -> label} for `folders` (label -> folder) when some label is not its
    folder's name, else {} (so a dataset of plain names is the same files as before labels could be written
    freely, and existing datasets need no retraining)."""
    if all(folder == label for label, folder in folders.items()):
        return {}
    text = json.dumps({f: label for label, f in folders.items()}, ensure_ascii=False, indent=2, sort_keys=True)
    return {CLASS_MAP: (text + "\n").encode("utf-8")}


def read_class_map(images_dir: Path) -> dict[str, str]:
    """folder -> label from the dataset's CLASS_MAP, or {} when it has none (every label is its folder's name)."""
    path = Path(images_dir) / CLASS_MAP
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def labelled_items(images_dir: Path, label: str) -> tuple[list[Path], list[str]]:
    """(files, labels) of a dataset folder: `folder` labels by parent folder (web datasets,
    `images/<class folder>/<hash>.jpg`, the folder's label read from CLASS_MAP when there is one);
    `cat_vs_dog` and `breed` label Pets files by name."""
    files = image_files(images_dir)
    if label == "folder":
        names = read_class_map(images_dir)
        unknown = sorted({f.parent.name for f in files} - set(names)) if names else []
        if unknown:
            raise PipelineError(
                f"{images_dir}: class folder(s) {', '.join(unknown)} are not in its {CLASS_MAP}: "
                "rerun the scrape stage (`dvc repro -f scrape@<dataset>`)."
            )
        labels = [names.get(f.parent.name, f.parent.name) for f in files]
    else:
        labels = [pet_label(f.name, label) for f in files]
    return files, labels
