"""Synthetic sweep outputs for the whole zoo: what the sweep stage writes for each entry, with plausible random
values, so that the plot stage and DVC can be exercised at 1,102 entries without training anything. Test data,
never a result: tests/test_zoo_page.py and `make bench-zoo` (bench/zoo.py) use it."""

from __future__ import annotations

import json
import random
from pathlib import Path

from imgclf.metrics import accuracy_metrics

CLASSES = ["eiffel_tower", "taj_mahal", "colosseum", "statue_of_liberty", "big_ben"]
METRICS = ("accuracy", "error_rate", "train/loss", "eval/loss")  # DVCLive's files for a fastai fine_tune


def write_file(path: Path, text: str) -> None:
    """Write `text` to `path`, its folder made first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _ok_figures(rng: random.Random, params_m: float, n_images: int) -> tuple[set[int], dict]:
    """The validation images an ok entry gets right, and its record's figures."""
    right = set(rng.sample(range(n_images), round(n_images * (0.55 + 0.44 * rng.betavariate(8, 1.5)))))
    acc = len(right) / n_images
    return right, dict(
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
    seed>): records/sweep/<entry>.json, metrics/sweep/<entry>.json, DVCLive curves in plots/live/sweep/<entry>/,
    plots/confusion/sweep/<entry>.csv (actual, predicted, image over the same `n_images` validation images, as
    many right as the accuracy says), models/sweep/<entry>/. Random values from `seed`; `n_failed` and
    `n_skipped` entries (spread over the list) get those statuses and no curves."""
    rng = random.Random(seed)
    actual = [CLASSES[i % len(CLASSES)] for i in range(n_images)]
    odd = rng.sample(range(len(archs)), min(len(archs), n_failed + n_skipped))
    status = {i: "failed" for i in odd[:n_failed]} | {i: "skipped" for i in odd[n_failed:]}
    wrong = {c: CLASSES[(k + 1) % len(CLASSES)] for k, c in enumerate(CLASSES)}
    for i, arch in enumerate(archs):
        kind = status.get(i, "ok")
        params_m = round(10 ** rng.uniform(0, 2.8), 2)
        entry = f"{arch}-{train_seed}"
        reasons = {"ok": None, "failed": "RuntimeError: CUDA out of memory"}
        record = {
            "arch": arch,
            "seed": train_seed,
            "status": kind,
            "epochs": epochs,
            "device": "cuda",
            "precision": "bf16",
            "reason": reasons.get(kind, f"{params_m} M parameters > sweep.max_params_m"),
            **dict.fromkeys(["accuracy", "error_rate", "valid_loss", "train_time_s", "images_per_s", "peak_memory_mb"]),
            "params_m": params_m,
        }
        live = ws / "plots/live/sweep" / entry
        live.mkdir(parents=True, exist_ok=True)
        pairs = "actual,predicted,image\n"
        if kind == "ok":
            right, figures = _ok_figures(rng, params_m, n_images)
            record.update(figures)
            acc = len(right) / n_images
            curve = [acc - (epochs - 1 - e) * rng.uniform(0, 0.05) for e in range(epochs)]
            for metric in METRICS:
                values = {"accuracy": curve, "error_rate": [1 - a for a in curve]}.get(
                    metric, [1.5 * (1 - a) + rng.uniform(0, 0.2) for a in curve]
                )
                rows = "".join(f"{e}\t{v:.6f}\n" for e, v in enumerate(values))
                write_file(live / "plots/metrics" / f"{metric}.tsv", f"step\t{metric.split('/')[-1]}\n{rows}")
            pairs += "".join(f"{c},{c if i in right else wrong[c]},img{i:04d}.jpg\n" for i, c in enumerate(actual))
        write_file(ws / "records/sweep" / f"{entry}.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
        write_file(ws / "metrics/sweep" / f"{entry}.json", json.dumps(accuracy_metrics(record), indent=2) + "\n")
        write_file(ws / "plots/confusion/sweep" / f"{entry}.csv", pairs)
        write_file(ws / "models/sweep" / entry / "model.json", json.dumps({"arch": arch}) + "\n")
