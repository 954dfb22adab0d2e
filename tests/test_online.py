"""The real services, which the rest of the suite fakes: DuckDuckGo image search (through ddgs), the Hugging
Face hub, and the Pets tarball on S3. Run them with `pytest -m online`; the default run leaves them out
(tests/conftest.py), and each one is skipped, saying why, when its host can't be reached within 2 s."""

from __future__ import annotations

import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.online


def reachable_or_skip(host: str, port: int = 443, timeout_s: float = 2.0) -> None:
    """Skip the test unless a TCP connection to host:port (DNS included) opens within `timeout_s`."""
    outcome: list[str] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append("ok")
        except OSError as e:
            outcome.append(f"{type(e).__name__}: {e}")

    # A thread, because a DNS lookup ignores socket timeouts; daemon, so a hung lookup can't hold up pytest.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if outcome != ["ok"]:
        reason = outcome[0] if outcome else f"no answer in {timeout_s:g} s"
        pytest.skip(f"offline: cannot reach {host}:{port} ({reason})")


def test_real_image_search_finds_50_results_with_the_filters_sent(params: dict, monkeypatch) -> None:
    reachable_or_skip("duckduckgo.com")
    import primp

    from imgclf.sources.search import ddgs_search, search_query

    sent: list[tuple[str, dict[str, Any]]] = []
    real = primp.Client

    class Spy:
        """primp.Client as it is, noting each request's URL and params."""

        def __init__(self, *args: Any, **kwargs: Any):
            self._client = real(*args, **kwargs)

        def headers_update(self, headers: Any) -> None:
            self._client.headers_update(headers)

        def request(self, method: str, url: str, **kwargs: Any) -> Any:
            sent.append((url, dict(kwargs.get("params") or {})))
            return self._client.request(method, url, **kwargs)

    monkeypatch.setattr(primp, "Client", Spy)
    cfg = {**params["search"], "backend": "duckduckgo", "region": "fr-fr", "safesearch": "on", "max_results": 50}
    backend, found = search_query(ddgs_search(cfg), "Arc de Triomphe", cfg)
    assert backend == "duckduckgo"
    assert len(found) >= 50 and all(r["image"].startswith("http") for r in found)
    searches = [p for url, p in sent if url == "https://duckduckgo.com/i.js"]
    assert searches and all(p["l"] == "fr-fr" and p["p"] == "1" for p in searches)


def test_real_hub_weights_train_one_batch(params: dict, monkeypatch, tmp_path: Path) -> None:
    reachable_or_skip("huggingface.co")
    from huggingface_hub import constants

    from demo.synthetic import draw
    from imgclf.training.learner import train_model

    # tests/conftest.py sets HF_HUB_OFFLINE=1 for the whole session; an empty cache makes this a real download
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    files, labels = [], []
    for i, cls in enumerate(["circle", "square"]):
        for n in range(6):
            path = tmp_path / f"{cls}{n}.jpg"
            draw(f"{cls}/{n}", i, size=(64, 64)).save(path)
            files.append(path)
            labels.append(cls)
    # 12 images, 2 held out with seed 42 (circle5, square4): 10 to train on, one batch of 8 per epoch (fastai
    # drops the last partial training batch); fine_tune runs 1 frozen + 1 unfrozen epoch
    train = {
        **params["train"],
        "batch_size": 8,
        "img_size": 64,
        "pretrained": True,
        "weights": None,
        "precision": "fp32",
    }
    base = {**params["base"], "seed": 42, "threads": 2}
    runtime = {**params["runtime"], "num_workers": 0, "resume": False}
    metrics = train_model(
        "resnet18", files, labels, epochs=1, train=train, base=base, runtime=runtime, out_dir=tmp_path / "out"
    )
    weights = list((tmp_path / "hub").rglob("*.safetensors"))
    assert weights and weights[0].stat().st_size > 40e6  # resnet18: 11.7 M float32 parameters
    assert (metrics["n_train"], metrics["n_valid"]) == (10, 2)
    assert (tmp_path / "out/model.safetensors").stat().st_size > 40e6


def test_pets_url_answers_with_the_expected_size(params: dict) -> None:
    cfg = params["download_pets"]
    reachable_or_skip(urllib.request.urlparse(cfg["url"]).hostname)
    with urllib.request.urlopen(urllib.request.Request(cfg["url"], method="HEAD"), timeout=30) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == cfg["size"]
