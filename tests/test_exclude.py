"""Exclusion files (imgclf.sources.exclude) and the scrape stage applying them to generated images on loopback:
exactly the named images are dropped or moved, bad lines fail with their file and line, the download cache is
never touched, and removing a line brings the image back without a download."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import pytest

from imgclf.common import PipelineError
from imgclf.sources.exclude import HEADER, Exclusion, read_exclusions
from imgclf.sources.manifest import read_manifest
from imgclf.sources.scrape import scrape
from stages.scrape import main
from tests.conftest import ROOT
from tests.test_scrape import CLASSES, EXPECTED, SIZE, Site, _counting_server, _tree, _write_site, stage_workspace

STEM_A = "0123456789abcdef"
CLASSES_WITH_SPACES = ["India Gate", "Arc de Triomphe"]


@pytest.fixture
def site(tmp_path: Path, monkeypatch):
    www = tmp_path / "www"
    _write_site(www)
    with _counting_server(www, monkeypatch) as s:
        yield s


@pytest.fixture
def cfg(params: dict) -> dict:
    return {**params["scrape"], "allow_private": True, "image_size": SIZE, "min_side": 16, "min_images": 1}


def _file(tmp_path: Path, text: str, name: str = "five_class.txt") -> Path:
    path = tmp_path / "exclude" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _stem(site: Site, path: str) -> str:
    return hashlib.sha256(site.bytes_of(site.base + path)).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- the file format


def test_lines_stems_urls_relabels_reasons_and_comments(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        HEADER
        + "\n"
        + f"{STEM_A}  # a hotel named after the monument\n"
        + "   \n"
        + "# a comment line\n"
        + "https://example.org/a.jpg#frag  # a URL keeps its own #fragment\n"
        + f"arc_de_triomphe/{'ABCDEF01' * 2}.jpg\n"  # the report's `file` column, pasted whole
        + f"{'2' * 16} -> Arc de Triomphe  # it is the arch\n"
        + f"{'3' * 16}->India Gate\n"
        + "http://example.org/x->y.jpg\n",  # `->` inside a URL is part of it
    )
    where = f"{path.as_posix()}:"
    n = HEADER.count("\n") + 1
    assert read_exclusions(path, CLASSES_WITH_SPACES) == [
        Exclusion(f"{where}{n + 1}", STEM_A, None, "a hotel named after the monument"),
        Exclusion(f"{where}{n + 4}", "https://example.org/a.jpg#frag", None, "a URL keeps its own #fragment"),
        Exclusion(f"{where}{n + 5}", "abcdef01" * 2, None, ""),
        Exclusion(f"{where}{n + 6}", "2" * 16, "Arc de Triomphe", "it is the arch"),
        Exclusion(f"{where}{n + 7}", "3" * 16, "India Gate", ""),
        Exclusion(f"{where}{n + 8}", "http://example.org/x->y.jpg", None, ""),
    ]


def test_a_file_of_comments_excludes_nothing_and_every_dataset_has_one(tmp_path: Path, project_params) -> None:
    assert read_exclusions(_file(tmp_path, HEADER), CLASSES) == []
    assert read_exclusions(_file(tmp_path, ""), CLASSES) == []
    committed = sorted(p.stem for p in (ROOT / "exclude").glob("*.txt"))
    assert committed == sorted(project_params["datasets"])
    for name in committed:
        assert read_exclusions(ROOT / "exclude" / f"{name}.txt", ["a", "b"]) == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("3fa6c1d2  # too short", r":2: cannot read '3fa6c1d2  # too short': expected `<file stem or URL>`"),
        (f"{STEM_A} wrong monument", rf":2: cannot read '{STEM_A} wrong monument': expected"),
        ("ftp://example.org/a.jpg", r":2: cannot read 'ftp://example.org/a.jpg'"),
        (f"{STEM_A} -> Taj Mahal", r":2: unknown class 'Taj Mahal' after `->`: this dataset's classes are India Gate"),
        (f"{STEM_A} -> india gate", r":2: unknown class 'india gate' .* Did you mean 'India Gate'\?"),
        (f"{STEM_A} ->   # no class", r":2: no class after `->`: name one of India Gate, Arc de Triomphe\."),
        (STEM_A.upper(), r":2: 0123456789abcdef is also on line 1: keep one of the two lines\."),
    ],
)
def test_a_bad_line_names_its_file_line_and_what_to_do(tmp_path: Path, line: str, message: str) -> None:
    path = _file(tmp_path, f"{STEM_A}\n{line}\n")
    with pytest.raises(PipelineError, match=rf"^{re.escape(path.as_posix())}{message}") as err:
        read_exclusions(path, CLASSES_WITH_SPACES)
    assert "\n" not in str(err.value)


def test_only_the_first_bad_line_is_shown_with_a_count_of_the_rest(tmp_path: Path) -> None:
    path = _file(tmp_path, "bad one\nbad two\n# fine\nbad three\n")
    with pytest.raises(PipelineError, match=r":1: cannot read 'bad one'.* \(2 more bad line\(s\) after it\)$"):
        read_exclusions(path, CLASSES)


def test_a_missing_file_says_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"nope\.txt not found: every dataset needs its exclusion file"):
        read_exclusions(tmp_path / "nope.txt", CLASSES)


# ------------------------------------------------------------------------------- the scrape stage applies it


def _scrape(site: Site, cfg: dict, run: Path, cache: Path, exclusions: tuple | list[Exclusion] = ()) -> dict:
    return scrape(site.rows(list(EXPECTED)), CLASSES, cfg, cache, run / "images", run / "report.csv", exclusions)


def test_exclusions_and_relabels_drop_and_move_exactly_the_named_images(tmp_path: Path, site: Site, cfg: dict) -> None:
    cache = tmp_path / "downloads"
    clean = _scrape(site, cfg, tmp_path / "clean", cache)
    images, report = _tree(tmp_path / "clean/images"), read_manifest(tmp_path / "clean/report.csv")
    clean_rows = {r["url"]: r for r in report}
    downloads = _tree(cache)
    a2, a3, b1 = _stem(site, "/alpha/2.jpg"), _stem(site, "/alpha/3.jpg"), _stem(site, "/beta/1.jpg")
    path = _file(
        tmp_path,
        HEADER + f"{a2}  # a souvenir, not the monument\n{site.base}/beta/1.jpg\n{a3} -> beta  # the other class\n",
    )
    n = HEADER.count("\n")
    site.hits.clear()

    result = _scrape(site, cfg, tmp_path / "cleaned", cache, read_exclusions(path, CLASSES))

    after, moved = _tree(tmp_path / "cleaned/images"), f"beta/{a3}.jpg"
    expected = {k: v for k, v in images.items() if k not in (f"alpha/{a2}.jpg", f"beta/{b1}.jpg", f"alpha/{a3}.jpg")}
    expected[moved] = images[f"alpha/{a3}.jpg"]  # the same bytes
    assert after == expected
    rows = {r["url"]: r for r in read_manifest(tmp_path / "cleaned/report.csv")}
    where = path.as_posix()
    for url, change in {
        "/alpha/2.jpg": {"status": "excluded", "reason": f"{where}:{n + 1}: a souvenir, not the monument", "file": ""},
        "/beta/1.jpg": {"status": "excluded", "reason": f"{where}:{n + 2}", "file": ""},
        # `class` stays the one whose search found it; `file` is in the new class's folder
        "/alpha/3.jpg": {"status": "relabelled", "reason": f"to beta, {where}:{n + 3}: the other class", "file": moved},
    }.items():
        assert rows[site.base + url] == clean_rows[site.base + url] | change
    named = {f"{site.base}/{p}" for p in ("alpha/2.jpg", "beta/1.jpg", "alpha/3.jpg")}
    assert [r for r in read_manifest(tmp_path / "cleaned/report.csv") if r["url"] not in named] == [
        r for r in report if r["url"] not in named
    ], "a row the file does not name changed"

    assert result["classes"]["alpha"] == {
        **clean["classes"]["alpha"],
        "excluded": 1,
        "relabelled_out": 1,
        "kept": clean["classes"]["alpha"]["kept"] - 2,
    }
    assert result["classes"]["beta"] == {**clean["classes"]["beta"], "excluded": 1, "relabelled_in": 1}
    assert result["total"] == {**clean["total"], "excluded": 2, "relabelled": 1, "kept": clean["total"]["kept"] - 2}
    assert result["status"]["excluded"] == 2 and result["status"]["relabelled"] == 1

    assert _tree(cache) == downloads, "the download cache changed"
    assert site.hits == ["/alpha/missing.jpg"]  # nothing downloaded again: only the dead link is retried

    # the lines removed: the images come back, byte for byte, from the cache alone
    site.hits.clear()
    assert _scrape(site, cfg, tmp_path / "cleaned", cache, read_exclusions(_file(tmp_path, HEADER), CLASSES)) == clean
    assert _tree(tmp_path / "cleaned/images") == images
    assert (tmp_path / "cleaned/report.csv").read_bytes() == (tmp_path / "clean/report.csv").read_bytes()
    assert site.hits == ["/alpha/missing.jpg"] and _tree(cache) == downloads


def test_a_fresh_download_with_exclusions_is_byte_identical(tmp_path: Path, site: Site, cfg: dict) -> None:
    a2 = _stem(site, "/alpha/2.jpg")
    exclusions = read_exclusions(_file(tmp_path, f"{a2}\n{site.base}/beta/2.jpg -> alpha\n"), CLASSES)
    _scrape(site, cfg, tmp_path / "first", tmp_path / "cache1", exclusions)
    _scrape(site, cfg, tmp_path / "again", tmp_path / "cache2", exclusions)  # every URL downloaded anew
    assert _tree(tmp_path / "again") == _tree(tmp_path / "first")
    assert f"alpha/{_stem(site, '/beta/2.jpg')}.jpg" in _tree(tmp_path / "first/images")


def test_excluding_a_duplicate_url_drops_the_image_and_a_dropped_one_is_only_logged(
    tmp_path: Path, site: Site, cfg: dict, caplog
) -> None:
    """A line acts on the image its URL downloaded: /alpha/copy.jpg holds the same bytes as /alpha/1.jpg, so it
    drops that image. An image an earlier check already dropped (too small) stays dropped, with a warning."""
    tiny = _stem(site, "/alpha/tiny.jpg")
    exclusions = read_exclusions(_file(tmp_path, f"{site.base}/alpha/copy.jpg\n{tiny}\n"), CLASSES)
    with caplog.at_level(logging.WARNING):
        _scrape(site, cfg, tmp_path / "run", tmp_path / "cache", exclusions)
    rows = {r["url"]: r for r in read_manifest(tmp_path / "run/report.csv")}
    assert rows[f"{site.base}/alpha/1.jpg"]["status"] == "excluded"
    assert rows[f"{site.base}/alpha/copy.jpg"]["status"] == "duplicate"
    assert rows[f"{site.base}/alpha/tiny.jpg"]["status"] == "too_small"
    assert f"alpha/{_stem(site, '/alpha/1.jpg')}.jpg" not in _tree(tmp_path / "run/images")
    assert f"five_class.txt:2: {tiny} is not in the dataset anyway" in caplog.text


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("fedcba9876543210  # a typo", r":1: fedcba9876543210 is the stem of no downloaded image of this dataset"),
        ("{base}/alpha/nope.jpg", r":1: http://\S+/alpha/nope.jpg is not a URL of this dataset's manifest"),
        ("{alpha2} -> alpha", r":1: [0-9a-f]{16} is in class alpha already: name another class"),
        ("{base}/alpha/2.jpg\n{alpha2} -> beta", r":2: names the same image as \S+five_class.txt:1: keep one"),
    ],
)
def test_a_line_that_names_nothing_fails_and_loses_nothing(
    tmp_path: Path, site: Site, cfg: dict, line: str, message: str
) -> None:
    cache = tmp_path / "downloads"
    _scrape(site, cfg, tmp_path / "run", cache)
    before = _tree(tmp_path)
    text = line.format(base=site.base, alpha2=_stem(site, "/alpha/2.jpg"))
    path = _file(tmp_path, text + "\n")
    with pytest.raises(PipelineError, match=rf"^{re.escape(path.as_posix())}{message}") as err:
        _scrape(site, cfg, tmp_path / "run", cache, read_exclusions(path, CLASSES))
    assert "\n" not in str(err.value)
    assert {k: v for k, v in _tree(tmp_path).items() if not k.startswith(("exclude/", "www/"))} == {
        k: v for k, v in before.items() if not k.startswith("www/")
    }, "a file was changed or deleted"


def test_the_stage_reads_the_file_before_downloading_anything(
    tmp_path: Path, site: Site, cfg: dict, params: dict, monkeypatch
) -> None:
    args = stage_workspace(tmp_path, site, cfg, params) + ["--exclude", "exclude/tiny.txt"]
    monkeypatch.chdir(tmp_path)
    _file(tmp_path, f"{STEM_A} -> gamma\n", "tiny.txt")
    with pytest.raises(PipelineError, match=r"^exclude/tiny.txt:1: unknown class 'gamma'"):
        main(args)
    assert site.hits == [] and not (tmp_path / "downloads").exists()

    _file(tmp_path, f"{_stem(site, '/beta/3.jpg')} -> alpha  # moved\n", "tiny.txt")
    main(args)
    record = json.loads((tmp_path / "record.json").read_text())  # the per-class counts: the record, not the metrics
    assert record["classes"]["beta"]["relabelled_out"] == 1 and record["classes"]["alpha"]["relabelled_in"] == 1
    assert record["classes"]["alpha"]["kept"] == 5 and record["classes"]["beta"]["kept"] == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["relabelled"] == 1
