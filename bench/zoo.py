"""Bookkeeping at the whole zoo's scale: `dvc status` and `dvc repro --dry` with every timm architecture in the
sweep (1,102 with timm 1.0.31), and `dvc commit -f` of one entry (what `dvc repro` does after each stage: it
rewrites the whole dvc.lock), against a trivial DVC project of the same shape in the same run: as many matrix
entries, the same image folder as each entry's dependency, a trivial command (`trivial`, the issue's yardstick).
Since the sweep entries read the decode stage's one file rather than the folder, a second trivial project whose
entries depend on one file (`trivial_file`) is measured too: the zoo against it is what our own deps, params and
outputs cost on top of DVC's minimum.

    python -m bench.zoo [--work DIR] [--repeats 1] [--variant] [--profile] [--entries N]   # prints JSON

Nothing is trained to build it: the zoo workspace holds this project's code, dvc.yaml and params.yaml (sweep.archs
= the whole zoo, with settings that train a tiny model in a second) with every stage's outputs written by hand
(small files; the decoded dataset of a few generated images and the plot stage's outputs are real), and `dvc
commit` records them all in dvc.lock, so both projects start up to date. Then `make sweep` runs in copies of it:
the restore of RESTORED entries from the run-cache, and the training of 4 and then 8 of the zoo's tiny `test_*`
entries, whose difference is the marginal cost of one entry at the zoo's size. `write_sweep_outputs` also serves the
1,102-entry plots page test (tests/test_zoo_page.py). Slow at full size: on 2 shared cores, building the
workspaces took 12-17 minutes (DVC parses params.yaml, which holds the list, once per stage, three times in
`dvc commit`) and one `dvc status` of the zoo about 100 s; the whole run with --variant --profile, 44 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.sweep import make_sweep
from bench.train import timed
from imgclf.metrics import accuracy_metrics

ROOT = Path(__file__).resolve().parents[1]
CODE = ["stages", "imgclf", "plot_templates", "urls", "exclude", "dvc.yaml", ".dvcignore"]
METRICS = ("accuracy", "error_rate", "train/loss", "eval/loss")  # DVCLive's files for a fastai fine_tune
CLASSES = ["eiffel_tower", "taj_mahal", "colosseum", "statue_of_liberty", "big_ben"]
IMAGES_PER_CLASS = 150  # search.max_results: the size of the real five_class folder
GOAL = 1.5
RESTORED = 10  # entries `measure_restore` takes back from the run-cache
SEED = 42  # params.yaml's sweep.seeds: [42]; the zoo's entries are sweep@<arch>-42
MARGINAL = ["test_byobnet", "test_convnext", "test_efficientnet", "test_nfnet"]  # trained in both runs
MARGINAL_MORE = ["test_resnet", "test_vit", "test_vit2", "test_convnext2"]  # and in the second one only
# what the zoo workspace trains with: a tiny model in about a second on one thread, offline
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


def zoo_archs() -> list[str]:
    """The exercise's list: every timm architecture with pretrained weights except tf_* and hr*."""
    from imgclf.training.archs import list_archs

    return list_archs()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_sweep_outputs(
    ws: Path,
    archs: list[str],
    epochs: int = 4,
    seed: int = 0,
    n_failed: int = 30,
    n_skipped: int = 22,
    train_seed: int = 42,
    n_images: int = 300,
) -> None:
    """Every sweep entry's outputs for sweep.seeds [train_seed], as the sweep stage writes them (entry = <arch>-<train
    seed>): records/sweep/<entry>.json and metrics/sweep/<entry>.json, DVCLive curves in plots/live/sweep/<entry>/,
    plots/confusion/sweep/<entry>.csv
    (actual, predicted, image over the same `n_images` validation images, as many right as the accuracy says),
    models/sweep/<entry>/. Plausible random values from `seed`; `n_failed` and `n_skipped` entries (spread over the
    list) get those statuses and no curves."""
    rng = random.Random(seed)
    actual = [CLASSES[i % len(CLASSES)] for i in range(n_images)]
    odd = rng.sample(range(len(archs)), min(len(archs), n_failed + n_skipped))
    status = {i: "failed" for i in odd[:n_failed]} | {i: "skipped" for i in odd[n_failed:]}
    for i, arch in enumerate(archs):
        kind = status.get(i, "ok")
        params_m = round(10 ** rng.uniform(0, 2.8), 2)
        entry = f"{arch}-{train_seed}"
        record = {
            "arch": arch,
            "seed": train_seed,
            "status": kind,
            "epochs": epochs,
            "device": "cuda",
            "precision": "bf16",
            "reason": {
                "ok": None,
                "failed": "RuntimeError: CUDA out of memory",
                "skipped": f"{params_m} M parameters > sweep.max_params_m",
            }[kind],
            **dict.fromkeys(["accuracy", "error_rate", "valid_loss", "train_time_s", "images_per_s", "peak_memory_mb"]),
            "params_m": params_m,
        }
        live = ws / "plots/live/sweep" / entry
        live.mkdir(parents=True, exist_ok=True)
        pairs = "actual,predicted,image\n"
        if kind == "ok":
            right = set(rng.sample(range(n_images), round(n_images * (0.55 + 0.44 * rng.betavariate(8, 1.5)))))
            acc = len(right) / n_images
            record.update(
                n_valid=n_images,
                accuracy=round(acc, 6),
                error_rate=round(1 - acc, 6),
                valid_loss=round(rng.uniform(0.05, 1), 6),
                train_time_s=round(params_m * rng.uniform(0.5, 2) + 5, 1),
                images_per_s=1000.0,
                peak_memory_mb=round(params_m * 40, 1),
                # inference cost follows the size (no random draw: the rest of the zoo stays as it was)
                gmacs=round(params_m * 0.4, 3),
                infer_images_per_s=round(2e4 / (params_m + 5), 1),
                infer_latency_ms=round(params_m / 20 + 2, 2),
                infer_latency_p90_ms=round(params_m / 15 + 2, 2),
                infer_status="measured",
            )
            curve = [acc - (epochs - 1 - e) * rng.uniform(0, 0.05) for e in range(epochs)]
            for metric in METRICS:
                values = {"accuracy": curve, "error_rate": [1 - a for a in curve]}.get(
                    metric, [1.5 * (1 - a) + rng.uniform(0, 0.2) for a in curve]
                )
                name = metric.split("/")[-1]
                rows = "".join(f"{e}\t{v:.6f}\n" for e, v in enumerate(values))
                _write(live / "plots/metrics" / f"{metric}.tsv", f"step\t{name}\n{rows}")
            wrong = {c: CLASSES[(k + 1) % len(CLASSES)] for k, c in enumerate(CLASSES)}
            pairs += "".join(f"{c},{c if i in right else wrong[c]},img{i:04d}.jpg\n" for i, c in enumerate(actual))
        _write(ws / "records/sweep" / f"{entry}.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
        _write(ws / "metrics/sweep" / f"{entry}.json", json.dumps(accuracy_metrics(record), indent=2) + "\n")
        _write(ws / "plots/confusion/sweep" / f"{entry}.csv", pairs)
        _write(ws / "models/sweep" / entry / "model.json", json.dumps({"arch": arch}) + "\n")


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
    }


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"{' '.join(args)} failed in {cwd}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def _dvc(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "dvc", *args], ws)


def _images(folder: Path) -> None:
    """The five_class image folder's shape: one folder per class, IMAGES_PER_CLASS small files in each."""
    for c in CLASSES:
        for n in range(IMAGES_PER_CLASS):
            _write(folder / c / f"{n:08x}.jpg", f"{c} {n}\n" * 64)


def _init(ws: Path) -> None:
    ws.mkdir(parents=True)
    _run(["git", "init", "-q"], ws)
    _dvc(ws, "init", "-q")


def _commit_all(ws: Path) -> None:
    """Record every stage's outputs in dvc.lock without running anything, then commit to git."""
    _dvc(ws, "commit", "-f", "-q")
    _run(["git", "add", "-A"], ws)
    _run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "zoo"], ws)


def zoo_workspace(ws: Path, archs: list[str]) -> None:
    """This project with `archs` in sweep.archs and every stage's outputs in place, recorded in dvc.lock."""
    import yaml

    _init(ws)
    for name in CODE:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, ws / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sweep"]["archs"] = archs
    for section, values in TRAINABLE.items():
        params[section].update(values)
    params["base"]["threads"] = 1
    _write(ws / "params.yaml", yaml.safe_dump(params, sort_keys=False))
    _write(ws / "data/params.ok", "ok\n")
    _write(ws / "data/decode_size.txt", f"{params['train']['img_size'] or 224}\n")  # check_params' second output
    _write(ws / "data/pets/images/Abyssinian_1.jpg", "cat\n")
    _write(ws / "records/download_pets.json", "{}\n")
    for ds in params["datasets"]:
        _write(ws / "manifests" / f"{ds}.csv", "class,url\n")
        _write(ws / "data" / ds / "report.csv", "url,status\n")
        _write(ws / "records/scrape" / f"{ds}.json", "{}\n")
        _write(ws / "metrics/scrape" / f"{ds}.json", "{}\n")
        _write(ws / "review" / ds / "index.html", "<html></html>\n")
        if ds != params["sweep"]["dataset"]:
            _write(ws / "data" / ds / "images/a/0.jpg", "image\n")
    _images(ws / "data" / params["sweep"]["dataset"] / "images")
    decoded_dataset(ws / "data" / params["sweep"]["dataset"] / "decoded.safetensors", ws.parent / "decoded_images")
    for task in params["finetune"]["tasks"]:
        _write(ws / "models/finetune" / task / "model.json", "{}\n")
        _write(ws / "plots/live/finetune" / task / "plots/metrics/accuracy.tsv", "step\taccuracy\n0\t0.9\n")
        _write(ws / "plots/confusion/finetune" / f"{task}.csv", "actual,predicted\n")
        _write(ws / "records/finetune" / f"{task}.json", "{}\n")
        _write(ws / "metrics/finetune" / f"{task}.json", "{}\n")
    write_sweep_outputs(ws, archs)
    _write(ws / "models/export/export.json", "{}\n")  # the export stage's output (export.model: resnet34-42)
    plot_cmd = yaml.safe_load((ws / "dvc.yaml").read_text())["stages"]["plot"]["cmd"].split()
    _run([sys.executable, *plot_cmd[1:]], ws)  # the real plot stage, on the whole zoo
    _commit_all(ws)


def trivial_workspace(ws: Path, archs: list[str], dep: str = "data/five_class/images") -> None:
    """The same shape with nothing else: as many matrix entries, each depending on the same image folder (or
    on one file, `dep=DECODED`)."""
    import yaml

    _init(ws)
    _write(ws / "params.yaml", yaml.safe_dump({"archs": archs}))
    _write(ws / "dvc.yaml", TRIVIAL_DVC_YAML.replace("DEP", dep))
    _images(ws / "data/five_class/images")
    _write(ws / DECODED, "decoded images\n" * 4096)
    for arch in archs:
        _write(ws / "out" / f"{arch}.txt", f"{arch}\n")
    _commit_all(ws)


def archs_file_variant(dvc_yaml: str) -> str | None:
    """dvc.yaml with the sweep's list read from archs.yaml (`vars:`) instead of params.yaml, so that each entry's
    params dependency parses a small params.yaml: DVC parses the whole params file once per stage, which grows
    with the list (O(n^2) in all). None when dvc.yaml no longer has the lines this edits."""
    edits = [
        ("stages:\n", "vars:\n  - archs.yaml\nstages:\n"),
        ("      arch: ${sweep.archs}\n", "      arch: ${archs}\n"),
        ("    params:\n      - sweep.archs\n", "    params:\n      - archs.yaml:\n          - archs\n"),
    ]
    for old, new in edits:
        if dvc_yaml.count(old) != 1:
            return None
        dvc_yaml = dvc_yaml.replace(old, new)
    return dvc_yaml


def archs_file_workspace(zoo: Path, ws: Path) -> bool:
    """A copy of the zoo workspace changed by archs_file_variant and recommitted; False if it does not apply."""
    import yaml

    changed = archs_file_variant((zoo / "dvc.yaml").read_text())
    if changed is None:
        return False
    shutil.copytree(zoo, ws, symlinks=True)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    _write(ws / "archs.yaml", yaml.safe_dump({"archs": params["sweep"].pop("archs")}))
    _write(ws / "params.yaml", yaml.safe_dump(params, sort_keys=False))
    _write(ws / "dvc.yaml", changed)
    _commit_all(ws)
    return True


# Where `dvc status` spends its time, by DVC function (cumulative; from cProfile, which inflates every figure
# alike, so the shares are what to read).
PROFILE_PARTS = {
    "params (params.yaml parsed per stage)": ("dependency/param.py", "read_params"),
    "outputs (hash per out)": ("dvc/output.py", "workspace_status"),
    "dependencies (hash per dep)": ("dependency/base.py", "workspace_status"),
    "dvc.lock parsing": ("dvc/dvcfile.py", "lockfile_contents"),
    "dvc.yaml + index": ("repo/index.py", "from_repo"),
}


def profile_status(ws: Path) -> dict[str, Any]:
    """One `dvc status` under cProfile: total seconds and each PROFILE_PARTS share of it."""
    import pstats

    prof = ws.parent / f"{ws.name}_status.prof"
    _run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "dvc", "status"], ws)
    stats = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
    total = max(ct for _, _, _, ct, _ in stats.values())
    out: dict[str, Any] = {"profiled_total_s": round(total, 2)}
    for part, (file, func) in PROFILE_PARTS.items():
        cum = max((v[3] for (f, _, name), v in stats.items() if f.endswith(file) and name == func), default=0.0)
        out[part] = round(cum / total, 3)
    return out


def _check(res: subprocess.CompletedProcess, command: str) -> None:
    text = res.stdout + res.stderr
    up_to_date = "up to date" in text if command == "status" else "Running stage" not in text
    if not up_to_date:
        raise RuntimeError(f"`dvc {command}` found work to do, so it would not measure bookkeeping:\n{text[-2000:]}")


def measure(sides: dict[str, Path], repeats: int, arch: str) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Interleaved `dvc status`, `dvc repro --dry` and `dvc commit -f` of one entry (`arch`) in every workspace,
    after one warm-up each: (wall, CPU) seconds per run. The commit is the record-keeping `dvc repro` does after
    every stage it runs or restores: hash that stage's outputs and rewrite dvc.lock, all of it."""
    commands = {"status": ["status"], "repro_dry": ["repro", "--dry"], "commit_one": ["commit", "-f", "-q"]}
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {c: {s: [] for s in sides} for c in commands}
    for rep in range(repeats + 1):
        for command, args in commands.items():
            for side, ws in sides.items():
                name = f"entry@{arch}" if "trivial" in side else f"sweep@{arch}-{SEED}"
                stage = [name] if command == "commit_one" else []
                res, wall, cpu = timed(lambda ws=ws, args=[*args, *stage]: _dvc(ws, *args))
                if command != "commit_one":
                    _check(res, command)
                if rep:  # the first round warms the page cache and DVC's state database
                    samples[command][side].append((wall, cpu))
    return samples


def decoded_dataset(path: Path, scratch: Path) -> None:
    """A real decoded dataset (stages.decode's file) of 16 generated 40 px images per class, at 32 px."""
    from demo.synthetic import draw
    from imgclf.training.data import write_decoded

    files, labels = [], []
    for i, c in enumerate(CLASSES):
        (scratch / c).mkdir(parents=True, exist_ok=True)
        for n in range(16):
            files.append(scratch / c / f"{n:02d}.jpg")
            draw(f"{c}/{n}", i, size=(40, 40)).save(files[-1], quality=90)
            labels.append(c)
    write_decoded(path, scratch, files, labels, size=32, threads=1)


def forget(ws: Path, names: list[str]) -> None:
    """The zoo workspace as an interrupted `make sweep` leaves it for the entries `names` (`<arch>-<seed>`): their
    results in the run-cache (`dvc commit` put them there), but neither their outputs nor their dvc.lock records."""
    import yaml

    path = ws / "dvc.lock"
    lock = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
    for name in names:
        del lock["stages"][f"sweep@{name}"]
        shutil.rmtree(ws / "models/sweep" / name)
        shutil.rmtree(ws / "plots/live/sweep" / name)
        (ws / "plots/confusion/sweep" / f"{name}.csv").unlink()
    path.write_text(yaml.dump(lock, Dumper=yaml.CSafeDumper, sort_keys=False))


def measure_restore(ws: Path, names: list[str]) -> dict[str, Any]:
    """The entries `names` back from the run-cache into the zoo workspace, with their dvc.lock records, by `dvc repro
    sweep@...` (dvc.lock written after each entry) and by `make sweep` (written once; it also works out what is
    pending among all the entries), each from a fresh process: (wall, CPU) seconds of each."""
    forget(ws, names)
    res, wall, cpu = timed(lambda: _dvc(ws, "repro", *(f"sweep@{n}" for n in names)))
    _check(res, "repro")  # restored: nothing ran
    forget(ws, names)
    ours = make_sweep(ws)  # bench/sweep.py
    if ours["trained"] or ours["restored"] != len(names):
        raise RuntimeError(f"make sweep trained {ours['trained']} and restored {ours['restored']} of {names}")
    return {"entries": len(names), "dvc_repro": {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}, "ours": ours}


def measure_marginal(zoo: Path, work: Path) -> dict[str, Any]:
    """`make sweep` training 4, then 8 of the zoo's tiny entries (on copies of the zoo workspace without its
    run-cache, so they train), all the others recorded: the marginal cost of an entry is ((wall - training) with
    8 - (wall - training) with 4) / 4; `per_entry_after_start_s` takes the time until the first entry started
    off both (DVC's status and the workers' start, which vary from run to run by more than an entry costs), and
    `bookkeeping_per_entry_s` is each run's own (wall - start - training - the dvc.lock write) / entries."""
    runs = {}
    for archs in (MARGINAL, MARGINAL + MARGINAL_MORE):
        names = [f"{a}-{SEED}" for a in archs]
        ws = work / f"marginal{len(archs)}"
        shutil.copytree(zoo, ws, symlinks=True)
        shutil.rmtree(ws / ".dvc/cache/runs")
        forget(ws, names)
        runs[len(archs)] = run = make_sweep(ws)
        if sorted(run["trained"]) != sorted(names):
            raise RuntimeError(f"make sweep trained {run['trained']}, not {names}")
        shutil.rmtree(ws)
    few, more = (runs[n]["wall_s"] - runs[n]["train_s"] for n in sorted(runs))
    few_after, more_after = (runs[n]["wall_s"] - runs[n]["start_s"] - runs[n]["train_s"] for n in sorted(runs))
    return {
        "runs": runs,
        "per_entry_s": round((more - few) / len(MARGINAL_MORE), 3),
        "per_entry_after_start_s": round((more_after - few_after) / len(MARGINAL_MORE), 3),
        "bookkeeping_per_entry_s": [runs[n]["bookkeeping_per_entry_s"] for n in sorted(runs)],
    }


def summary(runs: list[tuple[float, float]]) -> dict[str, Any]:
    """Median wall and CPU seconds of `runs`, with the raw values for results.json."""
    return {
        "wall_s": round(statistics.median(w for w, _ in runs), 3),
        "cpu_s": round(statistics.median(c for _, c in runs), 3),
        "wall_all_s": [round(w, 3) for w, _ in runs],
        "cpu_all_s": [round(c, 3) for _, c in runs],
    }


def zoo_section(
    work: Path | None = None,
    repeats: int = 1,
    archs: list[str] | None = None,
    variant: bool = False,
    profile: bool = False,
) -> dict[str, Any]:
    """`dvc status` / `dvc repro --dry` / one entry's `dvc commit -f` seconds with the whole zoo in the sweep and
    in the same-shaped trivial project, with their ratios (goal <= 1.5 for status). Keys: zoo_status_s,
    trivial_status_s, status_ratio, zoo_repro_dry_s, ..., zoo_commit_one_s, ..., entries, build_s, goal, the raw
    samples; with
    `variant`, the same for archs_file_variant (archs_file_status_s, archs_file_status_ratio, ...); with
    `profile`, where the zoo's `dvc status` spends its time (profile)."""
    archs = archs or zoo_archs()
    with tempfile.TemporaryDirectory(prefix="zoo_bench_", dir=work) as tmp:
        start = time.perf_counter()
        sides = {name: Path(tmp) / name for name in ("zoo", "trivial", "trivial_file")}
        zoo_workspace(sides["zoo"], archs)
        trivial_workspace(sides["trivial"], archs)
        trivial_workspace(sides["trivial_file"], archs, dep=DECODED)
        if variant and archs_file_workspace(sides["zoo"], Path(tmp) / "archs_file"):
            sides["archs_file"] = Path(tmp) / "archs_file"
        build_s = time.perf_counter() - start
        samples = measure(sides, repeats, archs[len(archs) // 2])
        spread = archs[:: max(1, len(archs) // RESTORED)][:RESTORED]
        restored = measure_restore(sides["zoo"], [f"{a}-{SEED}" for a in spread])
        marginal = measure_marginal(sides["zoo"], Path(tmp)) if set(MARGINAL + MARGINAL_MORE) <= set(archs) else {}
        profiled = {side: profile_status(sides[side]) for side in sides if "trivial" not in side} if profile else {}
    out: dict[str, Any] = {"entries": len(archs), "build_s": round(build_s, 1), "repeats": repeats, "goal": GOAL}
    for command, by_side in samples.items():
        for side, runs in by_side.items():
            out[f"{side}_{command}"] = summary(runs)
            out[f"{side}_{command}_s"] = out[f"{side}_{command}"]["wall_s"]
        for side in by_side:
            if "trivial" not in side:
                out[f"{side}_{command}_ratio"] = round(out[f"{side}_{command}_s"] / out[f"trivial_{command}_s"], 3)
                out[f"{side}_{command}_ratio_file"] = round(
                    out[f"{side}_{command}_s"] / out[f"trivial_file_{command}_s"], 3
                )
        out[f"{command}_ratio"] = out[f"zoo_{command}_ratio"]
    out["restore"] = restored
    out["zoo_restore_s"] = restored["ours"]["wall_s"]
    out["zoo_restore_dvc_repro_s"] = restored["dvc_repro"]["wall_s"]
    if marginal:
        out["marginal"] = marginal
        out["zoo_marginal_entry_s"] = marginal["per_entry_s"]
    if profiled:
        out["profile"] = profiled
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: print zoo_section()'s figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="folder for the two temporary workspaces (default: the system's)")
    ap.add_argument("--repeats", type=int, default=1, help="measured rounds after the warm-up round")
    ap.add_argument("--entries", type=int, help="only the first N architectures (a quicker, smaller run)")
    ap.add_argument("--variant", action="store_true", help="also measure the arch list in a vars file")
    ap.add_argument("--profile", action="store_true", help="also profile one `dvc status` of each zoo workspace")
    args = ap.parse_args(argv)
    archs = zoo_archs()[: args.entries] if args.entries else None
    print(json.dumps(zoo_section(args.work, args.repeats, archs, args.variant, args.profile), indent=2))


if __name__ == "__main__":
    main()
