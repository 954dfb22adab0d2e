"""The size of a sweep before running it: each architecture's parameters and weights, and the whole sweep's
time and disk estimated from the entries already measured (records/sweep/*.json)."""

from __future__ import annotations

import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from imgclf.common import PipelineError
from imgclf.training.archs import count_params_m
from imgclf.training.hub import weights_size

log = logging.getLogger(__name__)


def arch_sizes(names: list[str], online: bool, threads: int = 8) -> list[dict[str, Any]]:
    """For each architecture: {"arch", "params_m" (None if timm cannot build it), "weights_bytes",
    "estimated" (True: 4 bytes per parameter, not the hub's file size)}. Parameters are counted on the meta
    device, one after another; with `online`, the hub is asked for the file sizes, `threads` at a time."""
    counts = {}
    for name in names:
        try:
            counts[name] = count_params_m(name)
        except Exception as e:  # noqa: BLE001 - listed without a size, and said so
            log.warning("%s: cannot count its parameters (%s)", name, e)
            counts[name] = None

    def one(name: str) -> dict[str, Any]:
        if counts[name] is None:
            return {"arch": name, "params_m": None, "weights_bytes": None, "estimated": True}
        size, estimated = weights_size(name, counts[name], online)
        return {"arch": name, "params_m": round(counts[name], 4), "weights_bytes": size, "estimated": estimated}

    with ThreadPoolExecutor(threads if online else 1) as pool:
        return list(pool.map(one, names))


def sample_by_size(sizes: list[dict[str, Any]], k: int) -> list[str]:
    """`k` architectures spread evenly over the parameter counts of `sizes` (the smallest, the largest and
    evenly spaced ranks between), sorted by name: a sample to time before estimating the whole sweep."""
    ranked = sorted((s for s in sizes if s["params_m"] is not None), key=lambda s: (s["params_m"], s["arch"]))
    if k >= len(ranked):
        return sorted(s["arch"] for s in ranked)
    picks = {round(i * (len(ranked) - 1) / (k - 1)) for i in range(k)} if k > 1 else {len(ranked) // 2}
    return sorted(ranked[i]["arch"] for i in picks)


def measured(metrics_dir: Path) -> list[dict[str, Any]]:
    """The ok records under `metrics_dir` that say how long their fit took and how large the model was."""
    records = []
    for path in sorted(Path(metrics_dir).glob("*.json")):
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (
            isinstance(r, dict)
            and r.get("status") == "ok"
            and _finite(r.get("train_time_s"))
            and _finite(r.get("params_m"))
        ):
            records.append(r)
    return records


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fit_time_line(records: list[dict[str, Any]]) -> tuple[float, float, str]:
    """(a, b, how) of train_time_s = a + b * params_m over `records`: a fixed cost per entry plus a cost per
    million parameters, by least squares; where that line has a negative term (one record, all of one size,
    noisy points), a = 0 and b = total time / total parameters (the mean fit time per parameter)."""
    xs = [float(r["params_m"]) for r in records]
    ys = [float(r["train_time_s"]) for r in records]
    if not records:
        raise ValueError("no measured entries")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx > 0:
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
        a = my - b * mx
        if a >= 0 and b >= 0:
            return a, b, "least-squares line"
    return 0.0, (sum(ys) / sum(xs) if sum(xs) else 0.0), "mean time per parameter"


def estimate(sizes: list[dict[str, Any]], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole sweep's fit time (seconds, from `fit_time_line` over `records`) and disk (bytes): the peak is
    the largest weights file (one entry's download, deleted after it), the total what the hub serves over the
    sweep, and `models_bytes` what models/sweep holds with sweep.save_models: true (4 bytes per parameter)."""
    known = [s for s in sizes if s["params_m"] is not None]
    a, b, how = fit_time_line(records)
    devices = sorted({str(r.get("device")) for r in records})
    return {
        "entries": len(sizes),
        "sized": len(known),
        "measured": len(records),
        "devices": devices,
        "seconds_fixed": a,
        "seconds_per_m_params": b,
        "method": how,
        "time_s": sum(a + b * s["params_m"] for s in known),
        "peak_weights_bytes": max((s["weights_bytes"] for s in known), default=0),
        "download_bytes": sum(s["weights_bytes"] for s in known),
        "models_bytes": int(sum(s["params_m"] for s in known) * 4e6),
    }


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.1f} GB"


def size_row(s: dict) -> str:
    """One `list_archs --sizes` line: name, parameters, weights size (\"est.\" when counted, not read)."""
    params = "?" if s["params_m"] is None else f"{s['params_m']:.2f} M params"
    weights = "?" if s["weights_bytes"] is None else _mb(s["weights_bytes"]) + (" est." if s["estimated"] else "")
    return f"{s['arch']:<48} {params:>18} {weights:>16}"


def estimate_text(sizes: list[dict], metrics_dir: Path) -> str:
    """The whole sweep's fit time and disk, from the entries already measured in `metrics_dir`, as lines."""
    records = measured(metrics_dir)
    if not records:
        raise PipelineError(
            f"no measured entries in {metrics_dir}: run some sweep entries first (`dvc repro "
            "sweep@<arch>-<seed>`), ideally ~20 sampled across sizes, on the machine to estimate for."
        )
    e = estimate(sizes, records)
    lines: list[str] = []
    lines.append(
        f"estimate for {e['entries']} architectures ({e['sized']} with a parameter count), from {e['measured']} "
        f"measured entries on {', '.join(e['devices'])}:"
    )
    lines.append(
        f"  fit time:  {e['time_s'] / 3600:.2f} h  ({e['method']} over the measured entries: "
        f"{e['seconds_fixed']:.1f} s + {e['seconds_per_m_params']:.3f} s per million parameters; fit only, "
        "the same dataset and epochs; add weights downloads and process start)"
    )
    lines.append(
        f"  disk peak: data + {_mb(e['peak_weights_bytes'])} (the largest weights; each entry's download is "
        "deleted after it unless runtime.keep_weights)"
    )
    lines.append(f"  downloads: {_mb(e['download_bytes'])} of weights from the hub over the sweep")
    lines.append(
        f"  models:    {_mb(e['models_bytes'])} in models/sweep with sweep.save_models: true (none with false)"
    )
    return "\n".join(lines)
