"""The plot stage's one table: the sweep's records (one per architecture and seed) read once into a pandas
DataFrame of one row per architecture, indexed by its name. Its seeds are combined, and it carries its rank, 95%
interval and tie with the best (compare.py), its timm family and colour group, its costs and whether it is on
each cost's Pareto front. The figures, the leaderboards and the page's data are views of it.

Rows: the ok ones by accuracy, best first (equal accuracies keep the params.yaml order, so the best is
deterministic), then the failed ones, then the skipped ones, both in params.yaml order. `kind` says which.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from imgclf.metrics import RECORD_NUMBERS
from imgclf.reporting.compare import Ties, compare_with_best, read_predictions

OTHER = "other"  # the colour group of every family not shown on its own
MAX_FAMILIES = 8  # families with a colour of their own: one per colour of figures.PALETTE
# A digit run (and any letters after it) ending the first name token is a size or variant (resnet50d, deit3,
# eva02), unless it follows a `v` or a digit: then it is a version that names its own family (resnetv2, res2net).
_SIZE_SUFFIX = re.compile(r"(?<![v\d])\d+[a-z]*$")
# The costs drawn against accuracy (what deployment pays: inference throughput, higher is better, and forward
# GMACs per image, lower is better); training time and parameters stay in the leaderboard.
COSTS = [("infer_images_per_s", "inference throughput (images/s)"), ("gmacs", "forward GMACs per image")]
HIGHER_IS_BETTER = {"infer_images_per_s"}
NUMBERS = (*RECORD_NUMBERS, "batch_size", "n_valid")  # read as floats, NaN when missing or not finite
# Read from the records by the views: a column of None when no record has it.
FIELDS = ("arch", "seed", "status", "reason", "schedule", "epochs", "device", "precision", "infer_status")


def number(value: Any) -> float | None:
    """A finite float, or None for null/NaN/inf/bool/text (json.load turns NaN into a float)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def entry_name(record: dict) -> str:
    """The sweep entry a record comes from, as its output files are named: `<arch>-<seed>` (DVC's matrix entry
    `sweep@<arch>-<seed>`); a record without a seed is named by its arch alone."""
    seed = record.get("seed")
    return str(record.get("arch")) if seed is None else f"{record.get('arch')}-{seed}"


def family(arch: str) -> str:
    """The timm family of an architecture name: its prefix without the size (resnet18 -> resnet,
    convnext_tiny -> convnext, vit_small_patch16_224 -> vit, efficientnet_b0 -> efficientnet, resnetv2_50 ->
    resnetv2)."""
    token = arch.split("_")[0]
    return _SIZE_SUFFIX.sub("", token) or token


def build_table(
    records: list[dict], confusion_dir: Path | None = None, alpha: float = 0.05
) -> tuple[pd.DataFrame, Ties]:
    """The table of the sweep's records (`combine_seeds`) with each ok architecture compared with the best on its
    entries' predictions in `confusion_dir` (<entry>.csv; without it, intervals from `n_valid` alone), its
    competition rank (1, 2, 2, 4), family, colour group ('' when not ok) and, per cost, `front_<cost>` and
    `front_order_<cost>` (its place on the front from the best cost on, as the page draws the steps)."""
    table = combine_seeds(records)
    ok = table[table.kind == "ok"]
    predictions = None
    if confusion_dir is not None:
        predictions = {e: read_predictions(Path(confusion_dir) / f"{e}.csv", e) for es in ok.entries for e in es}
    compared, ties = compare_with_best(ok, predictions, alpha)
    table = table.drop(columns=compared.columns, errors="ignore").join(compared)
    table["rank"] = ok.accuracy.rank(method="min", ascending=False).astype("Int64")
    table["family"] = table.index.map(family)
    groups = dict(zip(ok.index, colour_groups(list(table.family[ok.index]), MAX_FAMILIES)))
    table["group"] = [groups.get(arch, "") for arch in table.index]
    for key, _ in COSTS:
        costs = ok[key].dropna()
        front = pareto_front(list(zip(costs.index, costs, ok.accuracy[costs.index])), key in HIGHER_IS_BETTER)
        table[f"front_{key}"] = table.index.isin(front)
        table[f"front_order_{key}"] = pd.Series(range(len(front)), index=front, dtype="Int64")
    return table, ties


def combine_seeds(records: list[dict]) -> pd.DataFrame:
    """One row per architecture from its entries' records, in the table's order. With ok seeds (status ok and a
    finite accuracy): the first ok seed's record, the means of RECORD_NUMBERS over the ok seeds (rounded to 6
    decimals; none when a seed lacks one), `n_seeds`, `seed_sd` (their accuracies' sample standard deviation,
    none with one seed), `entries` and `seed_accuracies`, and a reason naming any seed that did not finish. With
    none: the first entry's record as it is, `n_seeds` 0. `kind`: ok, failed (any status but ok and skipped, an
    ok record without an accuracy too) or skipped."""
    entries = pd.DataFrame(records, dtype=object)  # object: ints and None stay as the records hold them
    for col in FIELDS + NUMBERS:
        if col not in entries:
            entries[col] = None
    for col in NUMBERS:
        entries[col] = entries[col].map(number).astype(float)
    entries["arch"] = entries.arch.map(str)
    entries["entry"] = [entry_name(r) for r in records]
    good = entries.status.eq("ok") & entries.accuracy.notna()
    seeds = entries[good].groupby("arch", sort=False)
    first = entries.drop_duplicates("arch").set_index("arch")
    first_ok = entries[good].drop_duplicates("arch").set_index("arch")
    table = pd.concat([first_ok, first.drop(first_ok.index)]).reindex(first.index)
    means = seeds[list(RECORD_NUMBERS)].mean(skipna=False).map(lambda v: round(v, 6))
    table.loc[means.index, list(RECORD_NUMBERS)] = means
    table["seed_sd"] = seeds.accuracy.std().map(lambda v: round(v, 6))
    table["n_seeds"] = seeds.size().reindex(table.index, fill_value=0)
    table["entries"] = seeds.entry.agg(list)
    table["seed_accuracies"] = seeds.accuracy.agg(list)
    bad = entries[~good & entries.arch.isin(first_ok.index)]
    notes = pd.Series([f"seed {s} {st}: {r}" for s, st, r in zip(bad.seed, bad.status, bad.reason)], index=bad.arch)
    table.loc[first_ok.index, "reason"] = notes.groupby(level=0, sort=False).agg("; ".join)
    is_ok = table.status.eq("ok") & table.accuracy.notna()
    table["kind"] = "failed"
    table.loc[is_ok, "kind"] = "ok"
    table.loc[~is_ok & table.status.eq("skipped"), "kind"] = "skipped"
    best_first = table[is_ok].sort_values("accuracy", key=lambda acc: -acc, kind="stable").index
    return table.loc[[*best_first, *table.index[table.kind == "failed"], *table.index[table.kind == "skipped"]]]


def colour_groups(families: list[str], max_groups: int) -> list[str]:
    """The colour group of each ok row's family (rows best first): the family itself for the `max_groups`
    largest families of 2+ rows (larger first, then the better best accuracy), OTHER for the rest."""
    counts = Counter(families)
    rank = {fam: i for i, fam in enumerate(dict.fromkeys(families))}  # by best accuracy
    shown = sorted((f for f, n in counts.items() if n >= 2), key=lambda f: (-counts[f], rank[f]))[:max_groups]
    return [fam if fam in shown else OTHER for fam in families]


def group_order(groups: pd.Series) -> list[str]:
    """The shown families of the ok rows' `groups`, largest first (ties: better best accuracy first), OTHER last
    when present."""
    counts = Counter(groups)
    first_seen = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    named = sorted((g for g in counts if g != OTHER), key=lambda g: (-counts[g], first_seen[g]))
    return named + ([OTHER] if OTHER in counts else [])


def pareto_front(points: list[tuple[str, float, float]], higher_is_better: bool = False) -> list[str]:
    """Names of the (name, cost, accuracy) points that no other point beats (cost <= and accuracy >=, one strictly;
    with `higher_is_better`, as for a throughput, cost >=), sorted from the best cost. Exact duplicates dominate
    neither each other, so both stay."""
    front: list[str] = []
    best_acc, best_key = -math.inf, None
    sign = -1 if higher_is_better else 1
    # Cheapest first and, at equal cost, most accurate first: a point is on the front iff it beats every cheaper one.
    for name, cost, acc in sorted(points, key=lambda p: (sign * p[1], -p[2])):
        if acc > best_acc or (cost, acc) == best_key:
            front.append(name)
            best_acc, best_key = acc, (cost, acc)
    return front


def plain(frame: pd.DataFrame) -> list[dict]:
    """The frame's rows as dicts of plain Python values, None for missing ones: what json.dumps writes."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")
