"""`make bench`: measure the pipeline against plain baselines on this machine, side by side in one run.

    python -m bench.run [--only train,prep,input,repro,startup] [--work DIR] [--keep]

Prints a table (each figure with its goal and anchor), writes bench/results.json (the headline ratios and
every raw number) and saves what it printed as bench/last_run.txt. A script, not a test: numbers depend on
the machine and on whatever else runs on it, which the table reports (`others` = share of the cores other
processes used while we measured). About 5 minutes on 2 cores, offline.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from bench.common import THREADS, load_average
from bench.training import BEFORE

HERE = Path(__file__).resolve().parent
SECTIONS = ("train", "input", "prep", "repro", "startup")
GOALS = {"train": 1.05, "prep": 2.0, "repro": 1.5}
ANCHOR_TRAIN = 1.29  # fastai's default path against a plain loop, before this work (resnet18, 64 px, 640 images)
CONTENDED = 0.10  # share of the cores other processes used above which wall times are mostly their doing


class Tee(io.TextIOBase):
    """Write to the terminal and keep a copy (for bench/last_run.txt)."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.stream.flush()
        return self.copy.write(text)


def machine() -> dict[str, Any]:
    """Cores, CPU model and the versions that matter for the numbers."""
    import importlib.metadata as md

    model = "unknown"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or model
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            **{pkg: md.version(pkg) for pkg in ("torch", "fastai", "timm", "dvc", "dvclive", "Pillow")},
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)")}


def run_sections(only: tuple[str, ...], work: Path) -> dict[str, Any]:
    """Run the chosen sections in order; a failing section is recorded and the others still run."""
    from bench import prep, repro, startup, training

    results: dict[str, Any] = {}
    learner = None

    def train() -> dict[str, Any]:
        nonlocal learner
        figures, learner = training.train_overhead(work)
        return {**figures, "stage": training.stage_result(work)}

    def input_() -> dict[str, Any]:
        figures = training.input_vs_compute(learner if learner is not None else training.trained_learner(work))
        return {**figures, "omp_wait_policy": training.omp_wait_policy_effect()}

    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "train": train, "input": input_, "prep": lambda: prep.prep_speed(work),
        "repro": lambda: repro.repro_overhead(work), "startup": lambda: startup.startup(work)}
    for name in only:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ... (load average {load_average()})", flush=True)
        start = time.perf_counter()
        try:
            results[name] = steps[name]()
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the others' numbers
            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        results[name]["section_s"] = round(time.perf_counter() - start, 1)
    return results


def _x(value: float) -> str:
    return f"{value:.2f}x" if value else "-"


def _verdict(value: float, goal: float, at_most: bool) -> str:
    if not value:
        return "not run"
    return "met" if (value <= goal if at_most else value >= goal) else "NOT met"


def table(results: dict[str, Any]) -> list[str]:
    """The printed table: one block per section, each figure with its baseline, ratio, goal and anchor."""
    rows: list[tuple[str, str, str, str, str]] = []
    t = results.get("train", {})
    if "ours" in t:
        o, p = t["ours"], t["plain"]
        busy = max(o["others_share"], p["others_share"]) > CONTENDED
        rows += [
            ("1 training epoch, wall (median of %d)" % t["repeats"], f"{o['wall_s']:.2f} s", f"{p['wall_s']:.2f} s",
             _x(t["ratio_wall"]), f"<= {GOALS['train']}x ({_verdict(t['ratio_wall'], GOALS['train'], True)}); "
                                  f"anchor {ANCHOR_TRAIN}x before"),
            ("  same, CPU time (our own work only)", f"{o['cpu_s']:.2f} s", f"{p['cpu_s']:.2f} s",
             _x(t["ratio_cpu"]), f"others used {o['others_share']:.0%} / {p['others_share']:.0%} of the cores"
                                 + (": trust CPU and fastest wall over median wall" if busy else "")),
            ("  same, fastest of each side (wall)", f"{o['wall_min_s']:.2f} s", f"{p['wall_min_s']:.2f} s",
             _x(t["ratio_wall_min"]), ""),
            ("  accuracy after the timed epochs", f"{t['ours_accuracy']:.3f}", f"{t['plain_accuracy']:.3f}", "",
             "same data, same model; both learn"),
            ("  stage train_model: accuracy / valid loss", f"{t['stage']['accuracy']:.4f} / "
             f"{t['stage']['valid_loss']:.4f}", f"{BEFORE['accuracy']:.4f} / {BEFORE['valid_loss']:.4f}", "",
             "fine_tune(1) from scratch; baseline = the code before the speed-ups"),
        ]
    i = results.get("input", {})
    if "loader" in i:
        rows += [("3 DataLoader alone vs model step (img/s)", f"{i['loader_images_per_s']:.0f}",
                  f"{i['step_images_per_s']:.0f}", "",
                  f"loading is {i['loader_share_of_epoch']:.0%} of an epoch (num_workers 0)")]
        omp = i["omp_wait_policy"]
        rows += [("  s per step, OpenMP default vs PASSIVE wait", f"{omp['default']['step_s']:.2f} s",
                  f"{omp['PASSIVE']['step_s']:.2f} s", _x(omp["default_over_passive"]),
                  f"fresh processes; others used {omp['default']['others_share']:.0%} / "
                  f"{omp['PASSIVE']['others_share']:.0%} of the cores")]
    p2 = results.get("prep", {})
    if "fastai" in p2:
        best = p2[p2["ours_best"]]
        rows += [
            (f"2 verify+resize {p2['images']} 500x375 JPEGs (img/s)", f"{best['images_per_s']:.0f}",
             f"{p2['fastai']['images_per_s']:.0f}", _x(p2["speedup_wall"]),
             f">= {GOALS['prep']}x ({_verdict(p2['speedup_wall'], GOALS['prep'], False)}); ours = {p2['ours_best']}"),
            ("  per CPU second (img/cpu-s)", f"{best['images_per_cpu_s']:.0f}",
             f"{p2['fastai']['images_per_cpu_s']:.0f}", _x(p2["speedup_cpu"]),
             f"threads {p2['ours_threads']['images_per_s']:.0f} img/s, "
             f"processes {p2['ours_processes']['images_per_s']:.0f} img/s"),
        ]
        c = p2["per_image_cpu"]
        floor_ratio = (c["decode_ms"] + c["resize_ms"] + c["encode_ms"] + 2 * c["draft_decode_ms"]) / (
            c["decode_ms"] + c["resize_ms"] + c["encode_ms"])
        rows += [("  image work, CPU ms per file (1 thread)", f"{c['decode_ms'] + c['resize_ms'] + c['encode_ms']:.2f}",
                  f"+{2 * c['draft_decode_ms']:.2f}", _x(round(floor_ratio, 2)),
                  f"ours = decode {c['decode_ms']:.2f} + resize {c['resize_ms']:.2f} + encode {c['encode_ms']:.2f}, "
                  "nothing else to cut; fastai adds 2 draft decodes, then process/IPC overhead")]
    r = results.get("repro", {})
    if "demo" in r:
        rows += [("4 no-op dvc repro: demo vs 1-stage floor", f"{r['demo']['wall_s']:.2f} s",
                  f"{r['floor']['wall_s']:.2f} s", _x(r["ratio_wall"]),
                  f"<= {GOALS['repro']}x ({_verdict(r['ratio_wall'], GOALS['repro'], True)}); "
                  f"{r['yaml']['stages']} stages, dvc.lock {r['yaml']['dvc.lock']['bytes']} B")]
        if "demo_file_dep" in r:
            rows += [("  with params.yaml as a file dep of check_params", f"{r['demo_file_dep']['wall_s']:.2f} s",
                      f"{r['floor']['wall_s']:.2f} s", _x(r["file_dep_ratio_wall"]),
                      f"dvc.lock {r['file_dep_lock_bytes']} B")]
    s = results.get("startup", {})
    if "seconds_from_launch" in s:
        sec, imp = s["seconds_from_launch"], s["imports_s"]
        rows += [("5 stage launch -> first training batch", f"{sec['first_batch']:.2f} s", "", "",
                  f"imports {sec['imported']:.2f} s ({s['import_share']:.0%}), DataLoaders +"
                  f"{sec['data_ready'] - sec['imported']:.2f} s, learner +{sec['learner_ready'] - sec['data_ready']:.2f}"
                  f" s, fit start +{sec['first_batch'] - sec['learner_ready']:.2f} s"),
                 ("  fresh `python -c 'import X'` (s)", "", "", "",
                  ", ".join(f"{k} {v:.2f}" for k, v in imp.items()) + " (incl. interpreter exit)")]
    widths = [max(len(row[c]) for row in rows + [("measure", "ours", "baseline", "ratio", "")]) for c in range(4)]
    head = ("measure", "ours", "baseline", "ratio", "goal / notes")
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths + [0])).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths + [0])).rstrip() for row in rows]
    errors = [f"{name}: {res['error']}" for name, res in results.items() if isinstance(res, dict) and "error" in res]
    return lines + [f"FAILED {e}" for e in errors]


def headline(results: dict[str, Any]) -> dict[str, float | None]:
    """The three ratios the issue asks for (None for a section that did not run)."""
    train = results.get("train", {})
    return {"train_overhead_ratio": train.get("ratio_wall"), "train_overhead_ratio_cpu": train.get("ratio_cpu"),
            "train_overhead_ratio_fastest_wall": train.get("ratio_wall_min"),
            "prep_speedup_vs_fastai": results.get("prep", {}).get("speedup_wall"),
            "noop_repro_ratio": results.get("repro", {}).get("ratio_wall")}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write bench/results.json and bench/last_run.txt."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args(argv)
    only = tuple(s for s in args.only.split(",") if s)
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. With other jobs on the cores,
    # spinning made one training step up to 7x slower and its CPU time meaningless; see the README.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    tee = Tee(sys.stdout)
    sys.stdout = tee
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    try:
        info = machine()
        print(f"make bench: {info['cores']} cores ({info['cpu']}), {THREADS} torch threads / workers per side, "
              f"OMP_WAIT_POLICY={info['omp_wait_policy']}; torch {info['torch']}, fastai {info['fastai']}, "
              f"timm {info['timm']}, dvc {info['dvc']}")
        start = time.perf_counter()
        results = run_sections(only, work)
        took = time.perf_counter() - start
        print(f"\nResults ({time.strftime('%Y-%m-%d %H:%M')}, {took / 60:.1f} min; load average now "
              f"{load_average()} on {info['cores']} cores):")
        print("\n".join(table(results)))
        out = {**headline(results), "machine": info, "took_s": round(took, 1), **results}
        (HERE / "results.json").write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nwrote {HERE / 'results.json'}")
    finally:
        sys.stdout = tee.stream
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    (HERE / "last_run.txt").write_text(tee.copy.getvalue())
    return 1 if any(isinstance(r, dict) and "error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
