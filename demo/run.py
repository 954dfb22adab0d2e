"""`make demo`: the real dvc.yaml stages, offline, on generated data, in a scratch DVC workspace.

    python -m demo.run [--dir .demo] [--port 8765] [--setup-only]

The workspace gets copies of dvc.yaml, stages/ and imgclf/, a params.yaml that is the project's with the demo
overrides below, a Pets-style tarball and web-style images served on 127.0.0.1, and URL lists pointing
there. Everything is deterministic, so a second run finds DVC up to date.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import functools
import http.server
import io
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

from demo.synthetic import pets_tarball, web_images

ROOT = Path(__file__).resolve().parents[1]
BANNER = (
    "DEMO RUN: the images are generated shapes served from 127.0.0.1, not Pets or web photos, and the "
    "models are NOT pretrained. The numbers show the pipeline works, not how good the models are."
)
PER_CLASS = {"monuments": 30, "five_class": 120}  # five_class: >= 100 validation images at valid_pct 0.2
# Images per class drawn as another class but listed under this one: the web's wrong images, for the review to
# find and the exclusion files to drop (README: "Cleaning a dataset").
WRONG = {"monuments": 3, "five_class": 8}


def demo_overrides(port: int, tarball: Path) -> dict[str, dict[str, Any]]:
    """Params that make the pipeline small, offline and honest: local sources, tiny models, no pretraining."""
    from imgclf.common import md5_first_mib, sha256_file

    return {
        "base": {"threads": 2},
        "runtime": {"num_workers": 0},
        "download_pets": {
            "url": f"http://127.0.0.1:{port}/oxford-iiit-pet.tgz",
            "size": tarball.stat().st_size,
            "md5_first_mb": md5_first_mib(tarball),
            "sha256": sha256_file(tarball),
            "image_size": 64,
            "allow_private": True,
        },
        "search": {"engine": "file"},
        "scrape": {
            "threads": 8,
            "deadline_s": 10,
            "allow_private": True,
            "image_size": 64,
            "min_side": 32,
            "min_images": 8,
        },
        # from scratch with fit_one_cycle: enough epochs at lr 0.01 for every tiny architecture to learn the
        # generated five classes, and for excluding the WRONG images to show in the accuracy (the figures:
        # docs/performance.md)
        "train": {"batch_size": 32, "img_size": 64, "lr": 0.01, "pretrained": False},
        # the web datasets' tasks (the models their reviews read) train a tiny architecture, as the sweep's entries
        # do; monuments is small (one batch an epoch), so it gets more epochs
        "finetune": {
            "tasks": {
                "pets": {"epochs": 1},
                "monuments": {"arch": "test_resnet", "epochs": 8},
                "five_class": {"arch": "test_resnet", "epochs": 4},
            }
        },
        "sweep": {"epochs": 4, "archs": ["test_resnet", "test_efficientnet", "test_vit"]},
        "export": {"model": "test_resnet-42"},
    }


def _merge(doc: Any, overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            _merge(doc[key], value)
        else:
            doc[key] = value


def demo_params(overrides: dict[str, Any]) -> str:
    """The project's params.yaml (comments kept) with `overrides` applied."""
    from ruamel.yaml import YAML

    yaml = YAML()
    doc = yaml.load((ROOT / "params.yaml").read_text())
    _merge(doc, overrides)
    buf = io.StringIO()
    yaml.dump(doc, buf)
    return "# Demo params: written by `python -m demo.run` from the project's params.yaml.\n" + buf.getvalue()


CODE_FOLDERS = ("stages", "imgclf")  # what the stages run: entry points and the package


def write_if_changed(path: Path, data: bytes) -> None:
    """Leave the file (and its mtime) alone when the bytes are the same: DVC then sees nothing new."""
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def sync_code(ws: Path) -> None:
    """Copy dvc.yaml, .dvcignore, the plot templates (the page with Vega inside, the licences), stages/ and the
    imgclf package into the workspace; drop code files the project no longer has."""
    for name in ("dvc.yaml", ".dvcignore"):
        write_if_changed(ws / name, (ROOT / name).read_bytes())
    templates = ROOT / "plot_templates"
    for template in sorted(p for p in templates.rglob("*") if p.is_file()):
        write_if_changed(ws / "plot_templates" / template.relative_to(templates), template.read_bytes())
    for folder in CODE_FOLDERS:
        src = {p.relative_to(ROOT / folder) for p in (ROOT / folder).rglob("*.py")}
        for old in (ws / folder).rglob("*.py") if (ws / folder).is_dir() else ():
            if old.relative_to(ws / folder) not in src:
                old.unlink()
        for rel in sorted(src):
            dest = ws / folder / rel
            if not dest.is_file() or not filecmp.cmp(ROOT / folder / rel, dest, shallow=False):
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / folder / rel, dest)


def git(ws: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run git in the workspace with a local identity (the demo commits its own history)."""
    return subprocess.run(
        ["git", "-c", "user.name=demo", "-c", "user.email=demo@localhost", *args],
        cwd=ws,
        check=check,
        capture_output=True,
        text=True,
    )


def commit_all(ws: Path, message: str) -> None:
    """Commit the workspace's code, params, lock file, manifests and metrics, if anything changed; DVC
    outputs stay out of git even when a failed run left them without their .gitignore entries."""
    git(ws, "add", "-A", "--", ".", *(f":!{d}" for d in ("data", "models", "plots", "records", "review")))
    if git(ws, "diff", "--cached", "--quiet", check=False).returncode:
        git(ws, "commit", "-q", "-m", message)


def demo_remote(ws: Path) -> Path:
    """The demo's default DVC remote: the folder `<workspace>-dvc-storage` beside the workspace. An absolute path,
    committed in .dvc/config, so that every clone of the demo on this machine pushes to and pulls from it (a
    relative one would resolve inside each clone)."""
    return ws.parent / f"{ws.name}-dvc-storage"


# .dvc/config settings the demo commits; the page template path is relative to .dvc/, as DVC reads it
PAGE_TEMPLATE = "../plot_templates/page.html"


def configure_dvc(ws: Path) -> None:
    """Give the workspace (new or made by an older version) its default remote and the offline page template."""
    config = (ws / ".dvc" / "config").read_text()
    remote = demo_remote(ws)
    if f"url = {remote}\n" not in config:
        run_dvc(ws, "remote", "add", "-q", "-d", "-f", "local", str(remote))
    if f"html_template = {PAGE_TEMPLATE}\n" not in config:
        run_dvc(ws, "config", "plots.html_template", PAGE_TEMPLATE)


def setup_workspace(ws: Path, port: int) -> None:
    """Create or refresh the demo workspace (git + DVC repo with a default remote and the page template, code,
    params, data sources, URL lists)."""
    ws.mkdir(parents=True, exist_ok=True)
    if not (ws / ".git").is_dir():
        git(ws, "init", "-q")
    if not (ws / ".dvc").is_dir():
        run_dvc(ws, "init", "-q")
        run_dvc(ws, "config", "core.autostage", "true")
    configure_dvc(ws)
    # dvc-storage/: where older versions kept the demo's remote, inside the workspace; dvc_plots/: the pages
    # `dvc plots show` and `diff` write. Neither is committed.
    write_if_changed(
        ws / ".gitignore", b"/www/\n/downloads/\n/checkpoints/\n/dvc-storage/\n/dvc_plots/\n__pycache__/\n"
    )
    sync_code(ws)
    www = ws / "www"
    tarball = www / "oxford-iiit-pet.tgz"
    pets_tarball(tarball)
    from ruamel.yaml import YAML

    from imgclf.common import csv_text
    from imgclf.datasets import parse_classes
    from imgclf.sources.exclude import HEADER

    datasets = YAML(typ="safe").load((ROOT / "params.yaml").read_text(encoding="utf-8"))["datasets"]
    for dataset, cfg in datasets.items():
        classes = parse_classes(cfg["classes"], f"datasets.{dataset}.classes")
        # served under the class folders (safe paths; for plain names the same files as ever), listed by label
        label_of = {c.folder: c.label for c in classes}
        rows = web_images(www, dataset, list(label_of), PER_CLASS.get(dataset, 24), WRONG.get(dataset, 0))
        text = csv_text(
            [{"class": label_of[f], "url": f"http://127.0.0.1:{port}/{p}"} for f, p in rows], ["class", "url"]
        )
        write_if_changed(ws / "urls" / f"{dataset}.csv", text.encode("utf-8"))
        exclusions = ws / "exclude" / f"{dataset}.txt"
        if not exclusions.exists():  # a dep of the scrape stage; once there, it is the user's (README: Cleaning)
            exclusions.parent.mkdir(parents=True, exist_ok=True)
            exclusions.write_text(HEADER, encoding="utf-8")
    write_if_changed(ws / "params.yaml", demo_params(demo_overrides(port, tarball)).encode())
    commit_all(ws, "demo workspace")


def run_dvc(ws: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run this venv's DVC in the workspace, with this venv first on PATH (stages call `python`)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, env=env, check=check)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # the scrape report records every request's outcome
        pass


@contextlib.contextmanager
def serve(folder: Path, port: int) -> Iterator[int]:
    """Serve `folder` over HTTP on 127.0.0.1:`port` (0 = any free port) while the block runs."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Set up the workspace, serve its sources, run `dvc repro`, and show the results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("DEMO_DIR", ".demo")))
    ap.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", "8765")))
    ap.add_argument("--setup-only", action="store_true", help="write the workspace, run nothing")
    args = ap.parse_args(argv)
    ws = args.dir.resolve()
    print(BANNER, flush=True)
    setup_workspace(ws, args.port)
    if args.setup_only:
        return 0
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(serve(ws / "www", args.port))
        except OSError as e:
            print(
                f"error: cannot serve the demo data on 127.0.0.1:{args.port} ({e}): set DEMO_PORT to a free port.",
                file=sys.stderr,
            )
            return 1
        repro = run_dvc(ws, "repro", check=False)
    if repro.returncode:
        print(f"error: dvc repro failed in {ws}; see the messages above.", file=sys.stderr)
        return 1
    commit_all(ws, "demo results")
    # every metric: the accuracies, the best and its tied set's size, the scrapes' totals (the rest is in records/)
    run_dvc(ws, "metrics", "show", "--precision", "4")
    print(f"\nPlot: {ws / 'plots/sweep/accuracy.png'}")
    print(export_line(ws))
    print(BANNER)
    return 0


def export_line(ws: Path) -> str:
    """Where the export stage put its ONNX model, and how to export the best entry instead when it chose another."""
    import json

    from ruamel.yaml import YAML

    params = YAML(typ="safe").load((ws / "params.yaml").read_text(encoding="utf-8"))
    exported, seeds = params["export"]["model"], params["sweep"]["seeds"]
    best = json.loads((ws / "metrics/plot.json").read_text(encoding="utf-8")).get("best_arch")
    line = f"ONNX export of {exported}: {ws / 'models/export/model.onnx'} (dvc repro export)"
    if best and exported.rsplit("-", 1)[0] != best:
        line += f"; to export the best, set export.model: {best}-{seeds[0]} in params.yaml, then `dvc repro export`"
    return line


if __name__ == "__main__":
    sys.exit(main())
