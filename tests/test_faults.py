"""Surviving faults through the real `dvc repro` on a copy of the demo workspace: interrupted downloads and
training (SIGINT and SIGKILL), two `dvc repro` at once, bad params and bad data. Each test checks the message
a user sees AND that nothing was lost: files still there, hashes unchanged, nothing fetched twice."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from imgclf.sources.scrape import cache_name
from tests.conftest import run_dvc, stages_run

pytestmark = pytest.mark.slow

TARBALL = "oxford-iiit-pet.tgz"
# the stage has started and printed its first epoch row ("0  <train_loss> ..."), after the table's header line
FIRST_EPOCH = re.compile(r"Running stage 'sweep@test_resnet-42'.*^epoch .*^0 +\d", re.DOTALL | re.MULTILINE)
EPOCHS = 8  # test_resnet on the demo data: ~1 s an epoch (on 2 idle cores): time to kill it


# ----------------------------------------------------------------------------------------------- helpers


class Source(http.server.ThreadingHTTPServer):
    """The demo's loopback web (its `www/` folder) with a request log and per-path faults: `stall` paths send
    half their body and then hang until the server stops, `slow` paths wait `delay` seconds first, and
    `replace` serves other bytes for a path."""

    daemon_threads = True

    def __init__(self, www: Path, port: int):
        self.requests: list[str] = []
        self.stall: set[str] = set()
        self.slow: set[str] = set()
        self.delay = 0.0
        self.replace: dict[str, bytes] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), functools.partial(_Handler, directory=str(www)))

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a killed client: expected here
            super().handle_error(request, client_address)

    def count(self, path: str) -> int:
        """How many GETs asked for `path` so far."""
        with self.lock:
            return self.requests.count(path)


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: Source

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        src = self.server
        with src.lock:
            src.requests.append(path)
        if path in src.slow:
            time.sleep(src.delay)
        if path in src.replace or path in src.stall:
            body = src.replace.get(path) or Path(self.directory, path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if path in src.stall:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                src.stop.wait(120)  # the client sees a download that never finishes
                return
            self.wfile.write(body)
            return
        super().do_GET()


@pytest.fixture
def source(copy_workspace) -> Iterator[Source]:
    """The workspace copy's data sources, served on the port its params.yaml names."""
    ws, port = copy_workspace
    server = Source(ws / "www", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


def dvc_env() -> dict[str, str]:
    """The environment conftest.run_dvc uses, with unbuffered stage output (the tests watch the log)."""
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }


class Run:
    """`dvc <args>` started in the background in its own process group, output in a log file."""

    def __init__(self, ws: Path, *args: str):
        self.log = ws.parent / f"dvc-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dvc", *args],
                cwd=ws,
                env=dvc_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, condition: Callable[[], object], what: str, timeout: float = 90) -> None:
        """Poll `condition` until it holds; fail if the run ends first or `timeout` passes."""
        end = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"dvc ended (rc {self.proc.returncode}) before {what}:\n{self.output}")
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}:\n{self.output}")
            time.sleep(0.1)

    def kill(self, sig: int) -> int:
        """Send `sig` to dvc and the stage it runs (what Ctrl-C or the OOM killer does); return dvc's rc."""
        assert self.proc.poll() is None, f"dvc finished before it could be interrupted:\n{self.output}"
        os.killpg(self.proc.pid, sig)
        return self.proc.wait(timeout=60)

    def finish(self, timeout: float = 180) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Kill whatever is left of the run's process group: nothing outlives its test."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)


@pytest.fixture
def start() -> Iterator[Callable[..., Run]]:
    """start(ws, *args): `dvc <args>` in the background; stopped at the end of the test."""
    runs: list[Run] = []

    def _start(ws: Path, *args: str) -> Run:
        runs.append(Run(ws, *args))
        return runs[-1]

    yield _start
    for run in runs:
        run.stop()


def tree_hashes(ws: Path, *folders: str) -> dict[str, str]:
    """sha256 of every file under `folders` of `ws`, by path."""
    out = {}
    for folder in folders:
        for p in sorted((ws / folder).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(ws))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def dvc_changed(ws: Path, *targets: str) -> dict:
    """`dvc status --json` (empty when the targets are up to date)."""
    return json.loads(run_dvc(ws, "status", "--json", *targets).stdout or "{}")


def edit_params(ws: Path, edit: Callable[[dict], None]) -> None:
    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def parts(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.part")) if folder.is_dir() else []


# ------------------------------------------------------------------------------------- interrupted runs


def test_interrupted_download_is_redone_and_never_taken_as_done(copy_workspace, source, start):
    ws, _ = copy_workspace
    url = f"/{TARBALL}"
    tarball, images = ws / "downloads" / TARBALL, ws / "data/pets/images"
    before = tree_hashes(ws, "data/pets/images", "records/download_pets.json")
    tarball.unlink()  # a download from scratch (the next run would otherwise reuse the verified tarball)
    source.stall.add(url)

    for sig in (signal.SIGINT, signal.SIGKILL):
        run = start(ws, "repro", "-f", "-s", "download_pets")
        run.wait_until(lambda: parts(tarball.parent), "the download started")
        rc = run.kill(sig)
        assert rc != 0
        assert not tarball.exists(), "a half-downloaded tarball took the final name"
        assert not images.exists() and not (ws / "records/download_pets.json").exists()
        if sig == signal.SIGINT:
            assert "interrupted: nothing half-written was kept" in run.output
            assert not parts(tarball.parent), "Ctrl-C left the partial download behind"
        # dvc status tells the truth (after SIGKILL DVC drops the dead process from its rwlock by itself)
        status = run_dvc(ws, "status", "download_pets")
        assert "download_pets" in status.stdout and "deleted" in status.stdout
        assert "Data and pipelines are up to date" not in status.stdout

    source.stall.clear()
    res = run_dvc(ws, "repro", "download_pets")
    # DVC reruns the stage, or, where dvc.yaml makes it restorable, checks out what dvc.lock records
    restored = "Stage 'download_pets' is cached - skipping run, checking out outputs" in res.stdout
    assert stages_run(res.stdout) == ([] if restored else ["download_pets"])
    assert source.count(url) == (2 if restored else 3)  # a download after a kill starts again from zero
    assert tree_hashes(ws, "data/pets/images", "records/download_pets.json") == before
    assert dvc_changed(ws, "download_pets") == {}
    # a complete download after the killed ones: no partial file is left, and the next run reuses it
    run_dvc(ws, "repro", "-f", "-s", "download_pets")
    assert not parts(tarball.parent), "a killed run's partial download was left behind"
    assert (
        hashlib.sha256(tarball.read_bytes()).hexdigest()
        == yaml.safe_load((ws / "params.yaml").read_text())["download_pets"]["sha256"]
    )
    asked = source.count(url)
    run_dvc(ws, "repro", "-f", "-s", "download_pets")
    assert source.count(url) == asked
    assert tree_hashes(ws, "data/pets/images", "records/download_pets.json") == before


def test_interrupted_scrape_keeps_what_it_downloaded(copy_workspace, source, start):
    ws, _ = copy_workspace
    cache = ws / "downloads/monuments"
    before = tree_hashes(ws, "data/monuments", "records/scrape/monuments.json")
    shutil.rmtree(cache)  # every URL is fetched again, slowly, so the runs can be killed halfway
    urls = {r.split(",", 1)[1] for r in (ws / "urls/monuments.csv").read_text().splitlines()[1:]}
    path = {u: "/" + u.split("/", 3)[3] for u in urls}
    source.slow.update(path.values())
    source.delay = 0.4

    def done() -> set[str]:
        return {u for u in urls if (cache / cache_name(u)).is_file()}

    kept: set[str] = set()  # URLs whose download was complete when a run was killed
    for sig in (signal.SIGINT, signal.SIGKILL):
        if sig == signal.SIGKILL:  # two images hang halfway: the kill finds them half-written
            source.stall.update([path[u] for u in sorted(urls - kept) if re.search(r"/\d+\.jpg$", u)][:2])
        # -f -s: the whole scrape again; its downloads folder is not an output DVC deletes
        run = start(ws, "repro", "-f", "-s", "scrape@monuments")
        started = len(kept) + 8
        run.wait_until(
            lambda n=started, s=sig: len(done()) >= n and (s == signal.SIGINT or parts(cache)), "some downloads"
        )
        t0 = time.monotonic()
        assert run.kill(sig) != 0
        assert time.monotonic() - t0 < 20, "Ctrl-C did not stop the downloads promptly"
        assert not (ws / "data/monuments/images").exists()
        assert "scrape@monuments" in run_dvc(ws, "status", "scrape@monuments").stdout
        assert kept <= done(), "a killed run lost downloads that were complete"
        if sig == signal.SIGINT:
            assert "interrupted: nothing half-written was kept" in run.output
            assert not parts(cache) and len(done()) < len(urls) - 16, "Ctrl-C did not stop the queued downloads"
        else:
            assert parts(cache), "the test meant to kill downloads halfway"
        for p in parts(cache):  # what was half-written kept its temporary name
            assert not (cache / p.name.split(".")[1]).exists()
        kept = done()
        asked_before = Counter(source.requests)

    source.slow.clear()
    source.stall.clear()
    ran = stages_run(run_dvc(ws, "repro", "-f", "-s", "scrape@monuments").stdout)
    assert ran == ["scrape@monuments"]
    asked = Counter(source.requests) - asked_before
    assert not [u for u in kept if asked[path[u]]], "complete downloads were fetched again"
    assert not parts(cache), "a killed run's partial downloads were left behind"
    assert tree_hashes(ws, "data/monuments", "records/scrape/monuments.json") == before
    assert dvc_changed(ws, "scrape@monuments") == {}


def _load_weights(folder: Path) -> int:
    from safetensors.torch import load_file

    return len(load_file(str(folder / "model.safetensors")))


def test_interrupted_training_leaves_no_model_and_reruns(copy_workspace, start):
    ws, _ = copy_workspace
    out, metrics = ws / "models/sweep/test_resnet-42", ws / "records/sweep/test_resnet-42.json"
    edit_params(ws, lambda p: p["sweep"].update(epochs=EPOCHS))
    others = tree_hashes(ws, "data", "models/finetune", "models/sweep/test_vit-42", "records/finetune")

    for sig in (signal.SIGINT, signal.SIGKILL):
        run = start(ws, "repro", "sweep@test_resnet-42")
        run.wait_until(lambda r=run: FIRST_EPOCH.search(r.output), "the first epoch")
        assert run.kill(sig) != 0
        assert "Updating lock file" not in run.output.split("Running stage 'sweep@test_resnet-42'")[1]
        assert not (out / "model.safetensors").exists() and not metrics.exists()
        assert not list(out.rglob("*.part")), "a half-written weights file was left"
        status = run_dvc(ws, "status", "sweep@test_resnet-42").stdout
        assert (
            "sweep@test_resnet-42" in status and "deleted:" in status and "records/sweep/test_resnet-42.json" in status
        )

    ran = stages_run(run_dvc(ws, "repro", "sweep@test_resnet-42").stdout)
    assert ran == ["sweep@test_resnet-42"]
    assert json.loads(metrics.read_text())["epochs"] == EPOCHS and _load_weights(out) > 0
    assert dvc_changed(ws, "sweep@test_resnet-42") == {}
    assert tree_hashes(ws, "data", "models/finetune", "models/sweep/test_vit-42", "records/finetune") == others


def test_second_repro_fails_on_the_lock_and_the_first_finishes(copy_workspace, start):
    ws, _ = copy_workspace
    weights = ws / "models/sweep/test_resnet-42/model.safetensors"
    old = weights.stat().st_mtime_ns
    first = start(ws, "repro", "-f", "-s", "sweep@test_resnet-42")
    first.wait_until(lambda: "Running stage 'sweep@test_resnet-42'" in first.output, "training")
    second = run_dvc(ws, "repro", check=False)  # done before the first's stage has even imported torch
    assert first.proc.poll() is None, "the first run ended before the second one tried"
    assert second.returncode != 0
    assert "is busy, it is being blocked by:" in second.stderr
    assert f"(PID {first.proc.pid}):" in second.stderr and "repro -f -s sweep@test_resnet-42" in second.stderr
    assert stages_run(second.stdout) == []
    assert first.finish() == 0, first.output
    assert "Updating lock file 'dvc.lock'" in first.output
    assert weights.stat().st_mtime_ns != old and _load_weights(weights.parent) > 0
    assert json.loads((ws / "records/sweep/test_resnet-42.json").read_text())["status"] == "ok"
    assert dvc_changed(ws, "sweep@test_resnet-42") == {}


# ------------------------------------------------------------------------------------------- bad params


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda p: p["train"].update(batchsize=p["train"].pop("batch_size")),
            "unknown key `train.batchsize` (typo?). Known keys in `train`: valid_pct, batch_size",
        ),
        (lambda p: p["sweep"].update(epochs=-2), "`sweep.epochs` should be a whole number >= 1, got -2"),
        (
            lambda p: p["datasets"]["monuments"].update(classes={"india_gate": "India Gate"}),
            "`datasets.monuments.classes` should be at least two classes",
        ),
    ],
    ids=["typo", "negative-epochs", "single-class"],
)
def test_bad_params_stop_dvc_repro_before_any_work(copy_workspace, edit, message):
    ws, _ = copy_workspace
    folders = ("data", "models", "metrics", "records", "downloads", "manifests")
    before = tree_hashes(ws, *folders)
    lock = (ws / "dvc.lock").read_bytes()
    edit_params(ws, edit)
    res = run_dvc(ws, "repro", check=False)
    assert res.returncode != 0
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert stages_run(res.stdout) == ["check_params"]
    # nothing was touched, the check's own outputs included (persist: DVC does not remove them first), so a stage
    # looks changed only for the params it reads, never for a missing data/params.ok
    assert tree_hashes(ws, *folders) == before
    assert (ws / "dvc.lock").read_bytes() == lock
    changed = dvc_changed(ws)
    assert "check_params" in changed and "download_pets" not in changed
    assert all("params.ok" not in json.dumps(v) and "decode_size" not in json.dumps(v) for v in changed.values())


# --------------------------------------------------------------------------------------------- bad data


def test_tampered_tarball_fails_clearly_and_loses_nothing(copy_workspace, source):
    ws, _ = copy_workspace
    url = f"/{TARBALL}"
    tarball = ws / "downloads" / TARBALL
    before = tree_hashes(ws, "data/pets/images", "records/download_pets.json")
    good = tarball.read_bytes()
    tarball.unlink()
    bad = bytearray(good)
    bad[-1000] ^= 0xFF  # same size: only the pinned sha256 can tell (the demo tarball is under 1 MiB, so
    edit_params(ws, lambda p: p["download_pets"].update(md5_first_mb=None))  # md5_first_mb would cover it)
    source.replace[url] = bytes(bad)

    res = run_dvc(ws, "repro", "download_pets", check=False)
    assert res.returncode != 0
    assert (
        f"error: downloads/{TARBALL}: sha256 is {hashlib.sha256(bad).hexdigest()}, expected "
        f"{hashlib.sha256(good).hexdigest()} (download_pets.sha256). Delete it and rerun"
    ) in res.stderr
    assert "Traceback" not in res.stderr
    assert stages_run(res.stdout) == ["check_params", "download_pets"] and source.count(url) == 1
    # DVC removed the stage's outputs before running it but recorded nothing: dvc.lock still names the
    # previous images, `dvc status` says they are missing, and `dvc checkout` brings them back unchanged
    assert "download_pets" in dvc_changed(ws, "download_pets")
    assert not (ws / "data/pets/.images.tmp").exists()
    run_dvc(ws, "checkout", "data/pets/images")
    assert tree_hashes(ws, "data/pets/images") == {k: v for k, v in before.items() if k.startswith("data/")}
    # with the real tarball served again, the next run replaces the bad download and rebuilds the same images
    source.replace.clear()
    assert stages_run(run_dvc(ws, "repro", "download_pets").stdout) == ["download_pets"]
    assert source.count(url) == 2 and tarball.read_bytes() == good
    assert tree_hashes(ws, "data/pets/images", "records/download_pets.json") == before
    assert dvc_changed(ws, "download_pets") == {}


def test_class_with_no_images_names_the_class_and_keeps_downloads(copy_workspace, source):
    ws, port = copy_workspace
    cache = ws / "downloads/monuments"
    kept = tree_hashes(ws, "downloads/monuments")
    url_list = ws / "urls/monuments.csv"
    lines = url_list.read_text().splitlines()
    had = {line.split(",", 1)[1] for line in lines[1:] if (cache / cache_name(line.split(",", 1)[1])).is_file()}
    # every arc_de_triomphe link now 404s: the class would be left empty
    url_list.write_text("\n".join(line.replace("/arc_de_triomphe/", "/gone/") for line in lines) + "\n")

    res = run_dvc(ws, "repro", "scrape@monuments", check=False)
    assert res.returncode != 0
    assert "too few images for arc_de_triomphe (0): scrape.min_images is 8" in res.stderr
    assert "Downloads are kept, a rerun fetches only new URLs" in res.stderr
    assert "india_gate" not in res.stderr
    asked = {f"http://127.0.0.1:{port}{p}" for p in source.requests}
    assert sum("/gone/" in u for u in asked) == sum("/arc_de_triomphe/" in line for line in lines)
    assert not asked & had, "already-downloaded URLs were fetched again"
    assert tree_hashes(ws, "downloads/monuments").items() >= kept.items(), "downloads were lost"
    with open(ws / "data/monuments/report.csv") as f:  # written before the check: it says why
        statuses = {r["status"] for r in csv.DictReader(f) if r["class"] == "arc_de_triomphe"}
    assert statuses == {"http_404"}
    assert "scrape@monuments" in dvc_changed(ws, "scrape@monuments")
