"""`make bench-zoo`: DVC's bookkeeping with every timm architecture in the sweep (1,102 with timm 1.0.31), against
a trivial DVC project of the same shape, in the same run:
- `dvc status`, `dvc repro --dry`, and `dvc commit -f` of one entry (what `dvc repro` does after each stage: hash
  it, then rewrite the whole dvc.lock), interleaved over the workspaces after a warm-up round;
- `make sweep`'s restore of RESTORED entries from the run-cache (DVC's status, then dvc.lock written once), and
  `dvc repro` of the same entries (dvc.lock written after each);
- `make sweep`'s marginal cost of one entry: training 4, then 8 of the zoo's tiny `test_*` entries.

The workspaces: `zoo` is this project (its code, dvc.yaml, params.yaml with the zoo in sweep.archs and settings
that train a tiny model in a second) with every stage's outputs written by hand (tests/zoo_outputs.py; the
decoded dataset and the plot stage's outputs are real), recorded by `dvc commit`: nothing is trained to build it.
`trivial` has as many matrix entries, each an `echo` depending on the image folder; `trivial_file` depends on one
file instead, as the sweep entries read the decode stage's one file.

    python -m bench.zoo [--work DIR] [--entries N]   # prints JSON
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.run import ROOT, dvc, git_commit, new_project, run, timed
from bench.sweep import make_sweep
from tests.zoo_outputs import CLASSES, write_file, write_sweep_outputs

CODE = ["stages", "imgclf", "plot_templates", "urls", "exclude", "dvc.yaml", ".dvcignore"]
IMAGES_PER_CLASS = 150  # search.max_results: the size of the real five_class folder
RESTORED = 10
SEED = 42  # params.yaml's sweep.seeds: [42]; the zoo's entries are sweep@<arch>-42
MARGINAL = ["test_byobnet", "test_convnext", "test_efficientnet", "test_nfnet"]  # trained in both runs
MARGINAL_MORE = ["test_resnet", "test_vit", "test_vit2", "test_convnext2"]  # and in the second one only
TRAINABLE = {"train": {"pretrained": False, "img_size": 32, "batch_size": 16}, "sweep": {"epochs": 1}}
TRIVIAL_DVC_YAML = """stages:
  entry:
    matrix:
      arch: ${archs}
    cmd: echo ${item.arch} > out/${item.arch}.txt
    deps:
      - DEP
    outs:
      - out/${item.arch}.txt
"""
DECODED = "data/five_class/decoded.safetensors"
# What `dvc repro` does to dvc.lock after each stage, and `make sweep` once: parse it and write it back (ruamel).
LOCK_WRITE = """import time
from dvc.utils.serialize import modify_yaml
wall, cpu = time.perf_counter(), time.process_time()
with modify_yaml("dvc.lock") as data:
    data["stages"]
print(time.perf_counter() - wall, time.process_time() - cpu)
"""


def _images(folder: Path) -> None:
    """The five_class image folder's shape: one folder per class, IMAGES_PER_CLASS small files in each."""
    for c in CLASSES:
        for n in range(IMAGES_PER_CLASS):
            write_file(folder / c / f"{n:08x}.jpg", f"{c} {n}\n" * 64)


def _commit_all(ws: Path) -> None:
    """Record every stage's outputs in dvc.lock (and the run-cache) without running anything; commit to git."""
    dvc(ws, "commit", "-f", "-q")
    git_commit(ws, "zoo")


def decoded_dataset(path: Path, scratch: Path) -> None:
    """A real decoded dataset (stages.decode's file) of 16 generated 40 px images per class, at 32 px."""
    from demo.synthetic import draw
    from imgclf.training.data import write_decoded

    files = []
    for i, c in enumerate(CLASSES):
        (scratch / c).mkdir(parents=True, exist_ok=True)
        for n in range(16):
            files.append(scratch / c / f"{n:02d}.jpg")
            draw(f"{c}/{n}", i, size=(40, 40)).save(files[-1], quality=90)
    write_decoded(path, scratch, files, [f.parent.name for f in files], size=32, threads=1)


def zoo_workspace(ws: Path, archs: list[str]) -> None:
    """This project with `archs` in sweep.archs and every stage's outputs in place, recorded in dvc.lock."""
    new_project(ws)
    for name in CODE:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copyfile)(ROOT / name, ws / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sweep"]["archs"] = archs
    for section, values in TRAINABLE.items():
        params[section].update(values)
    params["base"]["threads"] = 1
    write_file(ws / "params.yaml", yaml.safe_dump(params, sort_keys=False))
    files = {"data/params.ok": "ok\n", "data/decode_size.txt": f"{params['train']['img_size'] or 224}\n"}
    files |= {"data/pets/images/Abyssinian_1.jpg": "cat\n", "records/download_pets.json": "{}\n"}
    files |= {"models/export/export.json": "{}\n"}  # the export stage's output (export.model: resnet34-42)
    for ds in params["datasets"]:
        files |= {f"manifests/{ds}.csv": "class,url\n", f"data/{ds}/report.csv": "url,status\n"}
        files |= {f"{d}/scrape/{ds}.json": "{}\n" for d in ("records", "metrics")}
        files |= {f"review/{ds}/index.html": "<html></html>\n"}
        if ds != params["sweep"]["dataset"]:
            files[f"data/{ds}/images/a/0.jpg"] = "image\n"
    for task in params["finetune"]["tasks"]:
        files |= {
            f"models/finetune/{task}/model.json": "{}\n",
            f"plots/confusion/finetune/{task}.csv": "actual,predicted\n",
        }
        files |= {f"plots/live/finetune/{task}/plots/metrics/accuracy.tsv": "step\taccuracy\n0\t0.9\n"}
        files |= {f"{d}/finetune/{task}.json": "{}\n" for d in ("records", "metrics")}
    for name, text in files.items():
        write_file(ws / name, text)
    _images(ws / "data" / params["sweep"]["dataset"] / "images")
    decoded_dataset(ws / "data" / params["sweep"]["dataset"] / "decoded.safetensors", ws.parent / "decoded_images")
    write_sweep_outputs(ws, archs)
    plot_cmd = yaml.safe_load((ws / "dvc.yaml").read_text())["stages"]["plot"]["cmd"].split()
    run([sys.executable, *plot_cmd[1:]], ws)  # the real plot stage, on the whole zoo
    _commit_all(ws)


def trivial_workspace(ws: Path, archs: list[str], dep: str = "data/five_class/images") -> None:
    """As many matrix entries, each depending on the same image folder (or on one file, `dep=DECODED`)."""
    new_project(ws)
    write_file(ws / "params.yaml", yaml.safe_dump({"archs": archs}))
    write_file(ws / "dvc.yaml", TRIVIAL_DVC_YAML.replace("DEP", dep))
    _images(ws / "data/five_class/images")
    write_file(ws / DECODED, "decoded images\n" * 4096)
    for arch in archs:
        write_file(ws / "out" / f"{arch}.txt", f"{arch}\n")
    _commit_all(ws)


def measure(sides: dict[str, Path], repeats: int, arch: str) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Interleaved `dvc status`, `dvc repro --dry`, `dvc commit -f` of one entry (`arch`) and DVC's dvc.lock write
    alone (LOCK_WRITE) in every workspace, after one warm-up round (the page cache, DVC's state database): (wall,
    CPU) seconds per run."""
    dvc_ = [sys.executable, "-m", "dvc"]
    commands = {"status": [*dvc_, "status"], "repro_dry": [*dvc_, "repro", "--dry"]}
    commands |= {"commit_one": [*dvc_, "commit", "-f", "-q"], "lock_write": [sys.executable, "-c", LOCK_WRITE]}
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {c: {s: [] for s in sides} for c in commands}
    for rep in range(repeats + 1):
        for command, args in commands.items():
            for side, ws in sides.items():
                stage = f"entry@{arch}" if "trivial" in side else f"sweep@{arch}-{SEED}"
                full = [*args, stage] if command == "commit_one" else args
                res, wall, cpu = timed(lambda ws=ws, full=full: run(full, ws))
                if command == "lock_write":  # the write's own seconds, without the interpreter's start
                    wall, cpu = map(float, res.stdout.split())
                text = res.stdout + res.stderr
                if command != "commit_one" and (
                    "up to date" not in text if command == "status" else "Running stage" in text
                ):
                    raise RuntimeError(f"`dvc {command}` in {side} found work to do:\n{text[-2000:]}")
                if rep:
                    samples[command][side].append((wall, cpu))
    return samples


def forget(ws: Path, names: list[str]) -> None:
    """The zoo workspace as an interrupted `make sweep` leaves it for the entries `names` (`<arch>-<seed>`): their
    results in the run-cache (`dvc commit` put them there), but neither their outputs nor their dvc.lock records."""
    lock = yaml.load((ws / "dvc.lock").read_text(), Loader=yaml.CSafeLoader)
    for name in names:
        del lock["stages"][f"sweep@{name}"]
        shutil.rmtree(ws / "models/sweep" / name)
        shutil.rmtree(ws / "plots/live/sweep" / name)
        (ws / "plots/confusion/sweep" / f"{name}.csv").unlink()
    (ws / "dvc.lock").write_text(yaml.dump(lock, Dumper=yaml.CSafeDumper, sort_keys=False))


def measure_restore(ws: Path, names: list[str]) -> dict[str, Any]:
    """The entries `names` back from the run-cache by `dvc repro sweep@...` (dvc.lock written after each), then by
    `make sweep` (written once, after working out what is pending among all the entries)."""
    forget(ws, names)
    res, wall, cpu = timed(lambda: dvc(ws, "repro", *(f"sweep@{n}" for n in names)))
    if "Running stage" in res.stdout:
        raise RuntimeError(f"dvc repro trained instead of restoring:\n{res.stdout[-2000:]}")
    forget(ws, names)
    ours = make_sweep(ws)
    if ours["trained"] or ours["restored"] != len(names):
        raise RuntimeError(f"make sweep trained {ours['trained']} and restored {ours['restored']} of {names}")
    return {"entries": len(names), "dvc_repro": {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}, "ours": ours}


def measure_marginal(zoo: Path, work: Path) -> dict[str, Any]:
    """`make sweep` training 4, then 8 of the zoo's tiny entries (on copies of the zoo workspace without its
    run-cache), all the others recorded: the marginal cost of an entry is ((wall - training) with 8 - (wall -
    training) with 4) / 4; `bookkeeping_per_entry_s` is each run's own (wall - start - training - the dvc.lock
    write) / entries. The plot stage then refuses the trained entries beside the written ones (other validation
    images), alike in both runs: not an error here."""
    runs = {}
    for archs in (MARGINAL, MARGINAL + MARGINAL_MORE):
        names, ws = [f"{a}-{SEED}" for a in archs], work / f"marginal{len(archs)}"
        shutil.copytree(zoo, ws, symlinks=True)
        shutil.rmtree(ws / ".dvc/cache/runs")
        forget(ws, names)
        runs[len(archs)] = run_ = make_sweep(ws, check=False)
        if sorted(run_["trained"]) != sorted(names):
            raise RuntimeError(f"make sweep trained {run_['trained']}, not {names}")
        shutil.rmtree(ws)
    few, more = (runs[n]["wall_s"] - runs[n]["train_s"] for n in sorted(runs))
    return {
        "runs": runs,
        "per_entry_s": round((more - few) / len(MARGINAL_MORE), 3),
        "bookkeeping_per_entry_s": [runs[n]["bookkeeping_per_entry_s"] for n in sorted(runs)],
    }


def zoo_section(work: Path | None = None, repeats: int = 1, archs: list[str] | None = None) -> dict[str, Any]:
    """Every figure above, with the raw (wall, CPU) samples. Keys `<side>_<command>_s` (medians; commands status,
    repro_dry, commit_one, lock_write), `zoo_<command>_ratio` against `trivial` (`_ratio_file`: `trivial_file`),
    `zoo_restore_s`, `zoo_restore_lock_write_s`, `zoo_restore_dvc_repro_s`, `zoo_marginal_entry_s`."""
    from imgclf.training.archs import list_archs

    archs = archs or list_archs()
    out: dict[str, Any] = {"entries": len(archs), "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="zoo_bench_", dir=work) as tmp:
        start, sides = time.perf_counter(), {name: Path(tmp) / name for name in ("zoo", "trivial", "trivial_file")}
        zoo_workspace(sides["zoo"], archs)
        trivial_workspace(sides["trivial"], archs)
        trivial_workspace(sides["trivial_file"], archs, dep=DECODED)
        out["build_s"] = round(time.perf_counter() - start, 1)
        print(f"[{time.strftime('%T')}] zoo: built in {out['build_s']} s; measuring", file=sys.stderr, flush=True)
        for command, by_side in measure(sides, repeats, archs[len(archs) // 2]).items():
            for side, samples in by_side.items():
                out[f"{side}_{command}"] = [[round(w, 3), round(c, 3)] for w, c in samples]
                out[f"{side}_{command}_s"] = round(statistics.median(w for w, _ in samples), 3)
            for suffix, base in (("ratio", "trivial"), ("ratio_file", "trivial_file")):
                out[f"zoo_{command}_{suffix}"] = round(out[f"zoo_{command}_s"] / out[f"{base}_{command}_s"], 3)
        print(f"[{time.strftime('%T')}] zoo: restoring; so far {json.dumps(out)}", file=sys.stderr, flush=True)
        spread = [f"{a}-{SEED}" for a in archs[:: max(1, len(archs) // RESTORED)][:RESTORED]]
        out["restore"] = restored = measure_restore(sides["zoo"], spread)
        out["zoo_restore_s"], out["zoo_restore_lock_write_s"] = (
            restored["ours"]["wall_s"],
            restored["ours"]["lock_write_s"],
        )
        out["zoo_restore_dvc_repro_s"] = restored["dvc_repro"]["wall_s"]
        if set(MARGINAL + MARGINAL_MORE) <= set(archs):
            out["marginal"] = measure_marginal(sides["zoo"], Path(tmp))
            out["zoo_marginal_entry_s"] = out["marginal"]["per_entry_s"]
    return out


section = zoo_section  # what bench/run.py calls


def main(argv: list[str] | None = None) -> None:
    """CLI: print zoo_section()'s figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="folder for the temporary workspaces (default: the system's)")
    ap.add_argument("--repeats", type=int, default=1, help="measured rounds after the warm-up round")
    ap.add_argument("--entries", type=int, help="only the first N architectures (a quicker, smaller run)")
    args = ap.parse_args(argv)
    from imgclf.training.archs import list_archs

    archs = list_archs()[: args.entries] if args.entries else None
    print(json.dumps(zoo_section(args.work, args.repeats, archs), indent=2))


if __name__ == "__main__":
    main()
