"""The URL manifest: one row per search result (class, query, rank, url, ...), the recipe of a web dataset."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from imgclf.common import csv_text

# engine: ddgs or file (search.engine); backend: the ddgs engine that found the URL (duckduckgo, bing), or for a
# URL list its own `backend` column if it has one (a committed manifest reused as a list keeps it).
MANIFEST_FIELDS = ["class", "query", "rank", "url", "source", "width", "height", "engine", "backend", "time"]


def manifest_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV text with MANIFEST_FIELDS."""
    return csv_text(rows, MANIFEST_FIELDS)


def read_manifest(path: Path) -> list[dict[str, str]]:
    """Rows of a manifest written by this stage."""
    return list(csv.DictReader(io.StringIO(Path(path).read_text(encoding="utf-8"))))
