"""The review page: one static HTML file, no server and no network. Each image the model gets most wrong is a card
with its thumbnail, label, prediction and loss, where the web found it (URL and query) and its file stem, and
buttons that copy its line for the exclusion file (imgclf.sources.exclude) to the clipboard. Nothing is written
anywhere else: the user pastes the line into `exclude/<dataset>.txt` and runs `dvc repro`."""

from __future__ import annotations

from html import escape
from typing import Any

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
code { background: #f3f3f3; padding: 0 .2em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 10px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px; margin: 0; overflow-wrap: anywhere; }
.card.wrong { border-color: #d9534f; background: #fff6f5; }
.card img { display: block; width: 128px; height: auto; image-rendering: pixelated; margin-bottom: 6px; }
.card .head { font-weight: 600; } .card .meta { color: #555; font-size: 12px; }
.card button { margin: 4px 4px 0 0; font-size: 12px; cursor: pointer; }
.card .note { color: #8a6d3b; font-size: 12px; }
"""

# navigator.clipboard works on file:// pages in Chromium and Firefox; where it does not, a prompt shows the line.
SCRIPT = """
for (const button of document.querySelectorAll("button[data-line]")) {
  button.addEventListener("click", async () => {
    const line = button.dataset.line, label = button.textContent;
    try {
      await navigator.clipboard.writeText(line);
      button.textContent = "copied";
      setTimeout(() => { button.textContent = label; }, 1200);
    } catch (e) {
      window.prompt("Copy this line into the exclusion file:", line);
    }
  });
}
"""


def exclude_line(row: dict[str, Any]) -> str:
    """The exclusion file's line that drops the image of `row` (a review row), its reason saying why it was shown."""
    return f"{row['stem']}  # {row['label']}, predicted {row['predicted']} p={row['probability']:.2f}"


def relabel_line(row: dict[str, Any]) -> str:
    """The exclusion file's line that moves the image of `row` to the predicted class."""
    return f"{row['stem']} -> {row['predicted']}  # was {row['label']}, predicted p={row['probability']:.2f}"


def _card(row: dict[str, Any]) -> str:
    wrong = row["label"] != row["predicted"]
    url = row["url"]
    link = (
        f'<a href="{escape(url)}" rel="noreferrer">{escape(url)}</a>'
        if url.startswith(("http://", "https://"))
        else escape(url or "(not in the scrape report)")
    )
    buttons = f'<button data-line="{escape(exclude_line(row))}">copy exclude line</button>'
    if wrong:
        buttons += f'<button data-line="{escape(relabel_line(row))}">copy relabel line</button>'
    note = ""
    if row["status"] == "relabelled":  # a second line for this stem would fail: the user edits the first one
        note = f'<div class="note">relabelled {escape(row["reason"])}: edit that line, not a new one</div>'
    return (
        f'<figure class="card{" wrong" if wrong else ""}">'
        f'<img src="thumbs/{escape(row["stem"])}.jpg" alt="{escape(row["file"])}" loading="lazy">'
        f'<figcaption><div class="head">#{row["rank"]} {escape(row["label"])} &rarr; {escape(row["predicted"])} '
        f"(p={row['probability']:.2f})</div>"
        f'<div class="meta">loss {row["loss"]:.3f} &middot; {row["split"]} &middot; p(label)='
        f"{row['label_probability']:.3f}</div>"
        f'<div class="meta">stem <code>{escape(row["stem"])}</code></div>'
        f'<div class="meta">query: {escape(row["query"] or "-")}</div>'
        f'<div class="meta">{link}</div>{note}{buttons}</figcaption></figure>'
    )


def page_html(summary: dict[str, Any], shown: dict[str, list[dict[str, Any]]], classes: list[str]) -> str:
    """The whole page: what was reviewed and how to act on it, the validation confusion matrix, then the cards of
    the validation images and of the training images with the highest loss, worst first."""
    ds = escape(summary["dataset"])
    sections = []
    for split, what in (("valid", "Validation"), ("train", "Training")):
        total = summary[f"n_{split}"]
        cards = "".join(_card(r) for r in shown[split])
        sections.append(
            f"<h2>{what} images: the {len(shown[split])} highest losses of {total}</h2>"
            f'<div class="grid">{cards or "<p>none</p>"}</div>'
        )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Review: {ds}</title><style>{STYLE}</style></head><body>\n"
        f"<h1>Review of the dataset {ds}</h1>\n"
        f"<p>Model <code>{escape(summary['model'])}</code> ({escape(summary['arch'])}, "
        f"{summary['input_size']} px), {summary['n_train']} training and {summary['n_valid']} validation images "
        f"(the split training used); validation accuracy {summary['valid_accuracy']:.3f}. Classes: "
        f"{escape(', '.join(classes))}. Each image is scored on its centre square, as validation scores it. A "
        "card reads <i>label &rarr; predicted class (its probability)</i>; red cards are predicted as another "
        "class.</p>\n"
        f"<p>To drop an image from the dataset, press <b>copy exclude line</b> and paste the line into "
        f"<code>exclude/{ds}.txt</code>; <b>copy relabel line</b> moves it to the predicted class instead. Then "
        f"<code>dvc repro</code> rebuilds the dataset from the downloads and retrains what was trained on it, and "
        "<code>dvc metrics diff</code> shows the change. The page writes nothing itself.</p>\n"
        '<h2>Validation confusion matrix</h2><img src="confusion.png" alt="validation confusion matrix">\n'
        + "\n".join(sections)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )
