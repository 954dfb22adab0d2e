"""A web dataset from its manifest: download the manifest's URLs, clean the images, write class folders and a report.

Downloads land in a persistent cache (`downloads/<dataset>/`, one file per URL, written atomically), so a
rerun fetches only what is missing. Every image is fully decoded, EXIF-rotated, converted to RGB, checked
for size and shape, deduplicated by content, resized once, and written as `<class folder>/<content hash>.jpg`.
The manifest and the report name classes by their labels as written; a label that is not a plain name gets a
derived folder (imgclf.datasets.class_folder), and `classes.json` beside the folders maps them back. The dataset's
exclusion file (imgclf.sources.exclude) then drops or moves the images it names; the report says which and why.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from imgclf import duplicates
from imgclf.common import PipelineError, atomic_write_text, csv_text, remove_partial_files, write_folder
from imgclf.datasets import class_folder, write_class_map
from imgclf.sources.exclude import Exclusion, apply_exclusions
from imgclf.sources.fetch import fetch_to_file
from imgclf.sources.images import ImageRejected, clean_image, detect_format, encode_jpeg

log = logging.getLogger(__name__)

# `file`: the image's path in the dataset (`<class folder>/<stem>.jpg`), empty when it is not in it. `class` is
# the class whose search found the URL; a relabelled image's `file` is in its new class's folder.
REPORT_FIELDS = ["class", "query", "rank", "url", "status", "reason", "file"]
IN_DATASET = ("ok", "relabelled")  # statuses of the rows whose image is in the dataset


def cache_name(url: str) -> str:
    """File name of a URL's download in the cache: a hash, so no URL can name a path."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]


def download_all(rows: list[dict[str, str]], cache: Path, cfg: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Fetch every manifest URL not in `cache` yet, in parallel; return url -> (status, reason)."""
    from tqdm import tqdm

    urls = sorted({r["url"] for r in rows})
    todo = [u for u in urls if not (cache / cache_name(u)).is_file()]
    outcome = {u: ("ok", "cached") for u in urls if u not in todo}

    def fetch(url: str) -> tuple[str, str, str]:
        res = fetch_to_file(
            url,
            cache / cache_name(url),
            connect_timeout=cfg["connect_timeout_s"],
            deadline=cfg["deadline_s"],
            max_bytes=cfg["max_bytes"],
            max_redirects=cfg["max_redirects"],
            allow_private=cfg["allow_private"],
        )
        return url, res.status, res.reason

    remove_partial_files(cache)  # what a killed run was writing; complete downloads are kept
    if todo:
        log.info("downloading %d of %d URLs (%d cached)", len(todo), len(urls), len(urls) - len(todo))
        with ThreadPoolExecutor(cfg["threads"]) as pool:
            for url, status, reason in tqdm(pool.map(fetch, todo), total=len(todo), disable=None, desc="download"):
                outcome[url] = (status, reason)
    return outcome


def clean_all(
    rows: list[dict[str, str]],
    fetched: dict[str, tuple[str, str]],
    cache: Path,
    cfg: dict[str, Any],
    folders: dict[str, str],
) -> tuple[list[dict[str, Any]], dict[str, bytes], dict[str, str]]:
    """Decode and check every downloaded image; dedupe by content. Returns the report rows, relative path
    (`<folder of its class>/<hash>.jpg`, `folders` maps label -> folder) -> JPEG bytes of the images kept, and
    URL -> content hash (the file stem) of every URL downloaded as an image, kept or not."""
    report, owners = [], defaultdict(list)  # content hash -> report rows holding it
    images: dict[str, bytes] = {}
    looks: dict[str, tuple[int, duplicates.Look]] = {}  # kept file -> (perceptual hash, thumbnails) for the near copies
    stems: dict[str, str] = {}
    for row in rows:
        entry = {"class": row["class"], "query": row.get("query", ""), "rank": row["rank"], "url": row["url"]}
        entry.update(status="", reason="", file="")
        report.append(entry)
        status, reason = fetched[row["url"]]
        if status != "ok":
            entry.update(status=status, reason=reason)
            continue
        data = (cache / cache_name(row["url"])).read_bytes()
        if detect_format(data) is None:
            entry.update(status="not_an_image", reason=f"content starts with {data[:16]!r}")
            continue
        digest = stems[row["url"]] = hashlib.sha256(data).hexdigest()[:16]
        owners[digest].append(entry)
        if len(owners[digest]) > 1:
            continue  # duplicate bytes: decided below, decoded once
        try:
            img = clean_image(data, size=cfg["image_size"], min_side=cfg["min_side"], max_aspect=cfg["max_aspect"])
        except ImageRejected as e:
            entry.update(status=e.status, reason=e.reason)
            continue
        entry.update(status="ok", file=f"{folders[row['class']]}/{digest}.jpg")
        images[entry["file"]] = encode_jpeg(img)
        looks[entry["file"]] = (duplicates.perceptual_hash(img), duplicates.look(img))
    _resolve_duplicates(owners, images)
    _near_duplicates(report, images, looks, cfg["near_distance"], drop=cfg["near_duplicates"] == "drop")
    return report, images, stems


def _resolve_duplicates(owners: dict[str, list[dict[str, Any]]], images: dict[str, bytes]) -> None:
    """Same bytes at several URLs: keep the first within a class; drop from every class when classes differ
    (such an image says nothing about which class it is)."""
    for entries in owners.values():
        if len(entries) == 1:
            continue
        first = entries[0]
        classes = sorted({e["class"] for e in entries})
        if len(classes) > 1:
            if first["status"] == "ok":
                del images[first["file"]]
            for e in entries:
                e.update(
                    status="duplicate_across_classes",
                    file="",
                    reason=f"same image in classes {', '.join(classes)}: dropped from all",
                )
            continue
        for e in entries[1:]:
            e.update(
                status=first["status"] if first["status"] != "ok" else "duplicate",
                reason=f"duplicate of {first['url']}" if first["status"] == "ok" else first["reason"],
            )


def _near_duplicates(
    report: list[dict[str, Any]],
    images: dict[str, bytes],
    looks: dict[str, tuple[int, duplicates.Look]],
    max_distance: int,
    drop: bool,
) -> None:
    """Near copies (imgclf.duplicates: pHash within `max_distance` bits, confirmed by thumbnail correlation):
    every image of a group but its first (in manifest order) is reported as a near-duplicate of the first, and
    with `drop` removed from the dataset."""
    kept = [e for e in report if e["status"] == "ok" and e["file"] in images]
    hashes = np.array([looks[e["file"]][0] for e in kept], dtype=np.uint64)
    seen = [looks[e["file"]][1] for e in kept]
    pairs = duplicates.by_distance(hashes, duplicates.candidate_pairs(hashes, max_distance))
    groups, _ = duplicates.group(len(kept), pairs, lambda i, j: duplicates.same_image(seen[i], seen[j]))
    for i, g in enumerate(groups.tolist()):
        if g == i:
            continue
        first, entry = kept[g], kept[i]
        where = "" if first["class"] == entry["class"] else f" in class {first['class']}"
        distance = (int(hashes[g]) ^ int(hashes[i])).bit_count()
        correlation = duplicates.correlation(seen[g][0], seen[i][0])
        reason = f"near-duplicate of {first['url']}{where} (distance {distance}, correlation {correlation:.3f})"
        if drop:
            del images[entry["file"]]
            entry.update(status="near_duplicate", reason=reason, file="")
        else:
            entry["reason"] = reason


def class_counts(report: list[dict[str, Any]], folders: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per class (`folders` maps label -> folder): URLs found, downloaded (fetched ok), excluded (by the exclusion
    file), relabelled away and relabelled in, and kept (in the class's folder of the dataset)."""
    label_of = {folder: label for label, folder in folders.items()}
    found = Counter(r["class"] for r in report)
    fetched_bad = {
        "http_",
        "timeout",
        "too_large",
        "too_many_redirects",
        "blocked_address",
        "bad_scheme",
        "bad_url",
        "connection_error",
    }
    downloaded = Counter(r["class"] for r in report if not any(r["status"].startswith(s) for s in fetched_bad))
    kept = Counter(label_of[r["file"].split("/")[0]] for r in report if r["status"] in IN_DATASET)
    excluded = Counter(r["class"] for r in report if r["status"] == "excluded")
    moved = [r for r in report if r["status"] == "relabelled"]
    moved_out = Counter(r["class"] for r in moved)
    moved_in = Counter(label_of[r["file"].split("/")[0]] for r in moved)
    return {
        c: {
            "found": found[c],
            "downloaded": downloaded[c],
            "excluded": excluded[c],
            "relabelled_out": moved_out[c],
            "relabelled_in": moved_in[c],
            "kept": kept[c],
        }
        for c in folders
    }


def scrape(
    rows: list[dict[str, str]],
    classes: list[str],
    cfg: dict[str, Any],
    cache: Path,
    out_dir: Path,
    report_path: Path,
    exclusions: Sequence[Exclusion] = (),
) -> dict[str, Any]:
    """The stage: download, clean, apply `exclusions` (imgclf.sources.exclude.read_exclusions), write images and
    the report; fail if a class has too few images. `classes` are the dataset's labels
    (imgclf.datasets.parse_classes), as the manifest's `class` column holds them. The download cache is only
    added to: a failure, an exclusion included, deletes nothing from it."""
    missing = sorted(set(classes) - {r["class"] for r in rows})
    if missing:
        raise PipelineError(
            f"the manifest has no URLs for class(es) {', '.join(missing)}: rerun the search "
            "(`dvc repro -f search@<dataset>`) or add URLs to the list."
        )
    # A stale manifest could otherwise add a class folder (and so a class) the params do not have.
    extra = sorted({r["class"] for r in rows} - set(classes))
    if extra:
        raise PipelineError(
            f"the manifest has URLs for class(es) {', '.join(extra)}, which are not in this "
            f"dataset's classes ({', '.join(classes)}): rerun the search "
            "(`dvc repro -f search@<dataset>`)."
        )
    fetched = download_all(rows, cache, cfg)
    folders = {label: class_folder(label) for label in classes}
    report, images, stems = clean_all(rows, fetched, cache, cfg, folders)
    apply_exclusions(list(exclusions), report, images, stems, folders, report_path)
    write_folder({**images, **write_class_map(folders)}, out_dir)
    atomic_write_text(report_path, csv_text(report, REPORT_FIELDS))
    counts = class_counts(report, folders)
    statuses = Counter(r["status"] for r in report)
    kept = sum(statuses[s] for s in IN_DATASET)
    log.info("kept %d of %d URLs; statuses: %s", kept, len(report), dict(sorted(statuses.items())))
    short = {c: n["kept"] for c, n in counts.items() if n["kept"] < cfg["min_images"]}
    if short:
        raise PipelineError(
            f"too few images for {', '.join(f'{c} ({n})' for c, n in short.items())}: scrape.min_images is "
            f"{cfg['min_images']}. See {report_path} for why URLs were dropped; raise search.max_results or "
            "lower scrape.min_images. Downloads are kept, a rerun fetches only new URLs."
        )
    return {
        "classes": counts,
        "total": {
            "found": len(report),
            "excluded": statuses["excluded"],
            "relabelled": statuses["relabelled"],
            "kept": kept,
        },
        "status": dict(sorted(statuses.items())),
    }
