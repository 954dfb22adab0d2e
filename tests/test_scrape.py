"""stages.scrape against generated images served on loopback: statuses, dedupe, cache, determinism, stable split."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from PIL import Image

import demo.run
from demo.synthetic import draw, jpeg_bytes
from imgclf.common import PipelineError, is_valid_item
from imgclf.sources.manifest import manifest_text, read_manifest
from imgclf.sources.scrape import cache_name, scrape
from stages.scrape import main

CLASSES = ["alpha", "beta"]
SIZE = 48

# URL path -> expected status; the files are written by `www` below.
EXPECTED = {
    "/alpha/1.jpg": "ok",
    "/alpha/2.jpg": "ok",
    "/alpha/3.jpg": "ok",
    "/alpha/4.jpg": "ok",
    "/alpha/copy.jpg": "duplicate",  # same bytes as /alpha/1.jpg
    "/alpha/page.jpg": "not_an_image",  # HTML served as .jpg
    "/alpha/tiny.jpg": "too_small",
    "/alpha/missing.jpg": "http_404",
    "/alpha/shared.jpg": "duplicate_across_classes",  # same bytes as /beta/shared.jpg
    "/beta/1.jpg": "ok",
    "/beta/2.jpg": "ok",
    "/beta/3.jpg": "ok",
    "/beta/shared.jpg": "duplicate_across_classes",
}


def _write_site(www: Path) -> None:
    files = {f"{cls}/{n}.jpg": jpeg_bytes(draw(f"{cls}/{n}", i)) for i, cls in enumerate(CLASSES) for n in (1, 2, 3, 4)}
    del files["beta/4.jpg"]
    shared = jpeg_bytes(draw("shared", 2))
    files.update(
        {
            "alpha/copy.jpg": files["alpha/1.jpg"],
            "alpha/page.jpg": b"<!doctype html><p>not an image</p>",
            "alpha/tiny.jpg": jpeg_bytes(draw("tiny", 0, size=(12, 10))),
            "alpha/shared.jpg": shared,
            "beta/shared.jpg": shared,
        }
    )
    for rel, data in files.items():
        (www / rel).parent.mkdir(parents=True, exist_ok=True)
        (www / rel).write_bytes(data)


class Site:
    """The served folder, its base URL and the paths of every GET it answered."""

    def __init__(self, www: Path, base: str, hits: list[str]):
        self.www, self.base, self.hits = www, base, hits

    def rows(self, paths: list[str]) -> list[dict[str, Any]]:
        """Manifest rows as stages.search writes them, ranked within each class."""
        rows, ranks = [], dict.fromkeys(CLASSES, 0)
        for path in paths:
            cls = path.split("/")[1]
            ranks[cls] = ranks.get(cls, 0) + 1
            rows.append(
                {
                    "class": cls,
                    "query": f"{cls} query",
                    "rank": str(ranks[cls]),
                    "url": self.base + path,
                    "source": "",
                    "width": "",
                    "height": "",
                    "engine": "ddgs",
                    "time": "",
                }
            )
        return rows

    def bytes_of(self, url: str) -> bytes:
        return (self.www / url.removeprefix(self.base).lstrip("/")).read_bytes()


@contextlib.contextmanager
def _counting_server(www: Path, monkeypatch) -> Iterator[Site]:
    hits: list[str] = []

    class Counting(demo.run._QuietHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            super().do_GET()

    monkeypatch.setattr(demo.run, "_QuietHandler", Counting)  # demo.run.serve builds its handler from this name
    with demo.run.serve(www, 0) as port:
        yield Site(www, f"http://127.0.0.1:{port}", hits)


@pytest.fixture
def site(tmp_path: Path, monkeypatch) -> Iterator[Site]:
    www = tmp_path / "www"
    _write_site(www)
    with _counting_server(www, monkeypatch) as s:
        yield s


@pytest.fixture
def cfg(params: dict) -> dict[str, Any]:
    return {
        **params["scrape"],
        "allow_private": True,
        "image_size": SIZE,
        "min_side": 16,
        "min_images": 2,
        "deadline_s": 5,
        "threads": 4,
    }


def _paths(run: Path) -> tuple[Path, Path, Path]:
    return run / "downloads", run / "images", run / "report.csv"


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root`."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _report(path: Path) -> dict[str, dict[str, str]]:
    return {row["url"]: row for row in read_manifest(path)}  # same CSV reader


def test_scrape_statuses_files_and_nothing_else(tmp_path: Path, site: Site, cfg: dict) -> None:
    www_before = _tree(site.www)
    run = tmp_path / "run"
    cache, out, report_path = _paths(run)
    rows = site.rows(list(EXPECTED))

    result = scrape(rows, CLASSES, cfg, cache, out, report_path)

    report = _report(report_path)
    assert {url.removeprefix(site.base): r["status"] for url, r in report.items()} == EXPECTED
    assert list(report) == [r["url"] for r in rows]  # manifest order
    assert report[site.base + "/alpha/copy.jpg"]["reason"] == f"duplicate of {site.base}/alpha/1.jpg"
    assert "alpha, beta" in report[site.base + "/beta/shared.jpg"]["reason"]
    assert report[site.base + "/alpha/missing.jpg"]["reason"].startswith("HTTP 404")
    assert {r["query"] for r in report.values()} == {"alpha query", "beta query"}  # the review page shows it

    # Kept images: <class>/<first 16 hex of the downloaded bytes' sha256>.jpg, resized, and nothing else.
    kept = {url: r["file"] for url, r in report.items() if r["status"] == "ok"}
    for url, file in kept.items():
        cls = url.removeprefix(site.base).split("/")[1]
        assert file == f"{cls}/{hashlib.sha256(site.bytes_of(url)).hexdigest()[:16]}.jpg"
        assert re.fullmatch(r"(alpha|beta)/[0-9a-f]{16}\.jpg", file)
        with Image.open(out / file) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and min(img.size) == SIZE
    assert all(not r["file"] for r in report.values() if r["status"] != "ok")
    assert set(_tree(out)) == set(kept.values())

    nothing_moved = {"excluded": 0, "relabelled_out": 0, "relabelled_in": 0}
    assert result["classes"] == {
        "alpha": {"found": 9, "downloaded": 8, "kept": 4, **nothing_moved},
        "beta": {"found": 4, "downloaded": 4, "kept": 3, **nothing_moved},
    }
    assert result["total"] == {"found": 13, "kept": 7, "excluded": 0, "relabelled": 0}
    assert result["status"]["duplicate_across_classes"] == 2

    # Written only: the cache (one file per URL that answered 200), the images and the report.
    answered = [site.base + p for p, s in EXPECTED.items() if s != "http_404"]
    assert set(_tree(cache)) == {cache_name(u) for u in answered}
    for url in answered:
        assert (cache / cache_name(url)).read_bytes() == site.bytes_of(url)
    everything = [p.relative_to(run).as_posix() for p in run.rglob("*")]
    assert all(p.split("/")[0] in ("downloads", "images", "report.csv") for p in everything), everything
    assert not [p for p in everything if p.endswith((".part", ".tmp")) or "/." in "/" + p], everything
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "www"]
    assert _tree(site.www) == www_before
    assert sorted(site.hits) == sorted(EXPECTED)  # every URL fetched once


def test_scrape_twice_is_byte_identical_and_uses_the_cache(tmp_path: Path, cfg: dict, monkeypatch) -> None:
    www = tmp_path / "www"
    _write_site(www)
    cache, out, report_path = _paths(tmp_path / "run")
    with _counting_server(www, monkeypatch) as site:
        rows = site.rows(list(EXPECTED))
        first = scrape(rows, CLASSES, cfg, cache, out, report_path)
        images, report = _tree(out), report_path.read_bytes()
        assert sorted(site.hits) == sorted(EXPECTED)

        site.hits.clear()
        assert scrape(rows, CLASSES, cfg, cache, out, report_path) == first
        assert _tree(out) == images and report_path.read_bytes() == report
        assert site.hits == ["/alpha/missing.jpg"]  # only the URL that failed is tried again

    # Server gone: the dataset is rebuilt from the cache alone; only the dead link's status changes.
    third = scrape(rows, CLASSES, cfg, cache, out, report_path)
    assert _tree(out) == images
    assert third["classes"] == first["classes"]
    assert _report(report_path)[site.base + "/alpha/missing.jpg"]["status"] == "connection_error"
    assert site.hits == ["/alpha/missing.jpg"]


def test_adding_urls_moves_no_image_between_train_and_valid(
    tmp_path: Path, site: Site, cfg: dict, params: dict
) -> None:
    seed, valid_pct = params["base"]["seed"], params["train"]["valid_pct"]
    cache, out, report_path = _paths(tmp_path / "run")
    scrape(site.rows(list(EXPECTED)), CLASSES, cfg, cache, out, report_path)
    before = _tree(out)
    split_before = {f: is_valid_item(Path(f).stem, seed, valid_pct) for f in before}

    new = [f"/alpha/new{n}.jpg" for n in range(1, 6)]
    for n, path in enumerate(new):
        (site.www / path.lstrip("/")).write_bytes(jpeg_bytes(draw(f"new/{n}", 0)))
    # New URLs first: they change every existing row's rank and the order images are met in.
    scrape(site.rows(new + list(EXPECTED)), CLASSES, cfg, cache, out, report_path)
    after = _tree(out)

    assert len(after) == len(before) + 5
    assert sum(f.startswith("alpha/") for f in after) == sum(f.startswith("alpha/") for f in before) + 5
    for f, digest in before.items():
        assert after.get(f) == digest, f"{f} changed or disappeared"
        assert is_valid_item(Path(f).stem, seed, valid_pct) == split_before[f]
    assert sorted(site.hits) == sorted(list(EXPECTED) + ["/alpha/missing.jpg"] + new)  # only new/failed fetched


def test_too_few_images_fails_and_keeps_the_downloads(tmp_path: Path, site: Site, cfg: dict) -> None:
    cache, out, report_path = _paths(tmp_path / "run")
    with pytest.raises(PipelineError) as err:
        scrape(site.rows(list(EXPECTED)), CLASSES, {**cfg, "min_images": 4}, cache, out, report_path)
    msg = str(err.value)
    assert re.search(r"too few images for beta \(3\):", msg), msg
    assert "alpha (" not in msg and "scrape.min_images is 4" in msg
    answered = [site.base + p for p, s in EXPECTED.items() if s != "http_404"]
    assert set(_tree(cache)) == {cache_name(u) for u in answered}
    assert report_path.is_file()  # the report says why URLs were dropped

    site.hits.clear()  # a rerun after more URLs fetches nothing it already has
    scrape(site.rows(list(EXPECTED)), CLASSES, cfg, cache, out, report_path)
    assert site.hits == ["/alpha/missing.jpg"]


def test_manifest_missing_a_class(tmp_path: Path, site: Site, cfg: dict) -> None:
    cache, out, report_path = _paths(tmp_path / "run")
    alpha_only = site.rows([p for p in EXPECTED if p.startswith("/alpha/")])
    with pytest.raises(PipelineError, match=r"no URLs for class\(es\) beta.*search"):
        scrape(alpha_only, CLASSES, cfg, cache, out, report_path)
    assert site.hits == [] and not (tmp_path / "run").exists()


def test_manifest_with_a_class_the_params_do_not_have(tmp_path: Path, site: Site, cfg: dict) -> None:
    cache, out, report_path = _paths(tmp_path / "run")
    rows = site.rows(list(EXPECTED))
    rows.append({**rows[0], "class": "gamma", "rank": "1"})
    with pytest.raises(PipelineError, match=r"class\(es\) gamma, which are not in this dataset's classes"):
        scrape(rows, CLASSES, cfg, cache, out, report_path)
    assert site.hits == [] and not (tmp_path / "run").exists()


def stage_workspace(folder: Path, site: Site, cfg: dict, params: dict) -> list[str]:
    """`folder` as the scrape stage's workspace for a dataset `tiny` of CLASSES: params.yaml (with `cfg` as the
    scrape section) and a manifest of the site's EXPECTED URLs. Returns the stage's arguments."""
    params["scrape"] = cfg
    params["datasets"]["tiny"] = {"classes": {c: f"{c} query" for c in CLASSES}}
    params["finetune"]["tasks"]["tiny"] = {"dataset": "tiny", "label": "folder", "epochs": 1, "arch": None}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (folder / "manifest.csv").write_text(manifest_text(site.rows(list(EXPECTED))))
    args = ["--dataset", "tiny", "--manifest", "manifest.csv", "--cache", "downloads", "--out", "images"]
    return args + ["--report", "report.csv", "--record", "record.json", "--metrics", "metrics.json"]


def test_main_writes_images_report_and_metrics(
    tmp_path: Path, site: Site, cfg: dict, params: dict, monkeypatch
) -> None:
    args = stage_workspace(tmp_path, site, cfg, params)
    monkeypatch.chdir(tmp_path)
    main(args)
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["total"] == {"found": 13, "kept": 7, "excluded": 0, "relabelled": 0}
    # the DVC metrics: the totals a person compares between runs, no per-class or per-status count
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"kept": 7, "excluded": 0, "relabelled": 0}
    assert len(_tree(tmp_path / "images")) == 7


def test_near_duplicates_are_reported_or_dropped(tmp_path: Path, site: Site, cfg: dict) -> None:
    # the same picture re-encoded at another quality: other bytes, a perceptual hash a few bits away
    original = Image.open(site.www / "alpha/2.jpg")
    original.save(site.www / "alpha/recoded.jpg", quality=60)
    paths = ["/alpha/1.jpg", "/alpha/2.jpg", "/alpha/3.jpg", "/alpha/recoded.jpg", "/beta/1.jpg", "/beta/2.jpg"]
    rows = site.rows(paths)
    for mode, status in (("report", "ok"), ("drop", "near_duplicate")):
        cache, out, report_path = _paths(tmp_path / mode)
        scrape(rows, CLASSES, {**cfg, "near_duplicates": mode}, cache, out, report_path)
        row = _report(report_path)[site.base + "/alpha/recoded.jpg"]
        assert row["status"] == status
        assert row["reason"].startswith(f"near-duplicate of {site.base}/alpha/2.jpg (distance ")
        assert len(_tree(out)) == (6 if mode == "report" else 5)
    distinct = [r for url, r in _report(report_path).items() if not url.endswith("recoded.jpg")]
    assert all(r["status"] == "ok" and not r["reason"] for r in distinct)  # different pictures stay apart


def test_hostile_urls_never_name_a_path(tmp_path: Path, site: Site, cfg: dict) -> None:
    hostile = [
        "/alpha/../alpha/1.jpg",
        "/alpha/%2e%2e%2f%2e%2e%2fescape.jpg",
        "/alpha/" + "a" * 3000 + ".jpg",
        "/alpha/..%2F..%2Fetc%2Fpasswd",
    ]
    rows = site.rows(["/alpha/2.jpg", "/alpha/3.jpg", "/beta/1.jpg", "/beta/2.jpg"])
    rows += [{**rows[0], "rank": str(10 + i), "url": site.base + path} for i, path in enumerate(hostile)]
    run = tmp_path / "run"
    cache, out, report_path = _paths(run)
    before = _tree(tmp_path)
    scrape(rows, CLASSES, cfg, cache, out, report_path)
    report = _report(report_path)
    assert report[site.base + hostile[0]]["status"] == "ok"  # the server normalises it to /alpha/1.jpg
    assert all(report[site.base + p]["status"] == "http_404" for p in hostile[1:])
    # downloads are named by a hash of the URL, images by a hash of their bytes: nothing else appears
    assert all(re.fullmatch(r"[0-9a-f]{32}", p.name) for p in cache.iterdir())
    written = set(_tree(tmp_path)) - set(before)
    assert all(w.startswith("run/") for w in written)
    assert {w.split("/")[1] for w in written} == {"downloads", "images", "report.csv"}
