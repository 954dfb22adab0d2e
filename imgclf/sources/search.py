"""Image search for each class query (ddgs: DuckDuckGo or Bing), or a URL list, as manifest rows.

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

# One page of one query's results from one ddgs backend: search(query, backend, page) -> result dicts, [] when
# the engine has nothing (more) for it.
SearchFn = Callable[[str, str, int], list[dict[str, Any]]]

BACKENDS = ("duckduckgo", "bing")  # ddgs 9.16's image engines (ddgs/engines/*_images.py)
# bing_images.py's build_payload drops these: Bing gets no region, safesearch or licence filter.
IGNORED_BY = {"bing": ("region", "safesearch", "license")}
NO_RESULTS = "No results found."  # ddgs's message for an empty answer (it raises instead of returning [])


def ddgs_search(cfg: dict[str, Any]) -> SearchFn:
    """A search function over the `ddgs` package's image search with the filters in `cfg`."""

    def search(query: str, backend: str, page: int) -> list[dict[str, Any]]:
        # imported here: the package is slow to import and needs no loading offline
        from ddgs import DDGS
        from ddgs.exceptions import DDGSException

        try:
            # max_results=None: the whole page (its size depends on the engine); pages are counted here
            return DDGS().images(
                query,
                region=cfg["region"],
                safesearch=cfg["safesearch"],
                license_image=cfg["license"],
                backend=backend,
                page=page,
                max_results=None,
            )
        except DDGSException as e:
            if str(e) == NO_RESULTS:
                return []
            raise

    return search


def backend_order(backend: str) -> list[str]:
    """The ddgs backends to ask for a query's first page, in order. `auto` does what ddgs's own "auto" does
    (its image engines in random order, the first to answer wins), but choosing here lets the manifest say
    which engine answered and keeps the query's later pages on that engine."""
    return random.sample(BACKENDS, len(BACKENDS)) if backend == "auto" else [backend]


def ignored_filters(cfg: dict[str, Any], backend: str) -> list[str]:
    """The filters set in `cfg` that `backend` ignores, as `key (value)` strings. safesearch has no "unset"
    value, so it always counts as set; region wt-wt (no region) and license null do not."""
    unset = {"region": "wt-wt", "license": None}
    return [
        f"search.{key} ({cfg[key]})"
        for key in IGNORED_BY.get(backend, ())
        if key not in unset or cfg[key] != unset[key]
    ]


def warn_ignored_filters(cfg: dict[str, Any]) -> None:
    """Log a warning for each backend `cfg` may use that ignores a filter `cfg` sets."""
    for backend in BACKENDS if cfg["backend"] == "auto" else (cfg["backend"],):
        ignored = ignored_filters(cfg, backend)
        if ignored:
            via = (
                f"search.backend auto answers some queries from {backend}, which"
                if cfg["backend"] == "auto"
                else f"search.backend {backend}"
            )
            log.warning(
                "%s ignores %s: ddgs does not send them to %s. Use search.backend duckduckgo to apply them.",
                via,
                ", ".join(ignored),
                backend,
            )


def search_with_backoff(
    search: SearchFn,
    query: str,
    backends: list[str],
    page: int,
    retries: int,
    backoff_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[str, list[dict[str, Any]]]:
    """Page `page` of `query`'s results from the first of `backends` that answers, and that backend. On
    errors (and an empty first page) wait, doubling with jitter, and ask again. Past the first page an empty
    answer means the engine has no more, and is returned.

    ddgs >= 9 reports a block or rate limit as "No results found", so repeated empty answers for a query
    that should have results almost always mean rate limiting: the final message says so.
    """
    last = "no results"
    for attempt in range(retries + 1):
        for backend in backends:
            try:
                results = [r for r in search(query, backend, page) if r.get("image")]
            except Exception as e:  # noqa: BLE001 - any failure of the web service is retried, then reported
                last = f"{type(e).__name__}: {e}"
                continue
            if results or page > 1:
                return backend, results
            last = "no results"
        if attempt < retries:
            wait = backoff_s * 2**attempt * (1 + random.random() / 2)
            log.warning(
                "search %r (page %d): %s; retrying in %.1f s (%d/%d)", query, page, last, wait, attempt + 1, retries
            )
            sleep(wait)
    what = f"image search for {query!r}" + (f" (page {page})" if page > 1 else "")
    if _looks_like_network_error(last):
        raise PipelineError(
            f"{what} could not reach the search service after {retries + 1} attempts "
            f"(last: {last}). Check the network and rerun `dvc repro`, or use search.engine: file with a URL list."
        )
    raise PipelineError(
        f"{what} found nothing after {retries + 1} attempts (last: {last}). DuckDuckGo is "
        "probably rate-limiting this machine (ddgs reports a block as 'No results found'): wait a few minutes "
        "and rerun `dvc repro`, raise search.backoff_s, or use search.engine: file with a URL list."
    )


def search_query(
    search: SearchFn, query: str, cfg: dict[str, Any], sleep: Callable[[float], None] = time.sleep
) -> tuple[str, list[dict[str, Any]]]:
    """Up to `max_results` distinct results (by image URL) for `query`, page after page until there are
    enough or the engine has no more, and the backend that gave them."""
    backends, results, seen, page = backend_order(cfg["backend"]), [], set(), 0
    while len(results) < cfg["max_results"]:
        page += 1
        backend, answer = search_with_backoff(search, query, backends, page, cfg["retries"], cfg["backoff_s"], sleep)
        backends = [backend]  # later pages from the engine that answered the first: its offsets, its filters
        new = _unseen(answer, seen)
        if not new:  # an empty page, or one that only repeats earlier ones: the engine has no more
            log.warning(
                "search %r: %s had no more results after page %d: %d of search.max_results %d",
                query,
                backend,
                page - 1,
                len(results),
                cfg["max_results"],
            )
            break
        results += new
    return backend, results[: cfg["max_results"]]


def _unseen(results: list[dict[str, Any]], seen: set[str]) -> list[dict[str, Any]]:
    """The results whose image URL is not in `seen` (first of each), adding them to `seen`."""
    new = []
    for r in results:
        if r["image"] not in seen:
            seen.add(r["image"])
            new.append(r)
    return new


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
            raise PipelineError(
                f"{where}: class {cls!r} is not in this dataset's classes "
                f"({', '.join(classes)}): add it to params.yaml or fix the list."
            )
        if not url:
            raise PipelineError(f"{where}: class {cls!r} has no URL: write class,url on every line.")
        ranks[cls] += 1
        out.append(
            {
                "class": cls,
                "query": classes[cls],
                "rank": ranks[cls],
                "url": url,
                "source": row.get("source") or "",
                "width": row.get("width") or "",
                "height": row.get("height") or "",
                "engine": "file",
                "backend": row.get("backend") or "",
                "time": "",
            }
        )
    empty = [c for c, n in ranks.items() if n == 0]
    if empty:
        raise PipelineError(f"URL list {path} has no URLs for class(es) {', '.join(empty)}: add rows class,url.")
    return out


def search_dataset(
    classes: dict[str, str],
    search: SearchFn,
    cfg: dict[str, Any],
    found: dict[str, list[dict[str, Any]]] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """Manifest rows for every class. `found` (class -> rows) holds earlier partial results: those classes
    are not searched again, and classes found now are added to it so a failure keeps them."""
    found = {} if found is None else found
    warn_ignored_filters(cfg)
    for cls, query in classes.items():
        if cls in found:
            continue
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        backend, results = search_query(search, query, cfg, sleep)
        found[cls] = [
            {
                "class": cls,
                "query": query,
                "rank": rank,
                "url": r["image"],
                "source": r.get("url", ""),
                "width": r.get("width", ""),
                "height": r.get("height", ""),
                "engine": "ddgs",
                "backend": backend,
                "time": now,
            }
            for rank, r in enumerate(results, start=1)
        ]
        log.info("%s: %d results for %r from %s", cls, len(found[cls]), query, backend)
    return [row for cls in classes for row in found[cls]]
