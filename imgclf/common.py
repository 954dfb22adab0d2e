"""Small helpers every stage shares: expected errors, atomic writes, CSV, checksums, the stable split."""

from __future__ import annotations

import csv
import gc
import hashlib
import importlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

CODE_FOLDERS = ("imgclf", "stages")  # where the code every stage runs lives (dvc.yaml lists it as deps)
# The libraries whose versions can change what a stage computes: every record and checkpoint key names them, and
# a sweep worker whose versions differ from the driver's is refused.
COMPUTING_LIBRARIES = ("torch", "torchvision", "timm", "fastai", "numpy", "pillow", "safetensors")


class PipelineError(Exception):
    """An expected failure (bad params, bad data, no network): shown as one message, no traceback."""


def run_main(main: Callable[[], Any], libraries: tuple[str, ...] = ()) -> None:
    """Run a stage's main() as a process: configure logging once, import `libraries` (the large ones the stage
    uses) first (`import_libraries`), turn PipelineError into a message and exit 1 (`exit_code`)."""
    configure_logging()
    try:
        import_libraries(libraries)
        code = exit_code(main)
    finally:
        gc.freeze()  # what is left at exit is freed with the process: no collection walks it again
    sys.exit(code)


def configure_logging() -> None:
    """The stages' log format, at LOGLEVEL (default INFO), on stderr."""
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")


def import_libraries(libraries: tuple[str, ...]) -> None:
    """Import `libraries` with Python's cyclic garbage collector paused, then freeze what they created.

    torch, timm and fastai create many objects that live as long as the process: collections during the imports
    would walk them again and again, and the collections at exit once more. Frozen objects are skipped by later
    collections (docs/performance.md has the start-up time it saves). The sweep's warm workers (imgclf/pool.py)
    import the same way, once."""
    # fastai's layers.py applies torch.jit.script at import time, which torch deprecates: a warning in every
    # stage's log that no user can act on. Only that message, only that category.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    gc.disable()
    try:
        for name in libraries:
            importlib.import_module(name)
    finally:
        gc.freeze()
        gc.enable()


def exit_code(main: Callable[..., Any], *args: Any) -> int:
    """Run `main(*args)` and return the exit status a stage process would have: 0, or its SystemExit code; 1 with
    `error: <message>` on stderr for a PipelineError; 130 for Ctrl-C. Other exceptions propagate."""
    try:
        main(*args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept; rerun `dvc repro` to continue.", file=sys.stderr)
        return 130
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)  # what the interpreter prints for sys.exit("message")
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text version of `atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_folder(files: dict[str, bytes], out_dir: Path) -> None:
    """Write `files` (relative path -> bytes) as the whole of `out_dir`, through a temp folder renamed at the end:
    all or nothing (no `files`: an empty folder)."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, data in sorted(files.items()):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented, key-sorted UTF-8 JSON, atomically; labels stay readable as written (東京タワー,
    not \\u6771...)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def remove_partial_files(folder: str | Path, name: str = "*") -> int:
    """Delete the `.<name>.<random>.part` temp files that a killed run (SIGKILL, power loss) left in `folder`,
    where atomic writes and downloads put them; return how many. Ctrl-C cleans up by itself, a SIGKILL cannot.
    Call it only from the stage that owns `folder` (DVC's lock keeps a second run away)."""
    stale = [p for p in Path(folder).glob(f".{name}.*.part") if p.is_file()] if Path(folder).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info("removed %d partial file(s) left in %s by an interrupted run", len(stale), folder)
    return len(stale)


def plural(n: int, word: str, words: str | None = None) -> str:
    """`n` and the noun, singular for 1: "1 entry", "2 entries" (`words` where the plural is not `word` + "s")."""
    return f"{n} {word if n == 1 else words or word + 's'}"


def csv_text(rows: list[dict[str, Any]], fields: list[str]) -> str:
    """Rows as CSV text with a header, `\n` line ends (the same bytes on every platform)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def md5_first_mib(path: str | Path) -> str:
    """Hex md5 of a file's first MiB: fastai's (weak) download check, as in its download_checks.py."""
    with open(path, "rb") as f:
        return hashlib.md5(f.read(2**20)).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions(names: tuple[str, ...] = COMPUTING_LIBRARIES) -> dict[str, str | None]:
    """The installed version of each distribution in `names` (None when it is not installed), read from the
    package metadata: nothing is imported."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {name: installed(name) for name in names}


def is_valid_item(key: str, seed: int, valid_pct: float) -> bool:
    """Stable train/valid assignment: depends only on the item's key (content hash or file name) and
    the seed, so adding items never moves existing ones between train and valid."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < valid_pct
