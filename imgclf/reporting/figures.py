"""The sweep's two figures, readable from 3 to 1,000+ architectures: the exercise plot (every accuracy at x = 0
with its 95% interval, the architectures tied with the best marked, the best ones and the largest families
labelled, failed and skipped entries counted) and accuracy against cost with the Pareto front."""

from __future__ import annotations

import io
import math
from typing import Any

from imgclf.reporting.records import OTHER, family_groups, group_order, number, split_records

# The cost chart's axes (what deployment pays: inference throughput, higher is better, and forward GMACs per
# image, lower is better); training time and parameters stay in the leaderboard.
COSTS = [("infer_images_per_s", "inference throughput (images/s)"), ("gmacs", "forward GMACs per image")]
HIGHER_IS_BETTER = {"infer_images_per_s"}
DPI = 120
LABEL_FONTSIZE = 8
LABEL_ALL_UP_TO = 30  # up to this many ok entries every one is labelled; above it only the best TOP_LABELS
TOP_LABELS = 20
# Family colours: tab10 without red (the best's star) and grey (the families not shown on their own).
PALETTE = ["C0", "C1", "C2", "C4", "C5", "C6", "C8", "C9"]
MAX_FAMILIES = len(PALETTE)
MAX_NAMES_IN_NOTE = 12  # failed/skipped names listed on the figure; above this only their counts


def labelled(ok: list[dict]) -> list[dict]:
    """The ok records (best first) that get a name label on the plots."""
    return ok if len(ok) <= LABEL_ALL_UP_TO else ok[:TOP_LABELS]


def label_text(r: dict, best: bool = False) -> str:
    """An architecture's label: name, accuracy, its 95% interval when known, and (best) or (tied) with the best."""
    text = f"{r['arch']}  {r['accuracy']:.4f}"
    lo, hi = number(r.get("ci_low")), number(r.get("ci_high"))
    if lo is not None and hi is not None:
        text += f" [{lo:.3f}, {hi:.3f}]"
    if best:
        return text + "  (best)"
    return text + "  (tied)" if r.get("tied_with_best") else text


def interval_of(r: dict) -> tuple[float, float] | None:
    """(low, high) of a record's 95% interval, or None when it has none."""
    lo, hi = number(r.get("ci_low")), number(r.get("ci_high"))
    return None if lo is None or hi is None else (lo, hi)


def group_colours(groups: dict[str, str]) -> dict[str, str]:
    """Colour per group: PALETTE in group order, grey for OTHER (blue when there are no named groups)."""
    order = group_order(groups)
    colours = dict(zip((g for g in order if g != OTHER), PALETTE))
    colours[OTHER] = "0.6" if colours else "C0"
    return colours


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


def spread_labels(ys: list[float], min_gap: float, lo: float, hi: float) -> list[float]:
    """label_positions for labels listed best first: among equal heights the earlier label goes higher."""
    return label_positions(ys[::-1], min_gap, lo, hi)[::-1]


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


def pareto_front(points: list[tuple[str, float, float]], higher_is_better: bool = False) -> list[str]:
    """Names of the (name, cost, accuracy) points that no other point beats (cost <= and accuracy >=, one strictly;
    with `higher_is_better`, as for a throughput, cost >=), sorted from the best cost. Exact duplicates dominate
    neither each other, so both stay."""
    front: list[str] = []
    best_acc, best_key = -math.inf, None
    sign = -1 if higher_is_better else 1
    # Cheapest first and, at equal cost, most accurate first: a point is on the front iff it beats every cheaper one.
    for name, cost, acc in sorted(points, key=lambda p: (sign * p[1], -p[2])):
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


def counts_note(ok: list[dict], failed: list[dict], skipped: list[dict]) -> str:
    """One line counting the entries by status, then the names of the failed and skipped ones when few."""
    total = len(ok) + len(failed) + len(skipped)
    line = f"{total:,} entries: {len(ok):,} ok, {len(failed):,} failed, {len(skipped):,} skipped"
    if len(ok) > LABEL_ALL_UP_TO:
        line += f"; labelled: the best {TOP_LABELS}"
    if len(failed) + len(skipped) > MAX_NAMES_IN_NOTE:
        return line + "; every entry and its reason: leaderboard.csv"
    names = [
        f"{kind}: " + ", ".join(str(r.get("arch")) for r in rs)
        for kind, rs in (("failed", failed), ("skipped", skipped))
        if rs
    ]
    return "\n".join([line, *names])


def draw_accuracy(records: list[dict], ties: Any = None) -> Any:
    """The notebook's exercise plot: every ok accuracy at x = 0 with its 95% interval (a bar with caps), coloured
    by family; the best ones labelled in a de-overlapped column on the right, the largest families on the left at
    their best member's accuracy; the best is a red star, the ones tied with it (`ties`, compare.Ties) are ringed
    and labelled in red; failed and skipped entries counted at the bottom. Returns the Figure."""
    ok, failed, skipped = split_records(records)
    groups = family_groups(ok, MAX_FAMILIES)
    colours = group_colours(groups)
    many = len(ok) > LABEL_ALL_UP_TO
    fig = _new_figure()
    ax = fig.add_axes((0.1, 0.1, 0.8, 0.8))  # final position is set once the labels are measured
    _intervals_at_zero(ax, ok, [colours[groups[r["arch"]]] for r in ok], many)
    if ok:
        ax.scatter(
            [0] * len(ok),
            [r["accuracy"] for r in ok],
            s=14 if many else 25,
            alpha=0.6 if many else 1.0,
            color=[colours[groups[r["arch"]]] for r in ok],
            zorder=3,
            linewidths=0,
        )
        tied = [r["accuracy"] for r in ok[1:] if r.get("tied_with_best")]
        if tied:
            ax.scatter([0] * len(tied), tied, s=70, facecolors="none", edgecolors="C3", linewidths=0.9, zorder=4)
        ax.scatter([0], [ok[0]["accuracy"]], s=90, marker="*", color="C3", zorder=5)
    right = []
    for i, r in enumerate(labelled(ok)):
        best = i == 0
        right.append(
            ax.annotate(
                label_text(r, best),
                xy=(0, r["accuracy"]),
                xytext=(0.7, r["accuracy"]),
                va="center",
                ha="left",
                fontsize=LABEL_FONTSIZE,
                color="C3" if best or r.get("tied_with_best") else "black",
                fontweight="bold" if best else "normal",
                arrowprops=_leader(),
            )
        )
    left = []
    for fam in (g for g in group_order(groups) if g != OTHER):
        members = [r for r in ok if groups[r["arch"]] == fam]
        left.append(
            ax.annotate(
                f"{fam} ({len(members)})",
                xy=(0, members[0]["accuracy"]),
                xytext=(-0.7, members[0]["accuracy"]),
                va="center",
                ha="right",
                fontsize=LABEL_FONTSIZE,
                color=colours[fam],
                fontweight="bold",
                arrowprops=_leader(colours[fam]),
            )
        )
    ax.set_title(_accuracy_title(ok, ties), fontsize=10)
    ys = [r["accuracy"] for r in ok] + [v for r in ok if (ci := interval_of(r)) for v in ci]
    note = counts_note(ok, failed, skipped)
    if ties is not None and ties.n_images is not None:
        note = f"{note}\n95% Wilson intervals over the {ties.n_images} validation images"
    _layout_accuracy(fig, ax, right, left, note, ys)
    ax.set_ylabel("accuracy (valid), 95% interval")
    ax.set_xticks([])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if not ok:
        ax.text(0.5, 0.5, "no architecture succeeded", transform=ax.transAxes, ha="center", color="0.4")
    return fig


def _accuracy_title(ok: list[dict], ties: Any) -> str:
    """Three lines: what is drawn; the best with its interval and the schedule; the tied group (the confidence
    set for the best) and its method."""
    if not ok:
        return "Validation accuracy per architecture\nno architecture succeeded"
    best = ok[0]
    seeds = {r.get("n_seeds", 1) for r in ok}
    lines = ["Validation accuracy per architecture" + (" (mean over seeds)" if max(seeds) > 1 else "")]
    line = f"best: {best['arch']} = {best['accuracy']:.4f}"
    if ci := interval_of(best):
        line += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    runs = {(r.get("schedule"), r.get("epochs")) for r in ok}  # the schedule each entry recorded
    if len(runs) == 1 and None not in (run := runs.pop()):
        schedule, n = run
        line += f" ({schedule}, {n} epoch{'' if n == 1 else 's'})"
    lines.append(line)
    if ties is not None and ties.n_images is not None:
        lines.append(
            f"red: {len(ties.tied)} of {len(ok)} tied with the best "
            f"(in its {1 - ties.alpha:g} confidence set: Mogstad et al. 2024, bootstrap over images)"
        )
    return "\n".join(lines)


def _intervals_at_zero(ax: Any, ok: list[dict], colours: list[str], many: bool) -> None:
    """Each ok record's 95% interval as a vertical bar at x = 0 with caps (x is in inches: caps 0.16 in wide), so
    that overlapping intervals still show where each one ends."""
    bars = [(ci, c) for r, c in zip(ok, colours) if (ci := interval_of(r))]
    if not bars:
        return
    style = {"linewidths": 0.6 if many else 1.0, "alpha": 0.3 if many else 0.8, "zorder": 2}
    colours_ = [c for _, c in bars]
    ax.vlines([0] * len(bars), [ci[0] for ci, _ in bars], [ci[1] for ci, _ in bars], colors=colours_, **style)
    for end in (0, 1):
        ax.hlines([ci[end] for ci, _ in bars], -0.08, 0.08, colors=colours_, **style)


def _leader(colour: str = "0.6") -> dict:
    return {"arrowstyle": "-", "lw": 0.5, "color": colour, "shrinkA": 1, "shrinkB": 3}


def _layout_accuracy(fig: Any, ax: Any, right: list, left: list, note: str, ys: list[float]) -> None:
    """Size the figure from the measured labels (x data = inches, the points at 0) and spread each label column
    vertically: the arch labels 0.7 in right of the points, the family labels 0.7 in left of them. The y range
    covers `ys` (the accuracies and their intervals)."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()

    # Text.get_window_extent: the label's own box; Annotation's would include the leader line.
    def widest(anns: list) -> float:
        return max((Text.get_window_extent(a, renderer).width for a in anns), default=0.0) / DPI

    text_h = max((Text.get_window_extent(a, renderer).height for a in right + left), default=LABEL_FONTSIZE * 1.4) / DPI
    gap_in = text_h * 1.25
    note_lines = note.count("\n") + 1 if note else 0
    margin_l, margin_r, top, bottom = 0.85, 0.2, 0.85, 0.3 + 0.17 * note_lines
    x_lo = -(0.7 + widest(left) + 0.2) if left else -0.5
    title_w = Text.get_window_extent(ax.title, renderer).width / DPI  # the axes are at least as wide as the title
    x_hi = max(0.7 + widest(right) + 0.2, 6.4 - margin_l - margin_r + x_lo, x_lo + title_w + 0.1)
    axes_w = x_hi - x_lo
    axes_h = max(3.2, max(len(right), len(left)) * gap_in + 2 * text_h)
    fig_w, fig_h = margin_l + axes_w + margin_r, bottom + axes_h + top
    fig.set_size_inches(fig_w, fig_h)
    ax.set_position((margin_l / fig_w, bottom / fig_h, axes_w / fig_w, axes_h / fig_h))
    ax.set_xlim(x_lo, x_hi)
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
    for anns, x in ((right, 0.7), (left, -0.7)):
        ypos = spread_labels([a.xy[1] for a in anns], gap_in * per_in, mid - span / 2 + half, mid + span / 2 - half)
        for ann, y in zip(anns, ypos):
            ann.xyann = (x, y)


def draw_cost(records: list[dict]) -> Any:
    """Two panels, accuracy vs inference throughput and vs forward GMACs, with each panel's Pareto front as a step
    line.
    Points are coloured by family, with their 95% intervals as vertical bars; names label every point in a small
    sweep, only the front in a large one."""
    ok, _, _ = split_records(records)
    groups = family_groups(ok, MAX_FAMILIES)
    colours = group_colours(groups)
    fig = _new_figure(figsize=(12, 5.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (key, label) in zip(axes, COSTS):
        rows = [(r, c) for r in ok if (c := number(r.get(key))) is not None]
        pts = [(r["arch"], c, r["accuracy"]) for r, c in rows]
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        if not pts:
            ax.text(0.5, 0.5, f"no {label} recorded", transform=ax.transAxes, ha="center", color="0.4")
            continue
        for group in group_order(groups):
            mine = [(c, r["accuracy"]) for r, c in rows if groups[r["arch"]] == group]
            bars = [(c, ci) for r, c in rows if groups[r["arch"]] == group and (ci := interval_of(r))]
            if bars:  # the 95% intervals, behind the points
                ax.vlines(
                    [b[0] for b in bars],
                    [b[1][0] for b in bars],
                    [b[1][1] for b in bars],
                    colors=colours[group],
                    linewidths=0.9,
                    alpha=0.5,
                    zorder=2,
                )
            if mine:
                ax.scatter(
                    [p[0] for p in mine],
                    [p[1] for p in mine],
                    s=18 if len(ok) <= LABEL_ALL_UP_TO else 10,
                    color=colours[group],
                    zorder=3,
                    label=group if len(colours) > 1 else None,
                    linewidths=0,
                )
        by_name = {p[0]: p for p in pts}
        # from the best cost on: drawn as steps after each point, the front stays the best accuracy at that cost
        front = [by_name[n] for n in pareto_front(pts, key in HIGHER_IS_BETTER)]
        ax.step(
            [p[1] for p in front],
            [p[2] for p in front],
            where="post",
            color="C3",
            lw=1.2,
            marker="o",
            markersize=4,
            label="Pareto front",
            zorder=2,
        )
        named = pts if len(ok) <= LABEL_ALL_UP_TO else front
        for name, cost, acc in named:
            ax.annotate(name, (cost, acc), xytext=(3, 2), textcoords="offset points", fontsize=6, color="0.25")
        costs = [p[1] for p in pts]
        # Costs span orders of magnitude across timm (1M to 300M+ parameters): log scale keeps small models apart.
        if min(costs) > 0 and max(costs) / min(costs) > 20:
            _log_x(ax)
        ax.legend(loc="best", fontsize=7, ncols=2 if len(colours) > 6 else 1)
    axes[0].set_ylabel("accuracy (valid), 95% interval")
    named_note = "" if len(ok) <= LABEL_ALL_UP_TO else " - names: the Pareto front"
    fig.suptitle(f"Accuracy vs inference cost (higher, faster and cheaper is better){named_note}")
    return fig


def _log_x(ax: Any) -> None:
    """Log x axis labelled 1, 2, 5, 10, ... in plain numbers (the default 3x10^0 minor labels collide)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def render_png(fig: Any) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
