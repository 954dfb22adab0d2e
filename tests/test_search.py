"""stages.search with fake search functions: backoff, partial results, the manifest CLI, URL lists."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from imgclf.common import PipelineError
from imgclf.sources.manifest import MANIFEST_FIELDS, read_manifest
from imgclf.sources.search import read_url_list, search_dataset, search_with_backoff
from stages.search import main

CLASSES = {"india_gate": "India Gate", "arc_de_triomphe": "Arc de Triomphe"}
CFG = {"retries": 2, "backoff_s": 1.0, "max_results": 3}


def results(query: str, n: int = 4) -> list[dict[str, Any]]:
    """What DDGS().images returns, trimmed to the keys the stage reads."""
    slug = query.lower().replace(" ", "-")
    return [{"image": f"https://img.example/{slug}/{i}.jpg", "url": f"https://page.example/{slug}/{i}",
             "width": 640, "height": 480} for i in range(1, n + 1)]


class FakeSearch:
    """Records every query; answers from `plan[query]`, a list consumed one call at a time whose items are
    a result list or an exception to raise (the last item repeats)."""

    def __init__(self, plan: dict[str, list[Any]] | None = None):
        self.plan = plan or {}
        self.calls: list[str] = []

    def __call__(self, query: str) -> list[dict[str, Any]]:
        self.calls.append(query)
        steps = self.plan.get(query, [results(query)])
        step = steps[min(self.calls.count(query), len(steps)) - 1]
        if isinstance(step, Exception):
            raise step
        return step


# ---------------------------------------------------------------- search_with_backoff


def test_backoff_retries_with_growing_waits() -> None:
    fake = FakeSearch({"q": [RuntimeError("boom"), TimeoutError("slow"), results("q")]})
    waits: list[float] = []
    assert search_with_backoff(fake, "q", retries=4, backoff_s=2.0, sleep=waits.append) == results("q")
    assert fake.calls == ["q", "q", "q"]
    assert len(waits) == 2
    # base * 2**attempt, plus up to 50 % jitter
    assert 2.0 <= waits[0] <= 3.0
    assert 4.0 <= waits[1] <= 6.0
    assert waits[1] > waits[0] * 1.3


@pytest.mark.parametrize("retries", [0, 3])
def test_backoff_reports_rate_limiting_after_empty_answers(retries: int) -> None:
    fake = FakeSearch({"Big Ben London": [[]]})
    waits: list[float] = []
    with pytest.raises(PipelineError) as err:
        search_with_backoff(fake, "Big Ben London", retries=retries, backoff_s=0.5, sleep=waits.append)
    msg = str(err.value)
    assert "'Big Ben London'" in msg
    assert "rate-limit" in msg.lower() or "rate limit" in msg.lower()
    assert f"after {retries + 1} attempts" in msg
    assert len(fake.calls) == retries + 1
    assert len(waits) == retries  # no pointless wait after the last attempt


def test_backoff_reports_the_last_error() -> None:
    fake = FakeSearch({"q": [ConnectionError("dns failed")]})
    with pytest.raises(PipelineError, match="ConnectionError: dns failed"):
        search_with_backoff(fake, "q", retries=1, backoff_s=0.0, sleep=lambda s: None)


def test_results_without_an_image_are_dropped() -> None:
    mixed = [{"image": "https://a/1.jpg"}, {"url": "https://page"}, {"image": ""}, {"image": "https://a/2.jpg"}]
    fake = FakeSearch({"q": [mixed]})
    assert search_with_backoff(fake, "q", retries=0, backoff_s=0, sleep=lambda s: None) == [mixed[0], mixed[3]]
    # Only image-less results count as no answer: retried, then reported.
    fake = FakeSearch({"q": [[{"url": "https://page"}]]})
    with pytest.raises(PipelineError, match="no results"):
        search_with_backoff(fake, "q", retries=1, backoff_s=0, sleep=lambda s: None)
    assert len(fake.calls) == 2


# ---------------------------------------------------------------- search_dataset


def test_search_dataset_rows() -> None:
    fake = FakeSearch()
    rows = search_dataset(CLASSES, fake, CFG, sleep=lambda s: None)
    assert fake.calls == ["India Gate", "Arc de Triomphe"]
    assert len(rows) == 2 * CFG["max_results"]  # 4 results each, truncated to 3
    for cls, query in CLASSES.items():
        mine = [r for r in rows if r["class"] == cls]
        assert [r["rank"] for r in mine] == [1, 2, 3]
        assert [r["url"] for r in mine] == [r["image"] for r in results(query)[:3]]
        assert [r["source"] for r in mine] == [r["url"] for r in results(query)[:3]]
        assert all(r["query"] == query and r["engine"] == "ddgs" and r["time"] for r in mine)
        assert all(set(r) == set(MANIFEST_FIELDS) for r in mine)


def test_search_dataset_keeps_and_reuses_partial_results() -> None:
    found: dict[str, list[dict[str, Any]]] = {}
    failing = FakeSearch({"Arc de Triomphe": [[]]})
    with pytest.raises(PipelineError, match="Arc de Triomphe"):
        search_dataset(CLASSES, failing, CFG, found, sleep=lambda s: None)
    assert list(found) == ["india_gate"]
    assert len(found["india_gate"]) == 3
    kept = [dict(r) for r in found["india_gate"]]

    working = FakeSearch()
    rows = search_dataset(CLASSES, working, CFG, found, sleep=lambda s: None)
    assert working.calls == ["Arc de Triomphe"]  # india_gate came from `found`
    assert rows[:3] == kept
    assert [r["class"] for r in rows] == ["india_gate"] * 3 + ["arc_de_triomphe"] * 3


# ---------------------------------------------------------------- main


@pytest.fixture
def workspace(tmp_path: Path, params: dict, monkeypatch) -> Path:
    """A tmp dir with params.yaml (engine ddgs, no real waiting) as the current directory."""
    params["search"].update(engine="ddgs", retries=1, backoff_s=0.0, max_results=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    return tmp_path


ARGV = ["--dataset", "monuments", "--url-list", "urls/monuments.csv", "--out", "manifests/monuments.csv"]


def test_main_writes_the_manifest(workspace: Path, params: dict) -> None:
    fake = FakeSearch()
    main(ARGV, search=fake)
    queries = list(params["datasets"]["monuments"]["classes"].values())
    assert fake.calls == queries
    rows = read_manifest(workspace / "manifests/monuments.csv")
    assert (workspace / "manifests/monuments.csv").read_text().splitlines()[0] == ",".join(MANIFEST_FIELDS)
    assert [(r["class"], r["rank"]) for r in rows] == [(c, str(i)) for c in params["datasets"]["monuments"]["classes"]
                                                       for i in (1, 2, 3)]
    assert not (workspace / "manifests/.monuments.csv.partial").exists()


def test_main_resumes_from_the_partial_file(workspace: Path, params: dict) -> None:
    first, second = params["datasets"]["monuments"]["classes"].items()
    out = workspace / "manifests/monuments.csv"
    partial = workspace / "manifests/.monuments.csv.partial"

    with pytest.raises(PipelineError, match=second[1]):
        main(ARGV, search=FakeSearch({second[1]: [RuntimeError("rate limited")]}))
    assert not out.exists()
    kept = read_manifest(partial)
    assert [r["class"] for r in kept] == [first[0]] * 3

    working = FakeSearch()
    main(ARGV, search=working)
    assert working.calls == [second[1]]  # only the missing class is searched again
    rows = read_manifest(out)
    assert rows[:3] == kept  # the first class's rows as found the first time (same times)
    assert [r["class"] for r in rows[3:]] == [second[0]] * 3
    assert not partial.exists()


def test_main_searches_again_when_a_query_changed(workspace: Path, params: dict) -> None:
    first, second = params["datasets"]["monuments"]["classes"].items()
    with pytest.raises(PipelineError):
        main(ARGV, search=FakeSearch({second[1]: [[]]}))
    params["datasets"]["monuments"]["classes"][first[0]] = "India Gate New Delhi"
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fake = FakeSearch()
    main(ARGV, search=fake)
    assert fake.calls == ["India Gate New Delhi", second[1]]


# ---------------------------------------------------------------- read_url_list


def test_read_url_list(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("class,url,source\n"
                    "india_gate,https://a.example/1.jpg,https://page.example/1\n"
                    "arc_de_triomphe, https://b.example/1.jpg \n"
                    "india_gate,https://a.example/2.jpg,\n")
    rows = read_url_list(path, CLASSES)
    assert [(r["class"], r["rank"], r["url"]) for r in rows] == [
        ("india_gate", 1, "https://a.example/1.jpg"),
        ("arc_de_triomphe", 1, "https://b.example/1.jpg"),
        ("india_gate", 2, "https://a.example/2.jpg"),
    ]
    assert rows[0]["query"] == "India Gate" and rows[0]["source"] == "https://page.example/1"
    assert all(r["engine"] == "file" and set(r) == set(MANIFEST_FIELDS) for r in rows)


def test_read_url_list_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("class,url\r\nindia_gate,https://a/1.jpg\r\narc_de_triomphe,https://b/1.jpg\r\n",
                    encoding="utf-8-sig")
    assert [r["class"] for r in read_url_list(path, CLASSES)] == ["india_gate", "arc_de_triomphe"]


@pytest.mark.parametrize("text, pattern", [
    ("class,url\nindia_gate,https://a/1.jpg\n\ntaj_mahal,https://t/1.jpg\narc_de_triomphe,https://b/1.jpg\n",
     r"line 4: class 'taj_mahal' is not in this dataset's classes"),
    ("name,link\nindia_gate,https://a/1.jpg\n", "needs a header with the columns class,url"),
    ("class\nindia_gate\n", "needs a header with the columns class,url"),
    ("class,url\nindia_gate,https://a/1.jpg\nindia_gate,https://a/2.jpg\n", "no URLs for class.*arc_de_triomphe"),
    ("class,url\nindia_gate,https://a/1.jpg\narc_de_triomphe\n", r"line 3: class 'arc_de_triomphe' has no URL"),
])
def test_read_url_list_errors(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "list.csv"
    path.write_text(text)
    with pytest.raises(PipelineError, match=pattern):
        read_url_list(path, CLASSES)


def test_read_url_list_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="not found"):
        read_url_list(tmp_path / "nope.csv", CLASSES)


def test_no_network_is_not_blamed_on_rate_limiting():
    from imgclf.common import PipelineError
    from imgclf.sources.search import search_with_backoff

    def offline(query):
        raise ConnectionError("[Errno -2] Name or service not known: duckduckgo.com")

    with pytest.raises(PipelineError) as err:
        search_with_backoff(offline, "Big Ben", retries=1, backoff_s=0.0, sleep=lambda s: None)
    assert "could not reach the search service" in str(err.value) and "Check the network" in str(err.value)
    assert "rate-limiting" not in str(err.value)


def test_ddgs_search_passes_the_params_to_ddgs(monkeypatch, params):
    import ddgs

    from imgclf.sources.search import ddgs_search

    calls = []

    class FakeDDGS:
        def images(self, query, **kwargs):
            calls.append((query, kwargs))
            return [{"image": "https://example.org/a.jpg", "url": "https://example.org/", "width": 10, "height": 8}]

    monkeypatch.setattr(ddgs, "DDGS", FakeDDGS)
    cfg = {**params["search"], "license": "Public", "max_results": 7}
    assert ddgs_search(cfg)("India Gate")[0]["image"] == "https://example.org/a.jpg"
    assert calls == [("India Gate", {"region": "wt-wt", "safesearch": "moderate", "license_image": "Public",
                                     "max_results": 7})]
