"""The Oxford-IIIT Pets source: fetch the Oxford-IIIT Pets tarball, verify it, and write its images resized once.

The tarball stays in downloads/ between runs (DVC never deletes it), so a rerun after a params change
re-verifies it instead of downloading 800 MB again. Members are checked with tarfile's `data` filter before
anything is read, and images are decoded and re-encoded, never extracted as given.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from imgclf.common import PipelineError, md5_first_mib, remove_partial_files, sha256_file
from imgclf.datasets import pet_breed, pet_is_cat
from imgclf.sources.fetch import fetch_to_file
from imgclf.sources.images import ImageRejected, clean_image, encode_jpeg

log = logging.getLogger(__name__)

# The bytes one image member may hold: Pets' largest JPEG is a few MB; a member past this is skipped unread, so
# that a hostile or damaged tarball cannot make the stage hold gigabytes per member (256 members are in flight).
MAX_MEMBER_BYTES = 30_000_000


def verify_tarball(path: Path, size: int, md5_first_mb: str | None, sha256: str | None) -> str:
    """Check size, fastai's md5-of-the-first-MiB and (when given) the full sha256; return the sha256."""
    actual = path.stat().st_size
    if actual != size:
        raise PipelineError(
            f"{path} is {actual} bytes, expected {size} (download_pets.size): the download is truncated or is "
            "not the Pets tarball. Delete it and rerun, or fix download_pets.size."
        )
    if md5_first_mb:
        md5 = md5_first_mib(path)
        if md5 != md5_first_mb.lower():
            raise PipelineError(
                f"{path}: md5 of the first MiB is {md5}, expected {md5_first_mb} "
                "(download_pets.md5_first_mb). Delete it and rerun."
            )
    digest = sha256_file(path)
    if sha256 and digest != sha256.lower():
        raise PipelineError(
            f"{path}: sha256 is {digest}, expected {sha256} (download_pets.sha256). "
            "Delete it and rerun, or fix the checksum in params.yaml."
        )
    if not sha256:
        log.info("sha256 of %s is %s: pin it as download_pets.sha256 in params.yaml", path.name, digest)
    return digest


def download_tarball(url: str, dest: Path, cfg: dict[str, Any]) -> str:
    """Reuse `dest` when it verifies, else download it (atomically) and verify; return its sha256."""
    checks = (cfg["size"], cfg["md5_first_mb"], cfg["sha256"])
    if dest.is_file():
        try:
            return verify_tarball(dest, *checks)
        except PipelineError as e:
            log.warning("existing tarball failed verification, downloading again: %s", e)
    from tqdm import tqdm

    remove_partial_files(dest.parent, dest.name)  # up to 800 MB each: the download restarts from zero
    log.info("downloading %s", url)
    with tqdm(total=cfg["size"], unit="B", unit_scale=True, disable=None, desc=dest.name) as bar:
        result = fetch_to_file(
            url,
            dest,
            connect_timeout=30,
            deadline=6 * 3600,
            max_bytes=cfg["size"],
            max_redirects=5,
            allow_private=cfg["allow_private"],
            progress=bar.update,
        )
    if result.status != "ok":
        raise PipelineError(
            f"could not download {url}: {result.reason} ({result.status}). Check the network "
            "(or download_pets.url), then rerun `dvc repro`."
        )
    return verify_tarball(dest, *checks)


def safe_members(tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    """All members, after refusing the archive if any would escape `dest` or is a link or device."""
    members = tar.getmembers()
    for m in members:
        if m.name.startswith(("/", "\\")) or ".." in Path(m.name).parts:
            raise PipelineError(
                f"refusing the tarball: member {m.name!r} has an absolute or '..' path. "
                "The download is not the Pets tarball: delete it and rerun."
            )
        if m.issym() or m.islnk() or m.isdev():
            raise PipelineError(
                f"refusing the tarball: member {m.name!r} is a link or device file. "
                "The download is not the Pets tarball: delete it and rerun."
            )
        try:
            tarfile.data_filter(m, str(dest))
        except tarfile.FilterError as e:
            raise PipelineError(
                f"refusing the tarball: member {m.name!r} would be written outside the output "
                f"folder ({e}). Delete it and rerun."
            ) from None
    return members


def _is_pet_image(m: tarfile.TarInfo) -> bool:
    parts = Path(m.name).parts
    return m.isfile() and len(parts) >= 2 and parts[-2] == "images" and m.name.lower().endswith(".jpg")


def _convert_all(tar_path: Path, tmp: Path, image_size: int, workers: int | None) -> tuple[list[str], dict[str, str]]:
    """Write every decodable `images/*.jpg` member into `tmp`; return (sorted names written, name -> why skipped)."""
    skipped: dict[str, str] = {}

    def convert(name: str, data: bytes) -> None:
        try:
            (tmp / name).write_bytes(encode_jpeg(clean_image(data, size=image_size)))
        except ImageRejected as e:
            skipped[name] = f"{e.status}: {e.reason}"

    try:
        with tarfile.open(tar_path, "r:*") as tar, ThreadPoolExecutor(workers or os.cpu_count()) as pool:
            futures = []
            for m in safe_members(tar, tmp):
                if _is_pet_image(m) and m.size > MAX_MEMBER_BYTES:
                    skipped[Path(m.name).name] = f"too_large: {m.size} bytes, over {MAX_MEMBER_BYTES}"
                elif _is_pet_image(m):
                    data = tar.extractfile(m).read(MAX_MEMBER_BYTES)
                    futures.append(pool.submit(convert, Path(m.name).name, data))
                    if len(futures) >= 256:  # bound the bytes held in memory
                        futures.pop(0).result()
            for f in futures:
                f.result()
    except (tarfile.TarError, EOFError, zlib.error) as e:
        # With download_pets.sha256 null only the size and the first MiB are checked, so a damaged
        # tarball can get this far.
        raise PipelineError(
            f"{tar_path} is not a readable tarball ({type(e).__name__}: {e}). Delete it and "
            "rerun, and pin download_pets.sha256."
        ) from None
    names = sorted(p.name for p in tmp.iterdir())
    if not names:
        raise PipelineError(f"{tar_path} holds no images/*.jpg that decode: it is not the Pets tarball.")
    return names, skipped


def extract_images(tar_path: Path, out_dir: Path, image_size: int, workers: int | None = None) -> dict[str, Any]:
    """Decode every `images/*.jpg` member, resize its shorter side to `image_size`, write it to `out_dir`
    under its own file name; skip (and count) images that do not decode. Returns counts."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        names, skipped = _convert_all(tar_path, tmp, image_size, workers)
    except BaseException:
        # A refused or unreadable tarball must leave no half-written folder behind; `out_dir` from an
        # earlier run is replaced only after every image was written.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    for name, why in sorted(skipped.items()):
        log.warning("skipped %s (%s)", name, why)
    cats = sum(pet_is_cat(n) for n in names)
    return {
        "images": len(names),
        "cats": cats,
        "dogs": len(names) - cats,
        "breeds": len({pet_breed(n) for n in names}),
        "skipped": len(skipped),
    }


def download_pets(cfg: dict[str, Any], tarball: Path, out_dir: Path) -> dict[str, Any]:
    """The stage: tarball (downloaded or reused) -> verified -> resized images in `out_dir`."""
    digest = download_tarball(cfg["url"], tarball, cfg)
    stats = extract_images(tarball, out_dir, cfg["image_size"])
    log.info(
        "wrote %d images (%d cats, %d dogs, %d breeds) to %s",
        stats["images"],
        stats["cats"],
        stats["dogs"],
        stats["breeds"],
        out_dir,
    )
    return {**stats, "sha256": digest}
