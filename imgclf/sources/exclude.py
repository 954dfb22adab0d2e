"""Exclusions as data: `exclude/<dataset>.txt` names the downloaded images that are wrong, and what to do with them.

One image a line, named by its file stem (the first 16 hex of the downloaded bytes' sha256: the `file` column of
data/<dataset>/report.csv without the class folder and `.jpg`) or by its URL, then an optional reason:

    3fa6c1d2e4b5a697  # a hotel named after the monument       drop the image
    https://example.org/photo.jpg                              drop it (no reason given)
    3fa6c1d2e4b5a697 -> taj_mahal  # it is the Taj Mahal      move it to another class

A `#` at the start of the line or after a blank starts the reason (a URL's own `#fragment` does not). Blank lines
and lines holding only a comment are skipped, so a file of comments excludes nothing. The scrape stage applies
the lines when it builds the class folders from its download cache: nothing downloaded is deleted, and removing
a line brings the image back without a download. A line that names nothing, an unknown class or a line that
cannot be read fails the stage with a message naming `<file>:<line>`.
"""

from __future__ import annotations

import difflib
import logging
import re
import unicodedata
from pathlib import Path
from typing import Any, NamedTuple

from imgclf.common import PipelineError

log = logging.getLogger(__name__)

_COMMENT = re.compile(r"(?:^|\s)#")
# a stem as the report writes it; `<class folder>/<stem>.jpg` (the report's whole `file` column) is accepted too
_STEM = re.compile(r"(?:[^/\s]+/)?(?P<stem>[0-9a-fA-F]{16})(?:\.jpg)?")
_URL = re.compile(r"https?://\S+", re.IGNORECASE)
# `<target> -> <class>`; the arrow needs a blank before it unless the target is a stem (URLs may hold `->`)
_RELABEL = (re.compile(r"(?P<target>\S+)\s+->(?P<label>.*)"), re.compile(r"(?P<target>[0-9a-fA-F]{16})->(?P<label>.*)"))
# What a new exclusion file holds (the committed ones, and the demo's): comments only, so it excludes nothing.
HEADER = """\
# Images to drop from this dataset, or to move to another class, when the scrape stage builds it from the
# downloads (which it never deletes; README: "Cleaning a dataset"). One image a line, by its file stem (the
# `file` column of data/<dataset>/report.csv) or its URL, then an optional `# reason`:
#   3fa6c1d2e4b5a697  # a hotel named after the monument      drop it
#   3fa6c1d2e4b5a697 -> taj_mahal  # it is the Taj Mahal     move it to the class taj_mahal
# review/<dataset>/index.html shows the images with the highest loss and copies such a line for each.
"""
FORMAT = (
    "expected `<file stem or URL>`, optionally followed by `-> <class>`, then an optional `# reason` (a file "
    "stem is 16 hex digits, as in the `file` column of {report})"
)


class Exclusion(NamedTuple):
    """One line of an exclusion file: where it is (`exclude/x.txt:3`), the image it names (a lower-case stem or
    a URL), the class to move it to (None: drop it) and the reason given ('' when none)."""

    where: str
    target: str
    label: str | None
    reason: str

    @property
    def is_url(self) -> bool:
        return not _STEM.fullmatch(self.target)


def read_exclusions(path: str | Path, classes: list[str]) -> list[Exclusion]:
    """The exclusions of the file at `path` for a dataset of `classes` (labels, NFC). Raises PipelineError on the
    first line that cannot be read, relabels to a class the dataset does not have, or names an image an earlier
    line already names (saying how many more bad lines follow); the message names `<path>:<line>`."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(
            f"{path} not found: every dataset needs its exclusion file, even an empty one (create it, or "
            "`git checkout` it)."
        )
    out, errors, seen = [], [], {}
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        where = f"{path.as_posix()}:{n}"
        try:
            ex = _parse_line(line, where, classes, f"data/{path.stem}/report.csv")
        except PipelineError as e:
            errors.append(str(e))
            continue
        if ex is None:
            continue
        if ex.target in seen:
            errors.append(f"{where}: {ex.target} is also on line {seen[ex.target]}: keep one of the two lines.")
            continue
        seen[ex.target] = n
        out.append(ex)
    if errors:
        more = f" ({len(errors) - 1} more bad line(s) after it)" if len(errors) > 1 else ""
        raise PipelineError(errors[0] + more)
    return out


def _parse_line(line: str, where: str, classes: list[str], report: str) -> Exclusion | None:
    """One line as an Exclusion; None for a blank or comment-only line."""
    comment = _COMMENT.search(line)
    body = (line[: comment.start()] if comment else line).strip()
    reason = line[comment.end() :].strip() if comment else ""
    if not body:
        return None
    match = next((m for m in (r.fullmatch(body) for r in _RELABEL) if m), None)
    target, label = (match["target"], match["label"].strip()) if match else (body, None)
    stem = _STEM.fullmatch(target)
    if stem:
        target = stem["stem"].lower()
    elif not _URL.fullmatch(target):
        raise PipelineError(f"{where}: cannot read {line.strip()!r}: {FORMAT.format(report=report)}.")
    if label is not None:
        label = _known_class(unicodedata.normalize("NFC", label), where, classes)
    return Exclusion(where, target, label, reason)


def _known_class(label: str, where: str, classes: list[str]) -> str:
    if label in classes:
        return label
    if not label:
        raise PipelineError(f"{where}: no class after `->`: name one of {', '.join(classes)}.")
    close = difflib.get_close_matches(label, classes, n=1, cutoff=0.6)
    close += [c for c in classes if c.casefold() == label.casefold() and c not in close]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise PipelineError(
        f"{where}: unknown class {label!r} after `->`: this dataset's classes are {', '.join(classes)}.{hint}"
    )


def apply_exclusions(
    exclusions: list[Exclusion],
    report: list[dict[str, Any]],
    images: dict[str, bytes],
    stems: dict[str, str],
    folders: dict[str, str],
    report_path: str | Path = "data/<dataset>/report.csv",
) -> None:
    """Drop or move, in place, the images `exclusions` name: `report` holds the scrape report's rows (the row
    whose image is in the dataset has its `file`), `images` maps `<class folder>/<stem>.jpg` -> JPEG bytes,
    `stems` maps each URL downloaded as an image to its file stem, `folders` maps label -> class folder.
    An excluded image's row gets status `excluded`, a moved one `relabelled`; the reason names the line.
    Raises PipelineError, before changing anything here, on a line that names no URL of the manifest and no
    downloaded image, or the same image as another line, or relabels an image to the class it is in; the messages
    point at `report_path`, where the URLs and stems are listed."""
    report_path = Path(report_path).as_posix()
    urls, known = {r["url"] for r in report}, set(stems.values())
    in_dataset = {Path(r["file"]).stem: r for r in report if r["file"]}
    named: dict[str, Exclusion] = {}  # stem -> the line naming it
    for ex in exclusions:
        if ex.is_url and ex.target not in urls:
            raise PipelineError(
                f"{ex.where}: {ex.target} is not a URL of this dataset's manifest: check it against the `url` "
                f"column of {report_path}, or delete the line, and rerun (downloads are kept)."
            )
        stem = stems.get(ex.target) if ex.is_url else ex.target
        if ex.is_url and stem is None:
            log.warning("%s: %s was not downloaded as an image: nothing to exclude", ex.where, ex.target)
            continue
        if stem not in known:
            raise PipelineError(
                f"{ex.where}: {ex.target} is the stem of no downloaded image of this dataset: check it against "
                f"the `file` column of {report_path}, or delete the line, and rerun (downloads are kept)."
            )
        if stem in named:
            raise PipelineError(f"{ex.where}: names the same image as {named[stem].where}: keep one of the two lines.")
        row = in_dataset.get(stem)
        if row is not None and ex.label == row["class"]:
            raise PipelineError(
                f"{ex.where}: {stem} is in class {ex.label} already: name another class after `->`, or delete the line."
            )
        named[stem] = ex
    for stem, ex in named.items():
        row = in_dataset.get(stem)
        if row is None:
            log.warning("%s: %s is not in the dataset anyway (dropped by an earlier check)", ex.where, ex.target)
            continue
        because = f"{ex.where}: {ex.reason}" if ex.reason else ex.where
        if ex.label is None:
            del images[row["file"]]
            row.update(status="excluded", reason=because, file="")
        else:
            moved = f"{folders[ex.label]}/{stem}.jpg"
            images[moved] = images.pop(row["file"])
            row.update(status="relabelled", reason=f"to {ex.label}, {because}", file=moved)
