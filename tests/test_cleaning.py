"""Cleaning a dataset end to end, through the real `dvc repro` on the demo: the review pages put the demo's wrong
images (drawn as another class, listed under this one) first, and an exclusion file drops and moves exactly the
lines' images, reruns only that dataset's stages, loses no download, and fails on a bad line with its file:line."""

from __future__ import annotations

import csv
import hashlib
import html
import json
import re
from pathlib import Path

import pytest

import demo.run
from imgclf.sources.exclude import HEADER
from tests.conftest import run_dvc, stages_run

pytestmark = pytest.mark.slow


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("dataset", ["five_class", "monuments"])
def test_the_review_shows_the_wrong_images_first(demo_workspace, dataset: str) -> None:
    ws, _ = demo_workspace
    out = ws / "review" / dataset
    rows = _rows(out / "losses.csv")
    assert len(rows) == len(list((ws / "data" / dataset / "images").rglob("*.jpg")))
    # scored as validation scores: the same split and crops give the accuracy the finetune stage measured
    valid = [r for r in rows if r["split"] == "valid"]
    finetune = json.loads((ws / "records/finetune" / f"{dataset}.json").read_text())
    assert len(valid) == finetune["n_valid"]
    assert sum(r["label"] == r["predicted"] for r in valid) / len(valid) == pytest.approx(
        finetune["accuracy"], abs=1e-6
    )

    page = (out / "index.html").read_text(encoding="utf-8")
    shown = re.findall(r'<img src="thumbs/([0-9a-f]{16})\.jpg"', page)
    assert sorted(p.stem for p in (out / "thumbs").iterdir()) == sorted(shown)
    wrong = [r for r in rows if "/wrong" in r["url"]]
    assert len(wrong) == {"five_class": 40, "monuments": 6}[dataset]
    for split in ("valid", "train"):
        part = [r for r in rows if r["split"] == split]
        assert "/wrong" in part[0]["url"], f"{dataset} {split}: the worst image is not a wrong one"
    if dataset == "five_class":  # enough images for the model to learn the shapes despite the noise
        # validation: the wrong images are exactly the worst ones; training: a model may have learnt a few of its
        # wrong training images as labelled (one of 32 in a CI run), so at least 90% of the worst are wrong ones
        for split, share in (("valid", 1.0), ("train", 0.9)):
            n = sum(r["split"] == split for r in wrong)
            worst = [r for r in rows if r["split"] == split and int(r["rank"]) <= n]
            assert sum("/wrong" in r["url"] for r in worst) >= share * n, f"{split}: {[r['url'] for r in worst]}"
        assert {r["stem"] for r in wrong} <= set(shown)  # every one is on the page, with its copy line
    for r in wrong:
        if r["stem"] in shown:
            assert f'data-line="{html.escape(r["stem"])}  # {html.escape(r["label"])}, predicted' in page


def test_an_exclusion_reruns_only_its_dataset_and_moves_exactly_its_images(copy_workspace) -> None:
    ws, port = copy_workspace
    images, cache = ws / "data/monuments/images", ws / "downloads/monuments"
    before, downloads = _tree(images), _tree(cache)
    old = json.loads((ws / "records/finetune/monuments.json").read_text())
    report = {r["url"]: r for r in _rows(ws / "data/monuments/report.csv")}
    wrong = {u: r for u, r in report.items() if "/wrong" in u and r["file"]}
    assert len(wrong) == 6
    drop = sorted(u for u in wrong if "/arc_de_triomphe/" in u)  # drawn as India Gate: drop them
    move = sorted(u for u in wrong if "/india_gate/" in u)  # drawn as the arch: move them there
    stem = {u: Path(r["file"]).stem for u, r in wrong.items()}
    lines = [f"{drop[0]}  # by URL", *(f"{stem[u]}  # not the arch" for u in drop[1:])]
    lines += [f"{stem[u]} -> arc_de_triomphe  # it is the arch" for u in move]
    (ws / "exclude/monuments.txt").write_text(HEADER + "\n".join(lines) + "\n")

    with demo.run.serve(ws / "www", port):
        res = run_dvc(ws, "repro")
    assert stages_run(res.stdout) == ["scrape@monuments", "finetune@monuments", "review@monuments"]

    expected = {k: v for k, v in before.items() if k not in {wrong[u]["file"] for u in drop + move}}
    expected.update({f"arc_de_triomphe/{stem[u]}.jpg": before[wrong[u]["file"]] for u in move})
    assert _tree(images) == expected
    after = {r["url"]: r for r in _rows(ws / "data/monuments/report.csv")}
    assert {u: after[u]["status"] for u in drop + move} == {
        **dict.fromkeys(drop, "excluded"),
        **dict.fromkeys(move, "relabelled"),
    }
    assert after[drop[0]]["reason"] == f"exclude/monuments.txt:{HEADER.count(chr(10)) + 1}: by URL"
    assert [r for u, r in after.items() if u not in wrong] == [r for u, r in report.items() if u not in wrong]
    assert _tree(cache) == downloads, "a download was deleted or changed"

    diff = json.loads(run_dvc(ws, "metrics", "diff", "--json").stdout)
    assert diff["metrics/scrape/monuments.json"]["excluded"] == {"old": 0, "new": 3, "diff": 3}
    assert diff["metrics/scrape/monuments.json"]["relabelled"] == {"old": 0, "new": 3, "diff": 3}
    assert diff["metrics/scrape/monuments.json"]["kept"]["diff"] == -3
    scraped = json.loads((ws / "records/scrape/monuments.json").read_text())  # the per-class counts stay here
    assert scraped["classes"]["arc_de_triomphe"]["relabelled_in"] == 3
    new = json.loads((ws / "records/finetune/monuments.json").read_text())
    assert new["n_train"] + new["n_valid"] == old["n_train"] + old["n_valid"] - 3  # retrained without them
    assert "metrics/finetune/monuments.json" in diff
    assert {p.split("/")[-1] for p in diff} == {"monuments.json"}, "a metric of another dataset changed"
    page = (ws / "review/monuments/index.html").read_text(encoding="utf-8")
    assert not [u for u in drop if stem[u] in page], "an excluded image is still reviewed"
    relabelled = {r["stem"]: r for r in _rows(ws / "review/monuments/losses.csv") if r["stem"] in stem.values()}
    assert {relabelled[stem[u]]["label"] for u in move} == {"arc_de_triomphe"}


def test_a_bad_exclusion_line_fails_with_its_line_and_loses_nothing(copy_workspace) -> None:
    ws, port = copy_workspace
    cache, images = ws / "downloads/five_class", ws / "data/five_class/images"
    downloads = _tree(cache)
    stem = Path(next(r["file"] for r in _rows(ws / "data/five_class/report.csv") if r["file"])).stem
    line = HEADER.count("\n") + 2
    for bad, message in (
        (f"{stem} -> tour_eiffel", f"exclude/five_class.txt:{line}: unknown class 'tour_eiffel' after `->`"),
        ("0123456789abcdef", f"exclude/five_class.txt:{line}: 0123456789abcdef is the stem of no downloaded image"),
        (f"{stem} because", f"exclude/five_class.txt:{line}: cannot read '{stem} because'"),
    ):
        (ws / "exclude/five_class.txt").write_text(f"{HEADER}{stem}  # fine\n{bad}\n")
        with demo.run.serve(ws / "www", port):
            res = run_dvc(ws, "repro", check=False)
        assert res.returncode != 0
        assert stages_run(res.stdout) == ["scrape@five_class"]
        errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith(f"error: {message}"), res.stderr[-3000:]
        assert "Traceback" not in res.stderr
        assert _tree(cache) == downloads, "a download was lost"
    # the line fixed: the dataset comes back from the cache, and the rest of the pipeline runs on it
    (ws / "exclude/five_class.txt").write_text(HEADER)
    with demo.run.serve(ws / "www", port):
        run_dvc(ws, "repro", "scrape@five_class")
    assert json.loads(run_dvc(ws, "status", "--json").stdout) == {}
    assert _tree(cache) == downloads and len(list(images.rglob("*.jpg"))) == 640
