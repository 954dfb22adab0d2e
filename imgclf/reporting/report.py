"""Compare the sweep: accuracy plot, accuracy-vs-cost plot with its Pareto front, and a leaderboard.
"""
from __future__ import annotations

import io
import json
import logging
import math
import textwrap
from pathlib import Path
from typing import Any

from imgclf.common import PipelineError, atomic_write_bytes, atomic_write_text, csv_text, write_json

log = logging.getLogger(__name__)

COLUMNS = ["rank", "arch", "status", "accuracy", "error_rate", "valid_loss", "params_m", "train_time_s",
           "images_per_s", "peak_memory_mb", "device", "precision", "reason"]
# Decimals per numeric column, shared by the CSV and the Markdown table.
DECIMALS = {"accuracy": 4, "error_rate": 4, "valid_loss": 4, "params_m": 2, "train_time_s": 1,
            "images_per_s": 1, "peak_memory_mb": 0}
COSTS = [("train_time_s", "training time (s)"), ("params_m", "parameters (millions)")]
DPI = 120
LABEL_FONTSIZE = 8
MAX_FAILED_SHOWN = 40  # a sweep over all of timm can fail by the hundred; the CSV keeps the full list


def _number(value: Any) -> float | None:
    """A finite float, or None for null/NaN/inf (json.load turns NaN into a float)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def split_records(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(ok sorted by accuracy descending, failed in input order); an ok record without accuracy counts as failed."""
    is_ok = [r.get("status") == "ok" and _number(r.get("accuracy")) is not None for r in records]
    ok = [r for r, good in zip(records, is_ok) if good]
    failed = [r for r, good in zip(records, is_ok) if not good]
    # Stable sort: equal accuracies keep the params.yaml order, so the best is deterministic.
    return sorted(ok, key=lambda r: -r["accuracy"]), failed


def label_positions(ys: list[float], min_gap: float, lo: float, hi: float) -> list[float]:
    """Label heights for points at `ys` (same order): pairwise gaps >= min_gap, within [lo, hi] when they fit,
    and as close to their points as possible (least squares). Labels keep their points' order; ties keep input order.
    """
    n = len(ys)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: ys[i])
    # Shifting the k-th lowest label down by k * min_gap turns "gaps >= min_gap" into "non-decreasing", so the
    # least-squares placement is an isotonic regression; with bounds it is the clipped isotonic solution.
    shifted = _isotonic([ys[i] - k * min_gap for k, i in enumerate(order)])
    top = hi - (n - 1) * min_gap
    if lo <= top:
        shifted = [min(max(v, lo), top) for v in shifted]
    else:  # no room for every gap: keep the gaps (readable) and centre the stack on the range
        shifted = [(lo + hi) / 2 - (n - 1) * min_gap / 2] * n
    out = [0.0] * n
    for k, i in enumerate(order):
        out[i] = shifted[k] + k * min_gap
    return out


def _isotonic(values: list[float]) -> list[float]:
    """Least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, c2 = blocks.pop()
            m1, c1 = blocks[-1]
            blocks[-1] = [(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2]
    return [m for m, c in blocks for _ in range(int(c))]


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the (name, cost, accuracy) points that no other point beats (cost <= and accuracy >=, one strictly),
    sorted by cost. Exact duplicates dominate neither each other, so both stay."""
    front: list[str] = []
    best_acc, best_key = -math.inf, None
    # Cheapest first and, at equal cost, most accurate first: a point is on the front iff it beats every cheaper one.
    for name, cost, acc in sorted(points, key=lambda p: (p[1], -p[2])):
        if acc > best_acc or (cost, acc) == best_key:
            front.append(name)
            best_acc, best_key = acc, (cost, acc)
    return front


def _new_figure(**kwargs: Any) -> Any:
    """A pyplot-free Agg figure: no global state, no GUI backend, nothing to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(dpi=DPI, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _failed_note(failed: list[dict], width_in: float) -> str:
    names = [str(r.get("arch")) for r in failed]
    if len(names) > MAX_FAILED_SHOWN:
        names = names[:MAX_FAILED_SHOWN] + [f"... and {len(names) - MAX_FAILED_SHOWN} more (see leaderboard.csv)"]
    return textwrap.fill("failed: " + ", ".join(names), width=max(30, int(width_in * 14))) if names else ""


def draw_accuracy(records: list[dict]) -> Any:
    """The notebook's exercise plot: each ok architecture's accuracy at x = 0, labelled with plt.annotate (Axes API)
    in a de-overlapped column on the right with leader lines; the best is a red star. Returns the Figure."""
    ok, failed = split_records(records)
    fig = _new_figure()
    ax = fig.add_axes((0.1, 0.1, 0.8, 0.8))  # final position is set once the labels are measured
    anns = []
    for i, r in enumerate(ok):
        best = i == 0
        ax.scatter([0], [r["accuracy"]], zorder=4 if best else 3, s=90 if best else 25, marker="*" if best else "o",
                   color="C3" if best else "C0")
        anns.append(ax.annotate(f"{r['arch']}  {r['accuracy']:.4f}" + ("  (best)" if best else ""),
                                xy=(0, r["accuracy"]), xytext=(0.7, r["accuracy"]), va="center", ha="left",
                                fontsize=LABEL_FONTSIZE, color="C3" if best else "black",
                                fontweight="bold" if best else "normal",
                                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.6", "shrinkA": 1, "shrinkB": 3}))
    _layout_accuracy(fig, ax, anns, [r["accuracy"] for r in ok], _failed_note(failed, 6.4))
    epochs = {r.get("epochs") for r in ok}
    subtitle = f"best: {ok[0]['arch']} = {ok[0]['accuracy']:.4f}" if ok else "no architecture succeeded"
    if len(epochs) == 1 and None not in epochs:
        n = epochs.pop()
        subtitle += f" (fine_tune, {n} epoch{'' if n == 1 else 's'})"
    ax.set_title(f"Validation accuracy per architecture\n{subtitle}", fontsize=11)
    ax.set_ylabel("accuracy (valid)")
    ax.set_xticks([])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if not ok:
        ax.text(0.5, 0.5, "no architecture succeeded", transform=ax.transAxes, ha="center", color="0.4")
    return fig


def _layout_accuracy(fig: Any, ax: Any, anns: list, ys: list[float], note: str) -> None:
    """Size the figure from the measured labels (in inches, x data = inches) and spread the labels vertically."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    # Text.get_window_extent: the label's own box; Annotation's would include the leader line.
    boxes = [Text.get_window_extent(a, renderer) for a in anns]
    text_w = max((b.width for b in boxes), default=0.0) / DPI
    text_h = max((b.height for b in boxes), default=LABEL_FONTSIZE * 1.4) / DPI
    gap_in = text_h * 1.25
    note_lines = note.count("\n") + 1 if note else 0
    left, right, top, bottom = 0.85, 0.2, 0.75, 0.3 + 0.17 * note_lines
    axes_w = max(1.2 + text_w + 0.2, 6.4 - left - right)  # point 0.5 in from the axis, labels 0.7 in right of it
    axes_h = max(3.2, len(ys) * gap_in + 2 * text_h)
    fig_w, fig_h = left + axes_w + right, bottom + axes_h + top
    fig.set_size_inches(fig_w, fig_h)
    ax.set_position((left / fig_w, bottom / fig_h, axes_w / fig_w, axes_h / fig_h))
    ax.set_xlim(-0.5, axes_w - 0.5)
    if note:
        fig.text(0.1 / fig_w, 0.08 / fig_h, note, fontsize=7, color="0.35", va="bottom", ha="left")
    if not ys:
        ax.set_ylim(0, 1)
        return
    # Leave one label height of room above the highest point and below the lowest: span = range * axes / usable.
    spread = max(max(ys) - min(ys), 1e-3)
    span = spread * axes_h / (axes_h - 2 * text_h)
    mid = (max(ys) + min(ys)) / 2
    ax.set_ylim(mid - span / 2, mid + span / 2)
    per_in = span / axes_h  # data units per inch
    half = text_h / 2 * per_in
    ypos = label_positions(ys, gap_in * per_in, mid - span / 2 + half, mid + span / 2 - half)
    for ann, y in zip(anns, ypos):
        ann.xyann = (0.7, y)


def draw_cost(records: list[dict]) -> Any:
    """Two panels, accuracy vs training time and vs parameters, with each panel's Pareto front as a step line."""
    ok, _ = split_records(records)
    fig = _new_figure(figsize=(12, 5.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (key, label) in zip(axes, COSTS):
        pts = [(r["arch"], c, r["accuracy"]) for r in ok if (c := _number(r.get(key))) is not None]
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        if not pts:
            ax.text(0.5, 0.5, f"no {label} recorded", transform=ax.transAxes, ha="center", color="0.4")
            continue
        ax.scatter([p[1] for p in pts], [p[2] for p in pts], s=18, color="C0", zorder=3)
        for name, cost, acc in pts:
            ax.annotate(name, (cost, acc), xytext=(3, 2), textcoords="offset points", fontsize=6, color="0.25")
        by_name = {p[0]: p for p in pts}
        front = [by_name[n] for n in pareto_front(pts)]
        ax.step([p[1] for p in front], [p[2] for p in front], where="post", color="C3", lw=1.2,
                marker="o", markersize=4, label="Pareto front", zorder=2)
        costs = [p[1] for p in pts]
        # Costs span orders of magnitude across timm (1M to 300M+ parameters): log scale keeps small models apart.
        if min(costs) > 0 and max(costs) / min(costs) > 20:
            _log_x(ax)
        ax.legend(loc="best", fontsize=8)
    axes[0].set_ylabel("accuracy (valid)")
    fig.suptitle("Accuracy vs cost (upper left is better)")
    return fig


def _log_x(ax: Any) -> None:
    """Log x axis labelled 1, 2, 5, 10, ... in plain numbers (the default 3x10^0 minor labels collide)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _render_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def leaderboard_rows(records: list[dict]) -> list[dict[str, str]]:
    """Leaderboard rows as formatted strings: ok archs by accuracy (ties share a rank), then failed ones unranked."""
    ok, failed = split_records(records)
    rows = []
    for i, r in enumerate(ok + failed):
        row = {}
        for col in COLUMNS[1:]:
            value = r.get(col)
            if col in DECIMALS:
                num = _number(value)
                value = "" if num is None else f"{num:.{DECIMALS[col]}f}"
            row[col] = "" if value is None else str(value)
        if i < len(ok):  # competition ranking: 1, 2, 2, 4
            same = i > 0 and ok[i - 1]["accuracy"] == r["accuracy"]
            row["rank"] = rows[-1]["rank"] if same else str(i + 1)
        else:
            row["rank"] = ""
        rows.append({col: row[col] for col in COLUMNS})
    return rows


def _markdown_text(rows: list[dict[str, str]]) -> str:
    def cell(col: str, value: str) -> str:
        value = " ".join(value.split()).replace("|", "\\|")  # a traceback line must not break the table
        return value[:117] + "..." if col == "reason" and len(value) > 120 else value

    numeric = set(DECIMALS) | {"rank"}
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---:" if c in numeric else "---" for c in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(c, row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def make_report(records: list[dict], out_dir: Path) -> dict:
    """Write accuracy.png, cost.png, leaderboard.csv/.md and accuracy.json to `out_dir`; return the summary
    {"best_arch", "max_acc", "n_ok", "n_failed"}."""
    out_dir = Path(out_dir)
    ok, failed = split_records(records)
    for r in failed:
        if r.get("status") == "ok":
            log.warning("%s is marked ok but has no accuracy: listed with the failed ones", r.get("arch"))
    if not ok:
        log.warning("no architecture succeeded (%d failed): the plots are empty; see leaderboard.md for why",
                    len(failed))
    atomic_write_bytes(out_dir / "accuracy.png", _render_png(draw_accuracy(records)))
    atomic_write_bytes(out_dir / "cost.png", _render_png(draw_cost(records)))
    rows = leaderboard_rows(records)
    atomic_write_text(out_dir / "leaderboard.csv", csv_text(rows, COLUMNS))
    atomic_write_text(out_dir / "leaderboard.md", _markdown_text(rows))
    write_json(out_dir / "accuracy.json", [{"arch": r["arch"], "accuracy": r["accuracy"], "x": 0,
                                            "train_time_s": r.get("train_time_s"), "params_m": r.get("params_m")}
                                           for r in ok])
    summary = {"best_arch": ok[0]["arch"] if ok else None, "max_acc": ok[0]["accuracy"] if ok else None,
               "n_ok": len(ok), "n_failed": len(failed)}
    log.info("%d ok, %d failed; best: %s (%s)", len(ok), len(failed), summary["best_arch"], summary["max_acc"])
    return summary


def read_metrics(metrics_dir: Path, archs: list[str]) -> list[dict]:
    """Read `<metrics_dir>/<arch>.json` for each listed arch, in order; other files there are stale and ignored."""
    records = []
    for arch in archs:
        path = Path(metrics_dir) / f"{arch}.json"
        if not path.is_file():
            raise PipelineError(f"no metrics for architecture {arch!r} ({path}): run `dvc repro` to train it first.")
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise PipelineError(f"{path} is not valid JSON ({e}): delete it and run `dvc repro`.") from None
        if not isinstance(record, dict) or record.get("arch") != arch:
            raise PipelineError(f"{path} does not hold the metrics of {arch!r}: delete it and run `dvc repro`.")
        records.append(record)
    return records
