"""split_by_group: duplicate groups never straddle the split, validation holds one image per group, mixed-label
groups are conflicts, and a class emptied by the grouping is one clear error."""

from __future__ import annotations

import pytest

from imgclf.common import PipelineError, is_valid_item
from imgclf.training.data import split_by_group

SEED, PCT = 42, 0.3


def _dataset(n: int = 200) -> tuple[list[str], list[str], list[str]]:
    """n images in 2 classes; every 5th image has two copies (stems <stem>-a, <stem>-b) in its group."""
    files, labels, groups = [], [], []
    for i in range(n):
        label, stem = ("cat", "dog")[i % 2], f"{i:016x}"
        copies = [stem, f"{stem}-a", f"{stem}-b"] if i % 5 == 0 else [stem]
        files += [f"{label}/{c}.jpg" for c in copies]
        labels += [label] * len(copies)
        groups += [stem] * len(copies)
    return files, labels, groups


def test_no_group_straddles_and_valid_holds_one_image_per_group() -> None:
    files, labels, groups = _dataset()
    rows, left_out = split_by_group(files, labels, groups, PCT, SEED)
    sides: dict[str, set[str]] = {}
    for r in rows:
        sides.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values())
    valid = [r for r in rows if r["split"] == "valid"]
    assert len(valid) == len({r["group"] for r in valid})
    copies_in_valid = sum(1 for g in {r["group"] for r in valid} if groups.count(g) == 3)
    assert left_out == 2 * copies_in_valid > 0
    # stable: a lone image lands where the stem hash split puts it
    assert all((r["split"] == "valid") == is_valid_item(r["group"], SEED, PCT) for r in rows)


def test_a_group_with_two_labels_is_a_conflict() -> None:
    files, labels, groups = _dataset()
    labels[1] = "dog" if labels[1] == "cat" else "cat"  # the first copy of image 0 relabelled
    rows, _ = split_by_group(files, labels, groups, PCT, SEED)
    conflict = [r for r in rows if r["split"] == "conflict"]
    assert {r["group"] for r in conflict} == {groups[0]} and len(conflict) == 3


def test_a_class_emptied_by_grouping_names_the_class() -> None:
    files = [f"cat/{i:016x}.jpg" for i in range(20)] + ["dog/a.jpg", "dog/b.jpg"]
    labels = ["cat"] * 20 + ["dog", "dog"]
    groups = [f"{i:016x}" for i in range(20)] + ["dog-group"] * 2  # both dogs are one photo
    with pytest.raises(PipelineError, match="class 'dog' has no (train|valid) image once its copies are grouped"):
        split_by_group(files, labels, groups, PCT, SEED)
