"""Bounded disk: the hub weights a sweep entry downloads are deleted after it (unless runtime.keep_weights), and
weights cached before it stay. A loopback Hugging Face endpoint (HF_ENDPOINT) answers the hub's real requests,
so huggingface_hub's and timm's own download path runs, in a `python -m stages.sweep` subprocess."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import yaml

from demo.synthetic import draw
from tests.conftest import ROOT

REPO = "timm/test_resnet.r160_in1k"  # timm's pretrained_cfg hf_hub_id for test_resnet
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CACHE_FOLDER = "models--timm--test_resnet.r160_in1k"


@pytest.fixture(scope="module")
def weights() -> bytes:
    """test_resnet's weights as the hub serves them: a safetensors file of the 1,000-class model."""
    import timm
    import torch
    from safetensors.torch import save

    torch.manual_seed(5)
    model = timm.create_model("test_resnet", pretrained=False)
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


class Hub(http.server.BaseHTTPRequestHandler):
    """The hub's answers for one LFS file, as huggingface_hub's file_download.py reads them: HEAD/GET of
    `/<repo>/resolve/<revision>/<file>` redirect (302) to the file's storage on another origin (as the hub's CDN
    is: huggingface_hub follows redirects within the hub only), naming the commit (X-Repo-Commit), the file's
    sha256 (X-Linked-Etag) and size (X-Linked-Size); GET of the storage URL serves the bytes.
    POST `/api/models/<repo>/paths-info/<revision>` (HfApi.get_paths_info) lists the file with its size.
    Anything else (pytorch_model.bin, telemetry) is 404 with the hub's error code."""

    blob: bytes = b""
    storage: str = ""  # the storage server's origin
    requests: list[str] = []

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def _answer(self, body: bool) -> None:
        self.requests.append(f"{self.command} {self.path}")
        sha = hashlib.sha256(self.blob).hexdigest()
        if self.path.startswith(f"/{REPO}/resolve/") and self.path.endswith("/model.safetensors"):
            self.send_response(302)
            self.send_header("Location", f"{self.storage}/storage/{sha}")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(self.blob)))
            self.send_header("ETag", '"not-the-file-etag"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == f"/storage/{sha}":
            self.send_response(200)
            self.send_header("ETag", f'"{sha}"')
            self.send_header("Content-Length", str(len(self.blob)))
            self.end_headers()
            if body:
                self.wfile.write(self.blob)
        else:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_POST(self) -> None:
        self.requests.append(f"POST {self.path}")
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        if self.path != f"/api/models/{REPO}/paths-info/main":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        sha = hashlib.sha256(self.blob).hexdigest()
        lfs = {"oid": sha, "size": len(self.blob), "pointerSize": 134}
        body = json.dumps(
            [
                {"type": "file", "path": name, "size": len(self.blob), "oid": "b" * 40, "lfs": lfs}
                for name in form.get("paths", [])
                if name == "model.safetensors"
            ]
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def hub(weights):
    """A loopback hub serving test_resnet's weights; yields (endpoint URL, list of requests it answered)."""
    handler = type("TestHub", (Hub,), {"blob": weights, "requests": []})
    hub_server, storage_server = (http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2))
    handler.storage = f"http://127.0.0.1:{storage_server.server_address[1]}"
    for server in (hub_server, storage_server):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{hub_server.server_address[1]}", handler.requests
    for server in (hub_server, storage_server):
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder with a params.yaml for one tiny pretrained sweep entry and 3 classes x 8 generated images."""
    ws = tmp_path_factory.mktemp("ws")
    for i, cls in enumerate(["circle", "square", "triangle"]):
        (ws / "images" / cls).mkdir(parents=True)
        for n in range(8):
            draw(f"{cls}/{n}", i, size=(40, 40)).save(ws / "images" / cls / f"{cls}{n:02d}.jpg", quality=90)
    return ws


def run_entry(ws: Path, endpoint: str, cache: Path, keep_weights: bool, save_models: bool = True) -> dict:
    """`python -m stages.sweep` for test_resnet with pretrained hub weights, online against `endpoint`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(batch_size=8, img_size=32, pretrained=True, weights=None, lr=0.01)
    params["runtime"].update(keep_weights=keep_weights)
    params["base"].update(threads=2)
    params["runtime"].update(num_workers=0)
    params["sweep"].update(epochs=1, save_models=save_models)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(ws / "out", ignore_errors=True)  # as DVC deletes a stage's outputs before it runs
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PYTHONPATH": str(ROOT),
    }
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.sweep",
            "--arch",
            "test_resnet",
            "--data",
            "images",
            "--out",
            "out/model",
            "--record",
            "out/record.json",
            "--metrics",
            "out/metrics.json",
            "--curves",
            "out/live",
            "--confusion",
            "out/confusion.csv",
        ],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((ws / "out/record.json").read_text())
    assert record["status"] == "ok", record
    return record


def weight_files(root: Path) -> list[Path]:
    """Every file under `root` that holds weights (hub blobs are named by their hash, so look at the bytes)."""
    found = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            head, size = p.read_bytes()[:9], p.stat().st_size
            # safetensors: an 8-byte little-endian header length, then the JSON header
            safetensors = len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size
            if safetensors or p.suffix in (".safetensors", ".bin", ".pth"):
                found.append(p)
    return found


def test_downloaded_weights_are_deleted_after_the_entry(hub, workspace, tmp_path):
    endpoint, requests = hub
    cache = tmp_path / "hub"
    run_entry(workspace, endpoint, cache, keep_weights=False, save_models=False)
    assert any(r.startswith("GET /storage/") for r in requests), requests  # the hub's download path ran
    assert not (cache / CACHE_FOLDER).exists() and not (cache / ".locks" / CACHE_FOLDER).exists()
    # peak disk of the sweep is the data plus one model: nothing of this entry's weights is left anywhere
    assert weight_files(cache) == [] and weight_files(workspace / "out") == []


def test_keep_weights_keeps_them_and_weights_cached_before_survive(hub, workspace, weights, tmp_path):
    endpoint, requests = hub
    cache = tmp_path / "hub"
    run_entry(workspace, endpoint, cache, keep_weights=True)
    blob = cache / CACHE_FOLDER / "blobs" / hashlib.sha256(weights).hexdigest()
    snapshot = cache / CACHE_FOLDER / "snapshots" / COMMIT / "model.safetensors"
    assert blob.read_bytes() == weights and snapshot.resolve() == blob.resolve()
    assert weight_files(cache) == [blob]
    downloads = sum(r.startswith("GET /storage/") for r in requests)
    assert downloads == 1
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    # the user's cached weights: an entry with keep_weights false uses them and leaves them in place
    run_entry(workspace, endpoint, cache, keep_weights=False)
    assert sum(r.startswith("GET /storage/") for r in requests) == downloads  # served from the cache
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before
    assert blob.read_bytes() == weights


def test_only_what_the_entry_added_is_removed(tmp_path, monkeypatch):
    """A cache folder that held another revision before the entry keeps it; the new revision goes."""
    from huggingface_hub import constants

    from imgclf.training.hub import downloads_removed

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / CACHE_FOLDER
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "old").write_bytes(b"old weights")
    with downloads_removed("test_resnet", keep=False):
        (repo / "blobs" / "new").write_bytes(b"new weights")
        (repo / "snapshots" / COMMIT).mkdir(parents=True)
        (repo / "snapshots" / COMMIT / "model.safetensors").symlink_to(repo / "blobs" / "new")
        (tmp_path / "models--timm--other").mkdir()  # a parallel entry's download: not ours to delete
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == sorted(
        [CACHE_FOLDER, f"{CACHE_FOLDER}/blobs", f"{CACHE_FOLDER}/blobs/old", "models--timm--other"]
    )


def test_weights_size_from_the_hub_when_online_else_estimated(hub, weights, monkeypatch):
    from huggingface_hub import constants

    from imgclf.training.hub import weights_size

    endpoint, requests = hub
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert weights_size("test_resnet", 0.5, online=True) == (len(weights), False)
    assert any(r.startswith(f"POST /api/models/{REPO}/paths-info") for r in requests), requests
    assert weights_size("test_resnet", 0.5, online=False) == (2_000_000, True)  # 4 bytes per float32 parameter
    assert weights_size("test_convnext", 0.5, online=True) == (2_000_000, True)  # the hub has no such file
