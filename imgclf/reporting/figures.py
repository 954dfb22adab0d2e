"""The sweep's two figures, drawn from the table (table.build_table) and readable from a few architectures to the
whole timm zoo: the exercise plot (every accuracy with its 95% interval, side by side by rank, the architectures
tied with the best marked, the best ones and the largest families labelled, failed and skipped entries counted)
and accuracy against cost with the Pareto front."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from imgclf.reporting.table import COSTS, OTHER, group_order

DPI = 120
LABEL_FONTSIZE = 8
LABEL_ALL_UP_TO = 30  # up to this many ok entries every one is labelled; above it only the best TOP_LABELS
TOP_LABELS = 20
# Family colours (MAX_FAMILIES of them): tab10 without red (the best's star) and grey (the families not shown on
# their own).
PALETTE = ["C0", "C1", "C2", "C4", "C5", "C6", "C8", "C9"]
MAX_NAMES_IN_NOTE = 12  # failed/skipped names listed on the figure; above this only their counts


def labelled(ok: pd.DataFrame) -> pd.DataFrame:
    """The ok rows (best first) that get a name label on the plots."""
    return ok if len(ok) <= LABEL_ALL_UP_TO else ok.iloc[:TOP_LABELS]


def label_text(row: pd.Series, best: bool = False) -> str:
    """A table row's label: name, accuracy, its 95% interval when known, and (best) or (tied) with the best."""
    text = f"{row.name}  {row.accuracy:.4f}"
    if pd.notna(row.ci_low) and pd.notna(row.ci_high):
        text += f" [{row.ci_low:.3f}, {row.ci_high:.3f}]"
    if best:
        return text + "  (best)"
    return text + "  (tied)" if is_tied(row) else text


def is_tied(row: pd.Series) -> bool:
    """Whether a table row is in the confidence set for the best (False when nothing was compared)."""
    return bool(pd.notna(row.tied_with_best) and row.tied_with_best)


DODGE_WIDTH = 0.5  # the band the intervals are spread over, left of the labels: inches in the PNG, x on the page
DODGE_STEP = 0.1  # the most room between two neighbours' intervals


def dodge(n: int) -> list[float]:
    """One x per ok architecture by rank, so that their intervals stand apart: the best at 0 (next to the labels),
    each next one DODGE_STEP to its left, closer when more than fit in DODGE_WIDTH."""
    step = min(DODGE_STEP, DODGE_WIDTH / (n - 1)) if n > 1 else 0.0
    return [-step * i for i in range(n)]


def intervals(ok: pd.DataFrame) -> pd.DataFrame:
    """The rows of `ok` with a 95% interval (both ends known)."""
    return ok.dropna(subset=["ci_low", "ci_high"])


def group_colours(groups: pd.Series) -> dict[str, str]:
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


def _new_figure(**kwargs: Any) -> Any:
    """A pyplot-free Agg figure: no global state, no GUI backend, nothing to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(dpi=DPI, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def counts_note(table: pd.DataFrame) -> str:
    """One line counting the entries by kind, then the names of the failed and skipped ones when few."""
    failed, skipped = table.index[table.kind == "failed"], table.index[table.kind == "skipped"]
    n_ok = len(table) - len(failed) - len(skipped)
    line = f"{len(table):,} entries: {n_ok:,} ok, {len(failed):,} failed, {len(skipped):,} skipped"
    if n_ok > LABEL_ALL_UP_TO:
        line += f"; labelled: the best {TOP_LABELS}"
    if len(failed) + len(skipped) > MAX_NAMES_IN_NOTE:
        return line + "; every entry and its reason: leaderboard.csv"
    names = [f"{kind}: " + ", ".join(archs) for kind, archs in (("failed", failed), ("skipped", skipped)) if len(archs)]
    return "\n".join([line, *names])


def draw_accuracy(table: pd.DataFrame, ties: Any = None) -> Any:
    """The notebook's exercise plot: every ok accuracy with its 95% interval (a bar with caps) at its own x by rank
    (`dodge`, so the intervals stand apart), coloured by family; the best ones labelled in a de-overlapped column
    on the right, the largest families on the left at their best member's accuracy; the best is a red star, the
    ones tied with it (`ties`, compare.Ties) are ringed and labelled in red; failed and skipped entries counted at
    the bottom. Returns the Figure."""
    group_colour = group_colours(table.group[table.kind == "ok"])
    ok = table[table.kind == "ok"].assign(colour=lambda ok: ok.group.map(group_colour))
    ok = ok.assign(x=dodge(len(ok)))
    many = len(ok) > LABEL_ALL_UP_TO
    fig = _new_figure()
    ax = fig.add_axes((0.1, 0.1, 0.8, 0.8))  # final position is set once the labels are measured
    _dodged_intervals(ax, intervals(ok), many)
    if len(ok):
        ax.scatter(
            ok.x,
            ok.accuracy,
            s=14 if many else 25,
            alpha=0.6 if many else 1.0,
            color=ok.colour,
            zorder=3,
            linewidths=0,
        )
        tied = ok.accuracy.iloc[1:][ok.tied_with_best.iloc[1:].fillna(False).astype(bool)]
        if len(tied):
            ax.scatter(ok.x[tied.index], tied, s=70, facecolors="none", edgecolors="C3", linewidths=0.9, zorder=4)
        ax.scatter([0], [ok.accuracy.iloc[0]], s=90, marker="*", color="C3", zorder=5)
    right = []
    for i, (_, row) in enumerate(labelled(ok).iterrows()):
        best = i == 0
        right.append(
            ax.annotate(
                label_text(row, best),
                xy=(row.x, row.accuracy),
                xytext=(0.7, row.accuracy),
                va="center",
                ha="left",
                fontsize=LABEL_FONTSIZE,
                color="C3" if best or is_tied(row) else "black",
                fontweight="bold" if best else "normal",
                arrowprops=_leader(),
            )
        )
    left = []
    for fam in (g for g in group_order(ok.group) if g != OTHER):
        members = ok.accuracy[ok.group == fam]
        left.append(
            ax.annotate(
                f"{fam} ({len(members)})",
                xy=(ok.x[members.index[0]], members.iloc[0]),
                xytext=(-0.7 - DODGE_WIDTH, members.iloc[0]),
                va="center",
                ha="right",
                fontsize=LABEL_FONTSIZE,
                color=group_colour[fam],
                fontweight="bold",
                arrowprops=_leader(group_colour[fam]),
            )
        )
    ax.set_title(_accuracy_title(ok, ties), fontsize=10)
    ys = [*ok.accuracy, *intervals(ok).ci_low, *intervals(ok).ci_high]
    note = counts_note(table)
    if ties is not None and ties.n_images is not None:
        note = f"{note}\n95% Wilson intervals over the {ties.n_images} validation images"
    _layout_accuracy(fig, ax, right, left, note, ys)
    ax.set_ylabel("accuracy (valid), 95% interval")
    ax.set_xticks([])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if ok.empty:
        ax.text(0.5, 0.5, "no architecture succeeded", transform=ax.transAxes, ha="center", color="0.4")
    return fig


def _accuracy_title(ok: pd.DataFrame, ties: Any) -> str:
    """Three lines: what is drawn; the best with its interval and the schedule; the tied group (the confidence
    set for the best) and its method."""
    if ok.empty:
        return "Validation accuracy per architecture\nno architecture succeeded"
    best = ok.iloc[0]
    lines = ["Validation accuracy per architecture" + (" (mean over seeds)" if ok.n_seeds.max() > 1 else "")]
    line = f"best: {best.name} = {best.accuracy:.4f}"
    if pd.notna(best.ci_low) and pd.notna(best.ci_high):
        line += f" [{best.ci_low:.3f}, {best.ci_high:.3f}]"
    runs = set(zip(ok.schedule, ok.epochs))  # the schedule each entry recorded
    if len(runs) == 1 and not pd.isna(list(run := runs.pop())).any():
        schedule, n = run
        line += f" ({schedule}, {n} epoch{'' if n == 1 else 's'})"
    lines.append(line)
    if ties is not None and ties.n_images is not None:
        lines.append(
            f"red: {len(ties.tied)} of {len(ok)} tied with the best "
            f"(in its {1 - ties.alpha:g} confidence set: Mogstad et al. 2024, bootstrap over images)"
        )
    return "\n".join(lines)


def _dodged_intervals(ax: Any, bars: pd.DataFrame, many: bool) -> None:
    """Each row's 95% interval as a vertical bar at its x (`dodge`) with caps (x is in inches: caps at most
    0.16 in wide, narrower than the room between neighbours), in its colour."""
    if bars.empty:
        return
    style = {
        "colors": list(bars.colour),
        "linewidths": 0.6 if many else 1.0,
        "alpha": 0.3 if many else 0.8,
        "zorder": 2,
    }
    ax.vlines(bars.x, bars.ci_low, bars.ci_high, **style)
    step = abs(bars.x.diff().min()) if len(bars) > 1 else DODGE_STEP
    cap = min(0.08, 0.4 * step)
    for end in (bars.ci_low, bars.ci_high):
        ax.hlines(end, bars.x - cap, bars.x + cap, **style)


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
    x_lo = -(0.7 + DODGE_WIDTH + widest(left) + 0.2) if left else -(0.5 + DODGE_WIDTH)
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
    for anns, x in ((right, 0.7), (left, -0.7 - DODGE_WIDTH)):
        ypos = spread_labels([a.xy[1] for a in anns], gap_in * per_in, mid - span / 2 + half, mid + span / 2 - half)
        for ann, y in zip(anns, ypos):
            ann.xyann = (x, y)


def draw_cost(table: pd.DataFrame) -> Any:
    """Two panels, accuracy vs inference throughput and vs forward GMACs, with each panel's Pareto front as a step
    line.
    Points are coloured by family, with their 95% intervals as vertical bars; names label every point in a small
    sweep, only the front in a large one."""
    ok = table[table.kind == "ok"]
    colours = group_colours(ok.group)
    fig = _new_figure(figsize=(12, 5.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (key, label) in zip(axes, COSTS):
        rows = ok[ok[key].notna()]
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        if rows.empty:
            ax.text(0.5, 0.5, f"no {label} recorded", transform=ax.transAxes, ha="center", color="0.4")
            continue
        for group in group_order(ok.group):
            mine = rows[rows.group == group]
            bars = intervals(mine)
            if len(bars):  # the 95% intervals, behind the points
                ax.vlines(
                    bars[key], bars.ci_low, bars.ci_high, colors=colours[group], linewidths=0.9, alpha=0.5, zorder=2
                )
            if len(mine):
                ax.scatter(
                    mine[key],
                    mine.accuracy,
                    s=18 if len(ok) <= LABEL_ALL_UP_TO else 10,
                    color=colours[group],
                    zorder=3,
                    label=group if len(colours) > 1 else None,
                    linewidths=0,
                )
        # from the best cost on: drawn as steps after each point, the front stays the best accuracy at that cost
        front = rows[rows[f"front_{key}"]].sort_values(f"front_order_{key}")
        ax.step(
            front[key],
            front.accuracy,
            where="post",
            color="C3",
            lw=1.2,
            marker="o",
            markersize=4,
            label="Pareto front",
            zorder=2,
        )
        named = rows if len(ok) <= LABEL_ALL_UP_TO else front
        for name, cost, acc in zip(named.index, named[key], named.accuracy):
            ax.annotate(name, (cost, acc), xytext=(3, 2), textcoords="offset points", fontsize=6, color="0.25")
        # Costs span orders of magnitude across timm: a log scale keeps the small models apart.
        if rows[key].min() > 0 and rows[key].max() / rows[key].min() > 20:
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
