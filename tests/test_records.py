"""Records you can trust: what `make sweep` records for an entry is what that entry's code and params produce. A
code edit during the sweep is never recorded under the new code; a failure for the machine's sake is recorded
for the plot but kept out of the run-cache, and trained again on a clone that gets it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, git, run_dvc, stages_run
from tests.test_parallel import (
    NOISY,
    entries,
    entry,
    pending,
    run_cache_records,
    sweep,
    trained,
    use_tiny_archs,
    with_faults,
)

ARCHS = ["test_convnext", "test_byobnet", "test_vit2"]  # the quick tiny ones (not test_nfnet), trained 1 epoch
LEARNER = "imgclf/training/learner.py"
CODE = "imgclf/training"  # the sweep's dep that holds it

# make sweep's run_sweep with one worker; the moment the first entry's result reaches the parent, before the parent
# does anything else (hand out the next entry, record this one), the learning rate in the workspace's
# imgclf/training/learner.py is scaled by 0.01, as a user editing the code during the sweep would.
EDIT_DURING_SWEEP = """import sys
from pathlib import Path
from imgclf import parallel
from imgclf.common import configure_logging, exit_code

ws = Path(sys.argv[1])
real, results = parallel.Pool._result, []


def result_then_edit(self, k, future):
    results.append(real(self, k, future))
    if len(results) == 1:
        path = ws / "imgclf/training/learner.py"
        text = path.read_text()
        assert 'train["lr"]' in text, "the learning rate is no longer train['lr'] in learner.py: update the test"
        path.write_text(text.replace('train["lr"]', '0.01 * train["lr"]'))
    return results[-1]


parallel.Pool._result = result_then_edit
configure_logging()
sys.exit(exit_code(parallel.run_sweep, ws, 1))
"""


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def code_md5s(ws: Path) -> dict[str, set[str]]:
    """Each of ARCHS's entries -> the md5s of its code folder (CODE, which holds learner.py) in its records:
    dvc.lock's and the run-cache's."""
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    records = list(run_cache_records(ws))
    found: dict[str, set[str]] = {entry(a): set() for a in ARCHS}
    for name, record in [*((n, r) for n, r in lock.items()), *((None, r) for r in records)]:
        for arch in ARCHS:
            if name == f"sweep@{entry(arch)}" or (name is None and f"--arch {arch} " in record["cmd"]):
                found[entry(arch)] |= {d["md5"] for d in record["deps"] if d["path"] == CODE}
    return found


def code_md5(ws: Path) -> str:
    """The md5 DVC gives the code folder CODE as it is on disk now."""
    from dvc.repo import Repo

    with contextlib.chdir(ws), Repo(".") as repo:  # DVC reads params.yaml from the working directory
        (stage,) = repo.stage.collect(f"sweep@{entry(ARCHS[0])}")
        dep = next(d for d in stage.deps if str(d.def_path) == CODE)
        dep.save()
        return dep.hash_info.value


def outputs(ws: Path, name: str) -> dict[str, bytes]:
    """An entry's weights and validation predictions, as bytes."""
    return {
        "weights": (ws / f"models/sweep/{name}/model.safetensors").read_bytes(),
        "predictions": (ws / f"plots/confusion/sweep/{name}.csv").read_bytes(),
    }


def scores(ws: Path, name: str) -> dict:
    """An entry's metrics, the timings aside."""
    record = json.loads((ws / f"records/sweep/{name}.json").read_text())
    return {k: v for k, v in record.items() if k not in NOISY}


def test_the_code_hashes_are_dvcs_and_a_checkpoint_from_other_code_is_not_resumed():
    """The md5 a worker notes for a code file is the one DVC records for it as a dep; the checkpoint key changes
    with the code this process runs, so a checkpoint made by other code is discarded, not resumed."""
    from dvc_data.hashfile.hash import file_md5

    from imgclf.pool import code_modules
    from imgclf.training import checkpoint

    hashes = checkpoint.code_hashes(ROOT)
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["sweep"]["deps"]
    folders = [d for d in deps if (ROOT / d).is_dir() and d.startswith("imgclf/")]
    code = [d for d in deps if d.endswith(".py")]
    code += [p.relative_to(ROOT).as_posix() for f in folders for p in (ROOT / f).rglob("*.py") if p.stem != "__init__"]
    assert folders and code and all(hashes[d] == file_md5(str(ROOT / d), name="md5") == md5(ROOT / d) for d in code)
    assert "imgclf.training.hub" in code_modules(ROOT) and len(code_modules(ROOT)) == len(code)

    noted = checkpoint.running_code()
    args = ("test_resnet", 1, {"lr": 0.01}, 0, [Path("a.jpg")], ["circle"], [10])
    try:
        key = checkpoint.checkpoint_key(*args)
        checkpoint.note_running_code({**noted, LEARNER: "0" * 32})
        assert checkpoint.checkpoint_key(*args) != key
        checkpoint.note_running_code(noted)
        assert checkpoint.checkpoint_key(*args) == key
    finally:
        checkpoint.note_running_code(noted)


def test_records_and_checkpoint_keys_carry_the_library_versions(monkeypatch):
    """A pip upgrade of a computing library changes the checkpoint key: nothing resumes across it."""
    from imgclf.common import COMPUTING_LIBRARIES, library_versions
    from imgclf.training import checkpoint

    versions = library_versions()
    assert set(versions) == set(COMPUTING_LIBRARIES) and versions["torch"] and versions["timm"]
    args = ("test_resnet", 1, {"lr": 0.01}, 0, [Path("a.jpg")], ["circle"], [10])
    key = checkpoint.checkpoint_key(*args)
    monkeypatch.setattr(checkpoint, "library_versions", lambda: {**versions, "timm": "0.0.1"})
    assert checkpoint.checkpoint_key(*args) != key  # the records: tests/test_pipeline.py


@pytest.mark.slow
def test_a_code_edit_during_the_sweep_is_never_recorded_as_the_new_codes_result(copy_workspace):
    """learner.py edited (the learning rate x 0.01) once the first entry has trained, on one warm worker. That
    entry is not recorded (neither in dvc.lock nor in the run-cache), a message names the file and says to run
    `make sweep` again, and `dvc status` lists it. Its worker retires; the next two entries train on a fresh one,
    and their records (learner.py's new hash) are what `dvc repro --force --single-item` gives: the same weights and
    predictions, bit for bit, and metrics (timings aside). `make sweep` again then trains only the first entry,
    whose weights change: the edit changes what training computes."""
    ws, _ = copy_workspace
    use_tiny_archs(ws, ARCHS, epochs=1)
    old = md5(ws / LEARNER)
    res = subprocess.run(
        [sys.executable, "-c", EDIT_DURING_SWEEP, str(ws)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    new = md5(ws / LEARNER)
    first, others = entry(ARCHS[0]), [entry(a) for a in ARCHS[1:]]
    assert new != old and res.returncode == 1, res.stdout + res.stderr
    assert trained(res.stderr) == entries(*ARCHS), res.stderr
    assert f"sweep@{first}: not recorded, still pending: {LEARNER} changed while it trained" in res.stderr
    assert "Run `make sweep` again" in res.stderr and "Traceback" not in res.stderr
    assert f"worker 0 runs {LEARNER} as it was before an edit: replacing it" in res.stderr
    assert res.stderr.count("worker 0 ready") == 2  # the stale worker retired, a fresh one trained the others

    # no record carries the hash of code its worker did not run: the first entry's worker ran the old learner.py
    # and has no record at all; the others' ran the new one, and every record of theirs says so
    assert code_md5s(ws) == {first: set(), **{name: {code_md5(ws)} for name in others}}
    assert pending(ws) == {first}

    # every record whose hashes match the files on disk is what a fresh `dvc repro` of that entry gives
    stale = outputs(ws, first)
    for name in others:
        swept, swept_scores = outputs(ws, name), scores(ws, name)
        repro = run_dvc(ws, "repro", "--force", "--single-item", f"sweep@{name}")
        assert stages_run(repro.stdout) == [f"sweep@{name}"]
        assert outputs(ws, name) == swept and scores(ws, name) == swept_scores
    assert pending(ws) == {first}

    res = sweep(ws, "--jobs", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert trained(res.stderr) == [first] and pending(ws) == set()
    assert outputs(ws, first)["weights"] != stale["weights"]
    assert code_md5s(ws)[first] == {code_md5(ws)}


@pytest.mark.slow
def test_a_failure_for_the_machines_sake_is_trained_again_by_a_clone(copy_workspace, tmp_path):
    """On one clone test_byobnet runs out of memory at every batch down to the smallest (torch's
    OutOfMemoryError from its forward): `make sweep SHARD=1/1` records it failed for the machine's sake (cause,
    device) in dvc.lock, which `dvc status` then calls up to date, but not in the run-cache, local or pushed.
    That clone commits and pushes. A plain `dvc repro` of the entry there fails in one line and caches nothing.
    A second clone (with more memory) gets the commit and pulls outputs and run-cache: there `make sweep` trains
    test_byobnet, and only it."""
    origin, _ = copy_workspace  # tmp_path/ws: the remote ../storage lands next to it
    archs = ARCHS[:2]
    faults = with_faults(origin, tmp_path / "faults", archs, 1, test_byobnet="oom_min")
    run_dvc(origin, "repro", "check_params")  # the data stages up to date and committed: what clones pull
    run_dvc(origin, "remote", "add", "-d", "shared", "../storage")
    git(origin, "add", "dvc.lock", ".dvc/config")
    git(origin, "commit", "-q", "-m", "share on a remote")
    run_dvc(origin, "push")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    run_dvc(clone, "pull", "--allow-missing")  # the data; the new sweep entries have no outputs yet

    res = sweep(origin, "--jobs", "1", "--shard", "1/1")  # then pushes outputs and run-cache
    assert res.returncode == 0, res.stdout + res.stderr
    byobnet, convnext = entry("test_byobnet"), entry("test_convnext")
    failed = json.loads((origin / f"records/sweep/{byobnet}.json").read_text())
    assert (failed["status"], failed["cause"], failed["machine_dependent"]) == ("failed", "out_of_memory", True)
    assert failed["device"].startswith("CPU") and "out of memory at batch 8" in failed["reason"]
    assert f"sweep@{byobnet}: failed for the machine's sake (out_of_memory on CPU" in res.stderr
    assert pending(origin) == set()  # dvc.lock says it is up to date: `dvc repro` alone would not retry it
    for where in (origin, tmp_path / "storage"):  # neither the local run-cache nor the pushed one holds it
        cmds = [r["cmd"] for r in run_cache_records(where)]
        assert any("--arch test_convnext " in c for c in cmds) and not any("--arch test_byobnet " in c for c in cmds)
    git(origin, "add", "-A", "dvc.lock", "metrics")
    git(origin, "commit", "-q", "-m", "the sweep, one entry out of memory")

    # a plain `dvc repro` of it, still out of memory: the stage fails in one line, DVC records and caches nothing
    lock = (origin / "dvc.lock").read_bytes()
    res = run_dvc(origin, "repro", "--force", "--single-item", f"sweep@{byobnet}", check=False)
    assert res.returncode != 0 and "failed for the machine's sake (out_of_memory" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and (origin / "dvc.lock").read_bytes() == lock
    assert not any("--arch test_byobnet " in r["cmd"] for r in run_cache_records(origin))
    (faults / "test_byobnet.oom_min").unlink()  # more memory: the clone's machine, or this one after a fix

    git(clone, "pull", "-q")
    run_dvc(clone, "pull", "--run-cache")
    res = sweep(clone, "--jobs", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert trained(res.stderr) == [byobnet], res.stderr
    assert f"sweep@{byobnet}: recorded as failed for the machine's sake (out_of_memory on CPU" in res.stderr
    assert json.loads((clone / f"records/sweep/{byobnet}.json").read_text())["status"] == "ok"
    weights = f"models/sweep/{convnext}/model.safetensors"
    assert (clone / weights).read_bytes() == (origin / weights).read_bytes()
    assert pending(clone) == set()

    shutil.rmtree(origin / f"models/sweep/{byobnet}")  # pending, and no run-cache entry to restore: trained
    res = sweep(origin, "--jobs", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert trained(res.stderr) == [byobnet], res.stderr
    assert json.loads((origin / f"records/sweep/{byobnet}.json").read_text())["status"] == "ok"
