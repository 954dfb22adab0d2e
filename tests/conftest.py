"""Shared fixtures: offline settings, generated data, and one demo workspace per test session."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Offline, small and deterministic: no hub retries, two threads like the CI machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# Idle OpenMP threads sleep instead of spinning: on 2 shared cores a spinning pool made each training step
# several times slower (see README, Performance).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(autouse=True)
def _dvc_logs_to_this_tests_streams():
    """`import dvc` binds its log handlers to the sys.stdout and sys.stderr of that moment: a test's capture, closed
    once that test ends, so the next test that calls DVC in this process fails with "I/O operation on closed file".
    Point them at the current test's streams."""
    if "dvc.logger" in sys.modules:
        import logging

        for name in ("dvc", "dvc_objects", "dvc_data"):
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, logging.StreamHandler):
                    # Assigned, not setStream(): that flushes the closed stream first.
                    handler.stream = sys.stderr if handler.level >= logging.WARNING else sys.stdout
    yield


CLASSES = ["circle", "square", "triangle"]


def class_images(root: Path, per_class: int, sizes: list[tuple[int, int]], prefix: str = "") -> Path:
    """Generated JPEGs in class folders (the web-dataset layout): `per_class` images of each of CLASSES, the
    n-th of size sizes[n % len(sizes)], drawn from the name `<prefix><class>/<n>` (the same bytes every run)."""
    from demo.synthetic import draw

    for i, cls in enumerate(CLASSES):
        (root / cls).mkdir()
        for n in range(per_class):
            image = draw(f"{prefix}{cls}/{n}", i, size=sizes[n % len(sizes)])
            image.save(root / cls / f"{cls}{n:02d}.jpg", quality=90)
    return root


def git(ws: Path, *args: str) -> None:
    """Run git in `ws` with a test identity; fail on error."""
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args],
        cwd=ws,
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """A folder holding test_resnet.safetensors: random weights standing in for pretrained ones (so that
    `pretrained: true` runs fine_tune, with its frozen and unfrozen fits, offline)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(7)
    folder = tmp_path_factory.mktemp("weights")
    model = timm.create_model("test_resnet", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "test_resnet.safetensors"))
    return folder


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def project_params() -> dict:
    """The project's params.yaml, parsed."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def params(project_params) -> dict:
    """A copy of the project's params to modify in a test."""
    return copy.deepcopy(project_params)


def train_config(params: dict, **train) -> tuple[dict, dict]:
    """params.yaml's (train, base) sections for a tiny model trained from scratch at 32 px, batch 8, lr 0.01, on
    2 threads; `train` overrides keys of the train section."""
    return (
        {**params["train"], "batch_size": 8, "img_size": 32, "pretrained": False, "lr": 0.01, **train},
        {**params["base"], "threads": 2},
    )


@pytest.fixture
def cfg(params) -> tuple[dict, dict]:
    """`train_config(params)`: what the training tests train with."""
    return train_config(params)


def run_dvc(ws: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """This venv's DVC in `ws` with the venv first on PATH; output captured as text."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, env=env, capture_output=True, text=True)
    if check and res.returncode:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res


def stages_run(output: str) -> list[str]:
    """Names of the stages `dvc repro` ran, from its output."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory) -> tuple[Path, int]:
    """The demo workspace after `python -m demo.run` (the real dvc repro of every stage), built once.
    Tests that change it must work on a copy (`copy_workspace`)."""
    ws = tmp_path_factory.mktemp("demo") / "ws"
    port = free_port()
    res = subprocess.run(
        [sys.executable, "-m", "demo.run", "--dir", str(ws), "--port", str(port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, f"demo failed:\n{res.stdout[-5000:]}\n{res.stderr[-5000:]}"
    return ws, port


@pytest.fixture
def copy_workspace(demo_workspace, tmp_path) -> tuple[Path, int]:
    """A private copy of the demo workspace (git, DVC cache and outputs included)."""
    ws, port = demo_workspace
    dst = tmp_path / "ws"
    shutil.copytree(ws, dst, symlinks=True)
    return dst, port


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `online` reach real services: they run only when the -m expression names them
    (`pytest -m online`), so `pytest` and `pytest -m "not slow"` leave them out."""
    if "online" in (config.option.markexpr or ""):
        return
    online = [item for item in items if item.get_closest_marker("online")]
    if online:
        config.hook.pytest_deselected(items=online)
        items[:] = [item for item in items if not item.get_closest_marker("online")]
