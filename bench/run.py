"""`make bench`: the pipeline's cost figures on this machine, against plain baselines measured in the same run.

    python -m bench.run [--only overhead,startup,repro,gpu,sweep,zoo] [--work DIR]

Prints a table and writes bench/results.json: the headline figures at the top level, the details per section.
A script, not a test: the numbers depend on the machine and on whatever else runs on it (the load average is
recorded). About 4 minutes on 2 CPU cores, offline. The `gpu` section runs only where CUDA is available and is
measured by bench/gpu.py (`run(work: Path) -> dict`). The `zoo` section (bench/zoo.py: DVC bookkeeping with all
1,102 sweep entries) takes 15+ minutes and runs alone: `make bench-zoo`; so does the `sweep` section (bench/sweep.py:
`make sweep` on 4 tiny entries of the demo, about 6 minutes): `make bench-sweep`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
SECTIONS = ("overhead", "startup", "repro", "gpu", "sweep", "zoo")
DEFAULT = ("overhead", "startup", "repro", "gpu")  # zoo (1,102 DVC entries) takes 15+ minutes: `make bench-zoo`


def gpu(work: Path) -> dict[str, Any] | None:
    """The GPU section from bench/gpu.py when CUDA is available; None (not measured) otherwise."""
    import torch

    if not torch.cuda.is_available():
        return None
    from bench import gpu as gpu_bench  # only where there is a GPU to measure

    return gpu_bench.run(work)


def sweep(work: Path) -> dict[str, Any]:
    """`make sweep` on 4 pending tiny entries of the demo, JOBS=1 and JOBS=2: wall, start and overhead per entry."""
    from bench.sweep import section

    return section(work)


def zoo(work: Path) -> dict[str, Any]:
    """`dvc status` / `dvc repro --dry` with all 1,102 sweep entries against a same-shaped trivial project."""
    from bench.zoo import zoo_section

    work.mkdir(parents=True, exist_ok=True)
    return zoo_section(work)


def machine() -> dict[str, Any]:
    """Cores, CPU model, load and the versions that matter for the numbers."""
    import importlib.metadata as md

    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
    versions = {pkg: md.version(pkg) for pkg in ("torch", "fastai", "timm", "dvc")}
    load = round(os.getloadavg()[0], 2)
    return dict(cores=os.cpu_count(), cpu=models[0] if models else "", load_average=load, **versions)


# headline key -> (section, key in the section's results): the figures the README's table shows
HEADLINE = {
    "train_overhead_ratio": ("overhead", "ratio_wall"),
    "train_overhead_ratio_cpu": ("overhead", "ratio_cpu"),
    "loader_images_per_s": ("overhead", "loader_images_per_s"),
    "step_images_per_s": ("overhead", "step_images_per_s"),
    "startup_s": ("startup", "startup_s"),
    "noop_repro_s": ("repro", "noop_repro_s"),
    "noop_repro_ratio": ("repro", "ratio"),
    "sweep_jobs1_overhead_per_entry_s": ("sweep", "jobs1_overhead_per_entry_s"),
    "sweep_jobs1_start_s": ("sweep", "jobs1_start_s"),
    "sweep_jobs2_over_jobs1": ("sweep", "jobs2_over_jobs1"),
    "zoo_status_s": ("zoo", "zoo_status_s"),
    "zoo_status_ratio": ("zoo", "status_ratio"),
    "zoo_status_ratio_file": ("zoo", "zoo_status_ratio_file"),
    "zoo_commit_one_s": ("zoo", "zoo_commit_one_s"),
    "zoo_commit_one_ratio": ("zoo", "zoo_commit_one_ratio"),
    "zoo_restore_s": ("zoo", "zoo_restore_s"),
    "zoo_restore_dvc_repro_s": ("zoo", "zoo_restore_dvc_repro_s"),
    "zoo_marginal_entry_s": ("zoo", "zoo_marginal_entry_s"),
}


def row(label: str, ours: str, note: str = "") -> str:
    """One line of the printed table."""
    return f"{label:<60} {ours:<11} {note}".rstrip()


def table(results: dict[str, Any]) -> list[str]:
    """The printed table: each figure with its baseline or what it is made of."""
    lines = [row("measure", "ours", "baseline / note")]
    if o := results.get("overhead"):
        ours, plain = o["ours"], o["plain"]
        what = f"{o['arch']}, {o['img_size']} px, {o['images']} images, {o['threads']} threads"
        note = f"{plain['wall_s']:.2f} s plain loop; {o['ratio_wall']:.2f}x wall, {o['ratio_cpu']:.2f}x CPU"
        lines += [row(f"training epoch ({what})", f"{ours['wall_s']:.2f} s", note)]
        lines += [row("  accuracy after the timed epochs", f"{ours['accuracy']:.3f}", f"{plain['accuracy']:.3f}")]
        speeds = f"{o['loader_images_per_s']:.0f}", f"{o['step_images_per_s']:.0f}"
        lines += [row("  DataLoader img/s vs model step img/s", *speeds)]
    if s := results.get("startup"):
        run = s["runs"][-1]
        note = f"stage wall {run['wall_s']:.2f} s - train_time_s {run['train_time_s']:.2f} s"
        lines += [row("stage start-up (sweep stage, fresh interpreter)", f"{s['startup_s']:.2f} s", note)]
    if r := results.get("repro"):
        note = f"{r['floor_s']:.2f} s one-stage project; {r['ratio']:.2f}x"
        lines += [row(f"no-op dvc repro (demo, {r['stages']} stages)", f"{r['noop_repro_s']:.2f} s", note)]
    if (w := results.get("sweep")) and "error" not in w:
        lines += sweep_rows(w)
    if (z := results.get("zoo")) and "error" not in z:
        lines += zoo_rows(z)
    gpu_figures = (results.get("gpu") or {}).items()
    lines += [row(f"gpu {key}", str(value)) for key, value in gpu_figures if not isinstance(value, (dict, list))]
    return lines + [row(f"FAILED {name}", "", res["error"]) for name, res in results.items() if res and "error" in res]


def sweep_rows(w: dict[str, Any]) -> list[str]:
    """The sweep section's rows: overhead per entry with JOBS=1 and 2, and their wall times' ratio."""
    lines = []
    for j in (1, 2):
        start, train, wall = (w[f"jobs{j}_{key}_s"] for key in ("start", "train", "wall"))
        note = f"start {start:.1f} s, training {train:.1f} s, wall {wall:.1f} s"
        lines += [row(f"make sweep JOBS={j}: overhead per entry", f"{w[f'jobs{j}_overhead_per_entry_s']:.2f} s", note)]
    return lines + [row("  JOBS=2 wall / JOBS=1 wall", f"{w['jobs2_over_jobs1']:.2f}")]


def zoo_rows(z: dict[str, Any]) -> list[str]:
    """The zoo section's rows: DVC's commands against the trivial projects, make sweep's restore and marginal cost."""
    lines = []
    commands = (("status", "dvc status"), ("repro_dry", "dvc repro --dry"), ("commit_one", "1 entry's dvc commit"))
    for cmd, label in commands:
        if f"zoo_{cmd}_s" not in z:
            continue
        note = (
            f"trivial project {z[f'trivial_{cmd}_s']:.1f} s ({z[f'zoo_{cmd}_ratio']:.2f}x), "
            f"one-file dep {z[f'trivial_file_{cmd}_s']:.1f} s ({z[f'zoo_{cmd}_ratio_file']:.2f}x)"
        )
        lines += [row(f"{label}, {z['entries']} sweep entries", f"{z[f'zoo_{cmd}_s']:.1f} s", note)]
    if r := z.get("restore"):
        note = f"dvc repro of the same entries {r['dvc_repro']['wall_s']:.1f} s (dvc.lock written after each)"
        lines += [row(f"make sweep's restore of {r['entries']} entries", f"{r['ours']['wall_s']:.1f} s", note)]
        once = f"DVC's status {r['ours']['status_s']:.1f} s, the dvc.lock write {r['ours']['lock_write_s']:.1f} s"
        lines += [row("  of which one-time", "", once)]
    if m := z.get("marginal"):
        inside = ", ".join(f"{x:.2f}" for x in m.get("bookkeeping_per_entry_s", []))
        note = f"(wall - training) with 8 pending - with 4, / 4; per entry inside each run: {inside} s"
        lines += [row(f"make sweep, marginal cost of one entry ({z['entries']})", f"{m['per_entry_s']:.2f} s", note)]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, print the table, write bench/results.json; 1 if a section failed."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(DEFAULT), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--work", type=Path, help="scratch folder, kept (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    if unknown := sorted(set(only) - set(SECTIONS)):
        ap.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning, which on a shared machine made a
    # CPU training step several times slower. Offline: no hub retries, no analytics.
    for key, value in (("OMP_WAIT_POLICY", "PASSIVE"), ("HF_HUB_OFFLINE", "1"), ("DVC_NO_ANALYTICS", "1")):
        os.environ.setdefault(key, value)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-"))
    info = machine()
    print(f"make bench on {json.dumps(info)}", flush=True)
    results: dict[str, Any] = {}
    start = time.perf_counter()
    from bench import repro, train

    measure: dict[str, Callable[[Path], dict[str, Any] | None]] = dict(
        overhead=train.overhead, startup=train.startup, repro=repro.noop_repro, gpu=gpu, sweep=sweep, zoo=zoo
    )
    try:
        for name in only:
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
            try:
                results[name] = measure[name](work / name)
            except Exception as e:  # noqa: BLE001 - one broken section must not lose the others' figures
                traceback.print_exc()
                results[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    took = round(time.perf_counter() - start, 1)
    print(f"\nResults ({time.strftime('%Y-%m-%d %H:%M')}, {took / 60:.1f} min):\n" + "\n".join(table(results)))
    # sections not measured this time keep their last figures (the zoo section runs on its own)
    previous = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").is_file() else {}
    kept = {name: previous[name] for name in SECTIONS if name not in results and name in previous}
    results = {**kept, **results}
    figures = {key: (results.get(section) or {}).get(name) for key, (section, name) in HEADLINE.items()}
    out = {**figures, "machine": info, "took_s": took, **results}
    (HERE / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {HERE / 'results.json'}")
    return 1 if any(res and "error" in res for res in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
