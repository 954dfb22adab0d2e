"""The layout's promises: each DVC stage lists exactly the package modules its entry point imports, a folder dep
standing for every module in it (so an edit to one module reruns only the stages that use it), stages never import
each other, no module over its size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "imgclf"
# The params schema only accepts or refuses params.yaml: check_params depends on it, and every other stage
# reaches it through data/params.ok, so a schema edit re-checks params without retraining anything. The same
# holds for what the schema imports (imgclf/datasets.py's parse_classes): a stage lists such a module only when
# it imports it itself.
SCHEMA = f"{PACKAGE}/params.py"


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name (`imgclf.training.learner`), or None for a third-party one."""
    if name.split(".")[0] not in (PACKAGE, "stages"):
        return None
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Dotted names of the project modules `path` imports anywhere: at the top, inside functions, or as
    `from package import module`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from imgclf.training import checkpoint` imports the module imgclf.training.checkpoint
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if module_file(n) is not None)
    return found


def closure(entry: Path, stop: frozenset[Path] = frozenset()) -> set[Path]:
    """Every project file `entry` loads, itself included, following imports transitively (but not through the
    files in `stop`, which are left out)."""
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path in seen or path in stop:
            continue
        seen.add(path)
        todo += [module_file(m) for m in imported_modules(path)]
    return seen


def rel(paths: set[Path]) -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in paths}


def code_files(dep: str) -> set[str]:
    """The source files a dvc.yaml dep stands for: a module itself; a package folder, every module in it (DVC
    hashes the folder whole, so the stage must import all of them); anything else, none."""
    if dep.endswith(".py"):
        return {dep}
    if dep.split("/")[0] in (PACKAGE, "stages") and (ROOT / dep).is_dir():
        return {p for p in rel(set((ROOT / dep).rglob("*.py"))) if not p.endswith("__init__.py")}
    return set()


def stage_entries() -> dict[str, tuple[str, set[str]]]:
    """stage name -> (its entry point, the source files its dvc.yaml deps stand for)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        cmd = body["cmd"].split()
        entry = cmd[cmd.index("-m") + 1].replace(".", "/") + ".py"
        out[name] = (entry, {f for d in body.get("deps", []) for f in code_files(d)})
    return out


def deps_mismatch(stage: str, entry: str, deps: set[str]) -> str | None:
    """What is wrong with a stage's .py deps against its entry point's imports, or None."""
    stop = frozenset() if stage == "check_params" else frozenset({ROOT / SCHEMA})
    needed = {p for p in rel(closure(ROOT / entry, stop)) if not p.endswith("__init__.py")}
    if deps == needed:
        return None
    return f"dvc.yaml stage {stage}: missing deps {sorted(needed - deps)}, extra deps {sorted(deps - needed)}"


@pytest.mark.parametrize("stage", sorted(stage_entries()))
def test_stage_deps_are_exactly_its_imports(stage):
    problem = deps_mismatch(stage, *stage_entries()[stage])
    assert problem is None, problem


def test_package_inits_are_empty():
    """An __init__ runs whenever its package is imported; empty, it cannot change a result, so no stage lists it."""
    for init in (ROOT / PACKAGE).rglob("__init__.py"):
        assert init.read_text().strip() == "", init


def test_stages_never_import_each_other_and_stay_thin():
    for path in sorted((ROOT / "stages").glob("*.py")):
        if path.name == "__init__.py":
            continue
        others = {m for m in imported_modules(path) if m.startswith("stages")}
        assert not others, f"{path.name} imports {others}: move the shared code into {PACKAGE}/"
        assert len(path.read_text().splitlines()) < 100, f"{path.name} is over 100 lines: move logic into {PACKAGE}/"


def test_no_circular_imports():
    graph = {p: {module_file(m) for m in imported_modules(p)} for p in (ROOT / PACKAGE).rglob("*.py")}
    for start in graph:
        reachable, todo = set(), list(graph[start])
        while todo:
            p = todo.pop()
            if p not in reachable:
                reachable.add(p)
                todo += graph.get(p, ())
        assert start not in reachable, f"{start.relative_to(ROOT)} imports itself through a cycle"


@pytest.mark.parametrize("stage", ["plot", "sweep"])
def test_deps_check_fails_when_a_module_is_dropped(stage):
    """The check above can fail: each package module dropped from a stage's deps is reported, by name."""
    entry, deps = stage_entries()[stage]
    for dropped in sorted(d for d in deps if d.startswith(PACKAGE)):
        problem = deps_mismatch(stage, entry, deps - {dropped})
        assert problem is not None and dropped in problem


def test_a_folder_dep_holds_only_modules_its_stage_imports():
    """The sweep depends on the folder imgclf/training: a module there that the sweep does not import would
    retrain every entry when edited, so the check reports it as an extra dep."""
    entry, deps = stage_entries()["sweep"]
    assert "imgclf/training/learner.py" in deps and not any(d.endswith("__init__.py") for d in deps)
    problem = deps_mismatch("sweep", entry, deps | {"imgclf/training/unused.py"})
    assert problem is not None and "imgclf/training/unused.py" in problem
