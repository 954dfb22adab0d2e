"""Pretrained weights in the Hugging Face hub cache: where an architecture's weights live there, how large they
are, and removing what one sweep entry downloaded (the user's own cached weights stay)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"  # what timm asks the hub for first (pytorch_model.bin only when it is missing)


def hub_repo(arch: str) -> str | None:
    """The hub repository timm loads `arch`'s pretrained weights from (`timm/resnet18.a1_in1k`), or None when
    its weights come from elsewhere (a plain URL)."""
    import timm

    cfg = timm.get_pretrained_cfg(arch)
    if not cfg or not cfg.hf_hub_id:
        return None
    return cfg.hf_hub_id.partition("@")[0]  # "repo@revision": the revision is not part of the cache folder


def repo_cache_paths(repo_id: str) -> list[Path]:
    """The folders huggingface_hub's cache (HF_HUB_CACHE) uses for one model repository: its
    `models--<org>--<name>` folder (blobs, snapshots, refs) and its lock files under `.locks`."""
    from huggingface_hub import constants

    folder = "models--" + repo_id.replace("/", "--")
    cache = Path(constants.HF_HUB_CACHE)
    return [cache / folder, cache / ".locks" / folder]


def _entries(roots: list[Path]) -> set[Path]:
    """Every file, link and folder under `roots` (links are not followed: snapshots link into blobs)."""
    found: set[Path] = set()
    for root in roots:
        if os.path.lexists(root):
            found.add(root)
            for dirpath, dirnames, filenames in os.walk(root):
                found.update(Path(dirpath) / n for n in dirnames + filenames)
    return found


@contextlib.contextmanager
def downloads_removed(arch: str, keep: bool) -> Iterator[None]:
    """Within this block the entry may download `arch`'s hub weights; afterwards (even after a failure) what
    it added to the cache is deleted, unless `keep`. Only the architecture's own repository folders are looked
    at, so parallel entries downloading other architectures into the same cache are left alone, and whatever
    was there before the block (weights the user cached, another revision) stays."""
    repo = None if keep else hub_repo(arch)
    if repo is None:
        yield
        return
    roots = repo_cache_paths(repo)
    before = _entries(roots)
    try:
        yield
    finally:
        added = _entries(roots) - before
        # deepest first, so a new folder is empty by the time it is removed
        for path in sorted(added, key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if added:
            log.info("%s: deleted the hub weights this entry downloaded (runtime.keep_weights: false)", arch)


def weights_size(arch: str, params_m: float, online: bool) -> tuple[int, bool]:
    """(bytes, estimated) of `arch`'s pretrained weights: the hub's own file size when `online` and the hub
    answers, else an estimate of 4 bytes (float32) per parameter."""
    repo = hub_repo(arch)
    if online and repo:
        try:
            from huggingface_hub import HfApi

            for info in HfApi().get_paths_info(repo, [WEIGHTS_FILE, "pytorch_model.bin"]):
                if getattr(info, "size", None):
                    return int(info.size), False
        except Exception as e:  # noqa: BLE001 - offline, rate-limited, gated: fall back to the estimate
            log.debug("no hub size for %s (%s): estimating", arch, e)
    return int(params_m * 1e6 * 4), True
