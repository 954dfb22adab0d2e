"""Image search for each class query (ddgs), or a URL list, as manifest rows.

Search and download are separate stages: the manifest (class, query, rank, url, ...) is the dataset's
recipe. It changes only when the queries or search params change (or on `dvc repro -f search@<dataset>`),
and a committed manifest rebuilds the same dataset on another machine. With `search.engine: file` the
manifest comes from the CSV URL list `urls/<dataset>.csv` instead (offline runs, the demo, frozen datasets).
"""
from __future__ import annotations

import csv
import io
import logging
import random
import time
import unicodedata
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from imgclf.common import PipelineError

log = logging.getLogger(__name__)

SearchFn = Callable[[str], list[dict[str, Any]]]


def ddgs_search(cfg: dict[str, Any]) -> SearchFn:
    """A search function over DuckDuckGo images (the `ddgs` package) with the params in `cfg`."""

    def search(query: str) -> list[dict[str, Any]]:
        from ddgs import DDGS  # imported here: the package is slow to import and needs no loading offline

        return DDGS().images(query, region=cfg["region"], safesearch=cfg["safesearch"],
                             license_image=cfg["license"], max_results=cfg["max_results"])

    return search


def search_with_backoff(search: SearchFn, query: str, retries: int, backoff_s: float,
                        sleep: Callable[[float], None] = time.sleep) -> list[dict[str, Any]]:
    """Call `search(query)`; on an error or an empty answer wait (doubling, with jitter) and try again.

    ddgs >= 9 reports a block or rate limit as "No results found", so repeated empty answers for a query
    that should have results almost always mean rate limiting: the final message says so.
    """
    last = "no results"
    for attempt in range(retries + 1):
        try:
            results = [r for r in search(query) if r.get("image")]
            if results:
                return results
            last = "no results"
        except Exception as e:  # noqa: BLE001 - any failure of the web service is retried, then reported
            last = f"{type(e).__name__}: {e}"
        if attempt < retries:
            wait = backoff_s * 2**attempt * (1 + random.random() / 2)
            log.warning("search %r: %s; retrying in %.1f s (%d/%d)", query, last, wait, attempt + 1, retries)
            sleep(wait)
    if _looks_like_network_error(last):
        raise PipelineError(
            f"image search for {query!r} could not reach the search service after {retries + 1} attempts "
            f"(last: {last}). Check the network and rerun `dvc repro`, or use search.engine: file with a URL list."
        )
    raise PipelineError(
        f"image search for {query!r} found nothing after {retries + 1} attempts (last: {last}). DuckDuckGo is "
        "probably rate-limiting this machine (ddgs reports a block as 'No results found'): wait a few minutes "
        "and rerun `dvc repro`, raise search.backoff_s, or use search.engine: file with a URL list."
    )


def _looks_like_network_error(message: str) -> bool:
    """True for DNS and connection failures (as opposed to an answer with no results, which ddgs also
    gives when it is blocked)."""
    text = message.lower()
    return any(w in text for w in ("dns", "resolve", "connect", "network is unreachable", "name or service"))


def read_url_list(path: Path, classes: dict[str, str]) -> list[dict[str, Any]]:
    """Manifest rows from a CSV URL list with at least the columns `class` (a label of `classes`, label -> query,
    in any Unicode normal form) and `url`."""
    if not path.is_file():
        raise PipelineError(f"URL list {path} not found: search.engine is file, so write it (columns class,url).")
    # utf-8-sig: a list saved by a spreadsheet starts with a byte-order mark that would hide the `class` column.
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig")))
    if not {"class", "url"} <= set(reader.fieldnames or []):
        raise PipelineError(f"URL list {path} needs a header with the columns class,url.")
    out, ranks = [], dict.fromkeys(classes, 0)
    for row in reader:
        # A short row gives None for its missing columns; reader.line_num is right even after blank lines.
        where = f"{path} line {reader.line_num}"
        cls, url = unicodedata.normalize("NFC", (row["class"] or "").strip()), (row["url"] or "").strip()
        if cls not in classes:
            raise PipelineError(f"{where}: class {cls!r} is not in this dataset's classes "
                                f"({', '.join(classes)}): add it to params.yaml or fix the list.")
        if not url:
            raise PipelineError(f"{where}: class {cls!r} has no URL: write class,url on every line.")
        ranks[cls] += 1
        out.append({"class": cls, "query": classes[cls], "rank": ranks[cls], "url": url,
                    "source": row.get("source") or "", "width": row.get("width") or "",
                    "height": row.get("height") or "", "engine": "file", "time": ""})
    empty = [c for c, n in ranks.items() if n == 0]
    if empty:
        raise PipelineError(f"URL list {path} has no URLs for class(es) {', '.join(empty)}: add rows class,url.")
    return out


def search_dataset(classes: dict[str, str], search: SearchFn, cfg: dict[str, Any],
                   found: dict[str, list[dict[str, Any]]] | None = None,
                   sleep: Callable[[float], None] = time.sleep) -> list[dict[str, Any]]:
    """Manifest rows for every class. `found` (class -> rows) holds earlier partial results: those classes
    are not searched again, and classes found now are added to it so a failure keeps them."""
    found = {} if found is None else found
    for cls, query in classes.items():
        if cls in found:
            continue
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        results = search_with_backoff(search, query, cfg["retries"], cfg["backoff_s"], sleep)
        found[cls] = [{"class": cls, "query": query, "rank": rank, "url": r["image"], "source": r.get("url", ""),
                       "width": r.get("width", ""), "height": r.get("height", ""), "engine": "ddgs", "time": now}
                      for rank, r in enumerate(results[: cfg["max_results"]], start=1)]
        log.info("%s: %d results for %r", cls, len(found[cls]), query)
    return [row for cls in classes for row in found[cls]]
