"""stages.search: backoff, pages, partial results, the manifest CLI and URL lists with fake search functions;
then ddgs's own code (request building, paging, parsing) over a fake of its HTTP transport, primp.Client."""

from __future__ import annotations

import hashlib
import html
import inspect
import json
import logging
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from imgclf.common import PipelineError
from imgclf.sources.manifest import MANIFEST_FIELDS, read_manifest
from imgclf.sources.search import (
    ddgs_search,
    ignored_filters,
    read_url_list,
    search_dataset,
    search_query,
    search_with_backoff,
)
from stages.search import main

CLASSES = {"india_gate": "India Gate", "arc_de_triomphe": "Arc de Triomphe"}
CFG = {
    "backend": "duckduckgo",
    "region": "wt-wt",
    "safesearch": "moderate",
    "license": None,
    "retries": 2,
    "backoff_s": 1.0,
    "max_results": 3,
}
DDG = ["duckduckgo"]


def results(query: str, n: int = 4, first: int = 1) -> list[dict[str, Any]]:
    """What DDGS().images returns, trimmed to the keys the stage reads."""
    slug = query.lower().replace(" ", "-")
    return [
        {
            "image": f"https://img.example/{slug}/{i}.jpg",
            "url": f"https://page.example/{slug}/{i}",
            "width": 640,
            "height": 480,
        }
        for i in range(first, first + n)
    ]


class FakeSearch:
    """Records every call. Page 1 of `query` comes from `plan[query]`, a list consumed one call at a time whose
    items are a result list or an exception to raise (the last item repeats); page p > 1 from
    `pages[query][p]`, else empty (the engine has no more)."""

    def __init__(
        self, plan: dict[str, list[Any]] | None = None, pages: dict[str, dict[int, list[dict[str, Any]]]] | None = None
    ):
        self.plan, self.pages = plan or {}, pages or {}
        self.calls: list[str] = []  # queries of first-page calls
        self.requests: list[tuple[str, str, int]] = []  # every (query, backend, page)

    def __call__(self, query: str, backend: str, page: int) -> list[dict[str, Any]]:
        self.requests.append((query, backend, page))
        if page > 1:
            return self.pages.get(query, {}).get(page, [])
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
    assert search_with_backoff(fake, "q", DDG, 1, retries=4, backoff_s=2.0, sleep=waits.append) == (
        "duckduckgo",
        results("q"),
    )
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
        search_with_backoff(fake, "Big Ben London", DDG, 1, retries=retries, backoff_s=0.5, sleep=waits.append)
    msg = str(err.value)
    assert "'Big Ben London'" in msg
    assert "rate-limit" in msg.lower() or "rate limit" in msg.lower()
    assert f"after {retries + 1} attempts" in msg
    assert len(fake.calls) == retries + 1
    assert len(waits) == retries  # no pointless wait after the last attempt


def test_backoff_reports_the_last_error() -> None:
    fake = FakeSearch({"q": [ConnectionError("dns failed")]})
    with pytest.raises(PipelineError, match="ConnectionError: dns failed"):
        search_with_backoff(fake, "q", DDG, 1, retries=1, backoff_s=0.0, sleep=lambda s: None)


def test_results_without_an_image_are_dropped() -> None:
    mixed = [{"image": "https://a/1.jpg"}, {"url": "https://page"}, {"image": ""}, {"image": "https://a/2.jpg"}]
    fake = FakeSearch({"q": [mixed]})
    assert search_with_backoff(fake, "q", DDG, 1, retries=0, backoff_s=0, sleep=lambda s: None)[1] == [
        mixed[0],
        mixed[3],
    ]
    # Only image-less results count as no answer: retried, then reported.
    fake = FakeSearch({"q": [[{"url": "https://page"}]]})
    with pytest.raises(PipelineError, match="no results"):
        search_with_backoff(fake, "q", DDG, 1, retries=1, backoff_s=0, sleep=lambda s: None)
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
        assert all(
            r["query"] == query and r["engine"] == "ddgs" and r["backend"] == "duckduckgo" and r["time"] for r in mine
        )
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
    params["search"].update(engine="ddgs", backend="duckduckgo", retries=1, backoff_s=0.0, max_results=3)
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
    assert [(r["class"], r["rank"]) for r in rows] == [
        (c, str(i)) for c in params["datasets"]["monuments"]["classes"] for i in (1, 2, 3)
    ]
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
    path.write_text(
        "class,url,source\n"
        "india_gate,https://a.example/1.jpg,https://page.example/1\n"
        "arc_de_triomphe, https://b.example/1.jpg \n"
        "india_gate,https://a.example/2.jpg,\n"
    )
    rows = read_url_list(path, CLASSES)
    assert [(r["class"], r["rank"], r["url"]) for r in rows] == [
        ("india_gate", 1, "https://a.example/1.jpg"),
        ("arc_de_triomphe", 1, "https://b.example/1.jpg"),
        ("india_gate", 2, "https://a.example/2.jpg"),
    ]
    assert rows[0]["query"] == "India Gate" and rows[0]["source"] == "https://page.example/1"
    assert all(r["engine"] == "file" and r["backend"] == "" and set(r) == set(MANIFEST_FIELDS) for r in rows)


def test_read_url_list_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        "class,url\r\nindia_gate,https://a/1.jpg\r\narc_de_triomphe,https://b/1.jpg\r\n", encoding="utf-8-sig"
    )
    assert [r["class"] for r in read_url_list(path, CLASSES)] == ["india_gate", "arc_de_triomphe"]


@pytest.mark.parametrize(
    "text, pattern",
    [
        (
            "class,url\nindia_gate,https://a/1.jpg\n\ntaj_mahal,https://t/1.jpg\narc_de_triomphe,https://b/1.jpg\n",
            r"line 4: class 'taj_mahal' is not in this dataset's classes",
        ),
        ("name,link\nindia_gate,https://a/1.jpg\n", "needs a header with the columns class,url"),
        ("class\nindia_gate\n", "needs a header with the columns class,url"),
        ("class,url\nindia_gate,https://a/1.jpg\nindia_gate,https://a/2.jpg\n", "no URLs for class.*arc_de_triomphe"),
        ("class,url\nindia_gate,https://a/1.jpg\narc_de_triomphe\n", r"line 3: class 'arc_de_triomphe' has no URL"),
    ],
)
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

    def offline(query, backend, page):
        raise ConnectionError("[Errno -2] Name or service not known: duckduckgo.com")

    with pytest.raises(PipelineError) as err:
        search_with_backoff(offline, "Big Ben", DDG, 1, retries=1, backoff_s=0.0, sleep=lambda s: None)
    assert "could not reach the search service" in str(err.value) and "Check the network" in str(err.value)
    assert "rate-limiting" not in str(err.value)


def test_a_url_list_keeps_its_backend_column(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"  # e.g. a committed manifest reused as a frozen URL list
    path.write_text("class,url,backend\nindia_gate,https://a/1.jpg,bing\narc_de_triomphe,https://b/1.jpg,\n")
    assert [r["backend"] for r in read_url_list(path, CLASSES)] == ["bing", ""]


# ---------------------------------------------------------------- pages and backends


def test_pages_are_fetched_until_max_results_without_repeats() -> None:
    q = "India Gate"
    # page 2 repeats two URLs of page 1: they are not counted twice
    fake = FakeSearch({q: [results(q, 4)]}, {q: {2: results(q, 4, first=3), 3: results(q, 4, first=7)}})
    backend, found = search_query(fake, q, {**CFG, "max_results": 9}, sleep=lambda s: None)
    assert backend == "duckduckgo"
    assert [r["image"] for r in found] == [r["image"] for r in results(q, 9)]
    assert fake.requests == [(q, "duckduckgo", 1), (q, "duckduckgo", 2), (q, "duckduckgo", 3)]


def test_paging_stops_when_the_engine_only_repeats_itself(caplog) -> None:
    q = "India Gate"
    fake = FakeSearch({q: [results(q, 4)]}, {q: {2: results(q, 4), 3: results(q, 4, first=5)}})
    with caplog.at_level(logging.WARNING):
        _, found = search_query(fake, q, {**CFG, "max_results": 10}, sleep=lambda s: None)
    assert len(found) == 4 and len(fake.requests) == 2  # page 3 is never asked for
    assert "duckduckgo had no more results after page 1: 4 of search.max_results 10" in caplog.text


def test_auto_keeps_a_query_on_the_engine_that_answered_its_first_page(monkeypatch) -> None:
    q = "India Gate"

    class OnlyBing(FakeSearch):
        def __call__(self, query: str, backend: str, page: int) -> list[dict[str, Any]]:
            answer = super().__call__(query, backend, page)
            return answer if backend == "bing" else []

    for order in (["duckduckgo", "bing"], ["bing", "duckduckgo"]):
        monkeypatch.setattr("imgclf.sources.search.random.sample", lambda seq, k, order=order: list(order))
        fake = OnlyBing({q: [results(q, 2)]}, {q: {2: results(q, 2, first=3)}})
        backend, found = search_query(fake, q, {**CFG, "backend": "auto", "max_results": 4}, sleep=lambda s: None)
        assert backend == "bing" and len(found) == 4
        assert [b for _, b, page in fake.requests if page > 1] == ["bing"]


def test_filters_a_backend_ignores() -> None:
    assert ignored_filters(CFG, "duckduckgo") == []
    assert ignored_filters(CFG, "bing") == ["search.safesearch (moderate)"]  # wt-wt and no licence: not set
    cfg = {**CFG, "region": "fr-fr", "safesearch": "off", "license": "Public"}
    assert ignored_filters(cfg, "bing") == [
        "search.region (fr-fr)",
        "search.safesearch (off)",
        "search.license (Public)",
    ]


def test_main_does_not_reuse_partial_rows_of_another_backend(workspace: Path, params: dict) -> None:
    first, second = params["datasets"]["monuments"]["classes"].items()
    with pytest.raises(PipelineError):
        main(ARGV, search=FakeSearch({second[1]: [[]]}))  # first class found by duckduckgo, then a failure
    params["search"]["backend"] = "bing"
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fake = FakeSearch()
    main(ARGV, search=fake)
    assert fake.calls == [first[1], second[1]]
    assert {r["backend"] for r in read_manifest(workspace / "manifests/monuments.csv")} == {"bing"}


# ---------------------------------------------------------------- ddgs's own code over a fake transport
# ddgs 9.16.1 sends every request through primp.Client (ddgs/http_client.py). The fake below replaces only that
# class: ddgs builds the requests and parses the answers itself, from bodies shaped as the engines return them
# (tests/fixtures/ddgs, hand-written from ddgs's parsing code: nothing could be recorded without the network).

FIXTURES = Path(__file__).parent / "fixtures" / "ddgs"
DDG_HOME, DDG_IMAGES = "https://duckduckgo.com", "https://duckduckgo.com/i.js"
BING_IMAGES = "https://www.bing.com/images/async"


def _fill(value: Any, **fields: Any) -> Any:
    """`value` (a JSON document) with $placeholders in its strings filled in."""
    if isinstance(value, dict):
        return {_fill(k, **fields): _fill(v, **fields) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, **fields) for v in value]
    return Template(value).substitute(fields) if isinstance(value, str) else value


class FakeResponse:
    """What ddgs reads of a primp.Response."""

    def __init__(self, status_code: int, content: bytes):
        self.status_code, self.content, self.text = status_code, content, content.decode()


class FakeWeb:
    """DuckDuckGo and Bing image search as ddgs sees them: every query has `total` results on each engine.
    Records every request as (method, url, params); the URLs in `blocked` answer 403, as a block does."""

    def __init__(self, total: int = 250):
        self.total, self.blocked = total, set()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.ddg_page = json.loads((FIXTURES / "duckduckgo_i.js.json").read_text())
        del self.ddg_page["_fixture"]

    def client_class(self) -> type:
        """A stand-in for primp.Client whose calls are checked against the installed primp's own signatures."""
        import primp

        real, web = primp.Client, self

        class Client:
            def __init__(self, *args: Any, **kwargs: Any):
                inspect.signature(real).bind(*args, **kwargs)

            def headers_update(self, *args: Any, **kwargs: Any) -> None:
                inspect.signature(real.headers_update).bind(self, *args, **kwargs)

            def request(self, *args: Any, **kwargs: Any) -> FakeResponse:
                call = inspect.signature(real.request).bind(self, *args, **kwargs).arguments
                return web.answer(call["method"], call["url"], dict(call.get("params") or {}))

        return Client

    def answer(self, method: str, url: str, params: dict[str, str]) -> FakeResponse:
        self.requests.append((method, url, params))
        if url in self.blocked:
            return FakeResponse(403, b"")
        if (method, url) == ("GET", DDG_HOME):
            home = Template((FIXTURES / "duckduckgo_home.html").read_text())
            page = home.substitute(query=html.escape(params["q"]), vqd=self.vqd(params["q"]))
            return FakeResponse(200, page.encode())
        if (method, url) == ("GET", DDG_IMAGES) and params.get("vqd") == self.vqd(params["q"]):
            start = int(params.get("s", 0))  # DuckDuckGo pages hold 100 results
            page = {**self.ddg_page, "results": self.items(params["q"], start + 1, start + 100, self.ddg_item)}
            return FakeResponse(200, json.dumps(_fill(page, **self.fields(params["q"], 0))).encode())
        if (method, url) == ("GET", BING_IMAGES):
            first, count = int(params["first"]), int(params["count"])
            items = self.items(params["q"], first, first + count - 1, self.bing_item)
            page = Template((FIXTURES / "bing_async_page.html").read_text()).substitute(items="\n".join(items))
            return FakeResponse(200, page.encode())
        return FakeResponse(403 if url == DDG_IMAGES else 404, b"")  # DuckDuckGo refuses a wrong vqd

    @staticmethod
    def vqd(query: str) -> str:
        return "4-" + str(int(hashlib.md5(query.encode()).hexdigest(), 16))[:38]

    @staticmethod
    def fields(query: str, n: int) -> dict[str, Any]:
        return {"query": query, "slug": query.lower().replace(" ", "-"), "n": n, "vqd": FakeWeb.vqd(query)}

    def items(self, query: str, first: int, last: int, make) -> list[Any]:
        return [make(query, n) for n in range(first, min(last, self.total) + 1)]

    def ddg_item(self, query: str, n: int) -> dict[str, Any]:
        return _fill(self.ddg_page["results"][0], **self.fields(query, n))

    def bing_item(self, query: str, n: int) -> str:
        text = Template((FIXTURES / "bing_async_item.html").read_text())
        return text.substitute({**self.fields(query, n), "query": html.escape(query)})

    def sent(self, url: str, query: str | None = None) -> list[dict[str, str]]:
        """Params of the requests to `url` (for `query`), in order."""
        return [p for _, u, p in self.requests if u == url and (query is None or p.get("q") == query)]


@pytest.fixture
def web(monkeypatch) -> FakeWeb:
    import primp

    fake = FakeWeb()
    monkeypatch.setattr(primp, "Client", fake.client_class())
    return fake


def test_duckduckgo_manifest_holds_max_results_per_class(web: FakeWeb, workspace: Path, params: dict) -> None:
    params["search"].update(backend="duckduckgo", max_results=150, region="fr-fr", safesearch="moderate")
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    main(ARGV)  # the real ddgs_search
    rows = read_manifest(workspace / "manifests/monuments.csv")
    for cls, query in params["datasets"]["monuments"]["classes"].items():
        mine = [r for r in rows if r["class"] == cls]
        slug = query.lower().replace(" ", "-")
        assert [r["rank"] for r in mine] == [str(i) for i in range(1, 151)]
        assert [r["url"] for r in mine] == [f"https://images.example/{slug}/{n}.jpg" for n in range(1, 151)]
        assert mine[0]["source"] == f"https://pages.example/{slug}/1"
        assert (mine[0]["width"], mine[0]["height"]) == ("1620", "1080")
        assert {(r["query"], r["engine"], r["backend"]) for r in mine} == {(query, "ddgs", "duckduckgo")}
        # two pages, each after its own vqd token: offsets 0 (no `s`) and 100
        assert web.sent(DDG_HOME, query) == [{"q": query}, {"q": query}]
        sent = web.sent(DDG_IMAGES, query)
        assert [p.get("s") for p in sent] == [None, "100"]
        assert all(p["l"] == "fr-fr" and p["p"] == "1" and p["o"] == "json" and "f" not in p for p in sent)
    assert not web.sent(BING_IMAGES)


def test_duckduckgo_pages_until_the_engine_has_no_more(web: FakeWeb, caplog) -> None:
    web.total = 130
    cfg = {**CFG, "max_results": 150}
    with caplog.at_level(logging.WARNING):
        backend, found = search_query(ddgs_search(cfg), "India Gate", cfg, sleep=lambda s: None)
    assert (backend, len(found)) == ("duckduckgo", 130)
    assert [p.get("s") for p in web.sent(DDG_IMAGES)] == [None, "100", "200"]  # page 3 was empty
    assert "had no more results after page 2: 130 of search.max_results 150" in caplog.text


@pytest.mark.parametrize("safesearch, p", [("on", "1"), ("moderate", "1"), ("off", "-1")])
@pytest.mark.parametrize("license, f", [(None, None), ("Public", ",,,,,license:Public")])
def test_duckduckgo_sends_the_filters(
    web: FakeWeb, safesearch: str, p: str, license: str | None, f: str | None
) -> None:
    cfg = {**CFG, "region": "de-de", "safesearch": safesearch, "license": license}
    assert len(ddgs_search(cfg)("Big Ben London", "duckduckgo", 1)) == 100
    [sent] = web.sent(DDG_IMAGES)
    assert (sent["q"], sent["l"], sent["p"], sent.get("f")) == ("Big Ben London", "de-de", p, f)


def test_bing_pages_by_35_and_warns_about_the_filters_it_ignores(web: FakeWeb, caplog) -> None:
    cfg = {**CFG, "backend": "bing", "max_results": 80, "region": "fr-fr", "license": "Public"}
    with caplog.at_level(logging.WARNING):
        rows = search_dataset({"arc": "Arc de Triomphe"}, ddgs_search(cfg), cfg, sleep=lambda s: None)
    assert len(rows) == 80 and {r["backend"] for r in rows} == {"bing"}
    assert rows[-1]["url"] == "https://images.example/arc-de-triomphe/80.jpg"
    assert (rows[0]["source"], rows[0]["width"], rows[0]["height"]) == (
        "https://pages.example/arc-de-triomphe/1",
        "1620",
        "1080",
    )
    sent = web.sent(BING_IMAGES)
    assert [(p["first"], p["count"]) for p in sent] == [("1", "35"), ("36", "35"), ("71", "35")]
    assert all(set(p) == {"q", "async", "first", "count"} for p in sent)  # no region, safesearch or licence
    assert not web.sent(DDG_IMAGES)
    assert (
        "search.backend bing ignores search.region (fr-fr), search.safesearch (moderate), search.license (Public)"
    ) in caplog.text


# A block of the search itself makes ddgs say "No results found."; a block of the vqd page makes it raise.
@pytest.mark.parametrize("blocked", [DDG_IMAGES, DDG_HOME])
def test_a_blocked_duckduckgo_is_retried_then_reported_as_rate_limiting(web: FakeWeb, blocked: str) -> None:
    web.blocked.add(blocked)
    waits: list[float] = []
    with pytest.raises(PipelineError, match="found nothing after 3 attempts.*rate-limiting"):
        search_dataset({"big_ben": "Big Ben London"}, ddgs_search(CFG), CFG, sleep=waits.append)
    assert len(waits) == 2
    assert len([u for _, u, _ in web.requests if u == blocked]) == 3


@pytest.mark.parametrize("answered, blocked", [("bing", {DDG_HOME, DDG_IMAGES}), ("duckduckgo", {BING_IMAGES})])
@pytest.mark.parametrize("order", [["duckduckgo", "bing"], ["bing", "duckduckgo"]])
def test_auto_records_the_engine_that_answered(
    web: FakeWeb, monkeypatch, answered: str, blocked: set[str], order: list[str]
) -> None:
    monkeypatch.setattr("imgclf.sources.search.random.sample", lambda seq, k: list(order))
    web.blocked |= blocked
    cfg = {**CFG, "backend": "auto", "max_results": 120}
    rows = search_dataset({"arc": "Arc de Triomphe"}, ddgs_search(cfg), cfg, sleep=lambda s: None)
    assert len(rows) == 120 and {r["backend"] for r in rows} == {answered}
    # The first engine in `order` is asked first; once one has answered page 1, later pages go to it alone.
    hosts = [urlsplit(u).hostname for _, u, _ in web.requests]
    assert hosts[0] == urlsplit(DDG_HOME if order[0] == "duckduckgo" else BING_IMAGES).hostname
    url = DDG_IMAGES if answered == "duckduckgo" else BING_IMAGES
    first = next(i for i, (_, u, _) in enumerate(web.requests) if u == url and u not in web.blocked)
    assert {urlsplit(u).hostname for _, u, _ in web.requests[first:]} == {urlsplit(url).hostname}
    assert len(web.sent(url)) == {"duckduckgo": 2, "bing": 4}[answered]  # pages of 100 and of 35
