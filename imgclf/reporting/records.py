"""The sweep's metrics records, sorted and grouped: ok / failed / skipped, and timm families for colour groups."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

OTHER = "other"  # the colour group of every family not shown on its own
# A digit run (and any letters after it) ending the first name token is a size or variant (resnet50d, deit3,
# eva02), unless it follows a `v` or a digit: then it is a version that names its own family (resnetv2, res2net).
_SIZE_SUFFIX = re.compile(r"(?<![v\d])\d+[a-z]*$")


def number(value: Any) -> float | None:
    """A finite float, or None for null/NaN/inf (json.load turns NaN into a float)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def entry_name(record: dict) -> str:
    """The sweep entry a record comes from, as its output files are named: `<arch>-<seed>` (DVC's matrix entry
    `sweep@<arch>-<seed>`); a record without a seed is named by its arch alone."""
    seed = record.get("seed")
    return str(record.get("arch")) if seed is None else f"{record.get('arch')}-{seed}"


def is_ok(record: dict) -> bool:
    """Whether a record counts as a result: status ok and a finite accuracy."""
    return record.get("status") == "ok" and number(record.get("accuracy")) is not None


def family(arch: str) -> str:
    """The timm family of an architecture name: its prefix without the size (resnet18 -> resnet,
    convnext_tiny -> convnext, vit_small_patch16_224 -> vit, efficientnet_b0 -> efficientnet, resnetv2_50 ->
    resnetv2)."""
    token = arch.split("_")[0]
    return _SIZE_SUFFIX.sub("", token) or token


def split_records(records: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(ok sorted by accuracy descending, failed, skipped), the last two in input order. An ok record without
    an accuracy counts as failed; any status other than ok or skipped (e.g. a time limit) is failed."""
    ok, failed, skipped = [], [], []
    for r in records:
        if is_ok(r):
            ok.append(r)
        elif r.get("status") == "skipped":
            skipped.append(r)
        else:
            failed.append(r)
    # Stable sort: equal accuracies keep the params.yaml order, so the best is deterministic.
    return sorted(ok, key=lambda r: -r["accuracy"]), failed, skipped


def family_groups(ok: list[dict], max_groups: int) -> dict[str, str]:
    """arch -> colour group: its family for the `max_groups` largest families of 2+ ok entries (larger first,
    then the better best accuracy), OTHER for the rest. `ok` is sorted by accuracy, best first."""
    counts = Counter(family(r["arch"]) for r in ok)
    rank = {fam: i for i, fam in enumerate(dict.fromkeys(family(r["arch"]) for r in ok))}  # by best accuracy
    shown = sorted((f for f, n in counts.items() if n >= 2), key=lambda f: (-counts[f], rank[f]))[:max_groups]
    return {r["arch"]: family(r["arch"]) if family(r["arch"]) in shown else OTHER for r in ok}


def group_order(groups: dict[str, str]) -> list[str]:
    """The shown families, largest first (ties: better best accuracy first), OTHER last when present."""
    counts = Counter(groups.values())
    first_seen = {g: i for i, g in enumerate(dict.fromkeys(groups.values()))}
    named = sorted((g for g in counts if g != OTHER), key=lambda g: (-counts[g], first_seen[g]))
    return named + ([OTHER] if OTHER in counts else [])
