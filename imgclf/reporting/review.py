"""The review of a web dataset: every image scored by the model of the finetune task named after the dataset, and
a static page of the images it gets most wrong (highest loss first), to find the web's wrong images and write
their lines for the exclusion file (imgclf.sources.exclude).

Each image is scored as validation scores it (imgclf.deploy.predict: the centre square at the model's input
size, the model's normalization) and marked train or valid by the split training used (split_items: by file stem
and base.seed), so a validation image's loss here is the one validation measured. The folder holds the page
(`index.html`, imgclf.reporting.review_page), small JPEG thumbnails of the images it shows (`thumbs/`), the
validation confusion matrix (`confusion.png`) and every image's scores, worst first (`losses.csv`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

from imgclf.common import PipelineError, csv_text, write_folder
from imgclf.datasets import labelled_items
from imgclf.deploy.predict import logits
from imgclf.reporting.review_page import page_html
from imgclf.training.artifacts import load_model
from imgclf.training.data import split_items

log = logging.getLogger(__name__)

THUMB = 160  # a thumbnail's longer side (pixels); smaller images keep their size
LOSSES_FIELDS = [
    "split",
    "rank",
    "loss",
    "label",
    "predicted",
    "probability",
    "label_probability",
    "stem",
    "file",
    "url",
    "query",
    "status",
    "reason",
]


def score(
    names: list[str], labels: list[str], log_probs: list[list[float]], classes: list[str], valid: set[int]
) -> list[dict[str, Any]]:
    """One row per image (`names`: paths under the dataset folder): its split, label, predicted class and that
    class's probability, the label's probability and the loss (cross-entropy: -log p(label)). Sorted by split
    (valid first), then worst first (ties by name), and ranked within the split."""
    rows = []
    for i, (name, label, lp) in enumerate(zip(names, labels, log_probs)):
        best = max(range(len(classes)), key=lambda c: lp[c])
        rows.append(
            {
                "split": "valid" if i in valid else "train",
                "loss": -lp[classes.index(label)],
                "label": label,
                "predicted": classes[best],
                "probability": math.exp(lp[best]),
                "label_probability": math.exp(lp[classes.index(label)]),
                "stem": Path(name).stem,
                "file": name,
            }
        )
    rows.sort(key=lambda r: (r["split"] != "valid", -r["loss"], r["file"]))
    for split in ("valid", "train"):
        for rank, row in enumerate((r for r in rows if r["split"] == split), 1):
            row["rank"] = rank
    return rows


def report_sources(report_path: Path) -> dict[str, dict[str, str]]:
    """File stem -> the scrape report's row of the image in the dataset (its url, query, status, reason)."""
    with open(report_path, newline="", encoding="utf-8") as f:
        return {Path(r["file"]).stem: r for r in csv.DictReader(f) if r.get("file")}


def confusion(rows: list[dict[str, Any]], classes: list[str]) -> list[list[int]]:
    """Counts [label][predicted] of the validation rows."""
    matrix = [[0] * len(classes) for _ in classes]
    for r in rows:
        if r["split"] == "valid":
            matrix[classes.index(r["label"])][classes.index(r["predicted"])] += 1
    return matrix


def confusion_png(matrix: list[list[int]], classes: list[str], title: str) -> bytes:
    """The confusion matrix as a PNG: counts in each cell, labels down, predictions across."""
    from matplotlib.figure import Figure

    n = len(classes)
    fig = Figure(figsize=(max(4.0, 2.5 + 0.75 * n), 2.4 + 0.6 * n), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    top = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
    ax.set_xticks(range(n), classes, rotation=35, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def thumbnail(path: Path) -> bytes:
    """A small JPEG of the image: its longer side at most THUMB pixels."""
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (THUMB, THUMB))  # JPEG: decode at a smaller scale when that still covers the thumbnail
        img = im.convert("RGB")
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def review(
    model_dir: Path,
    images_dir: Path,
    report_path: Path,
    out_dir: Path,
    *,
    dataset: str,
    top_n: int,
    seed: int,
    valid_pct: float,
    device: str = "cpu",
) -> dict[str, Any]:
    """Score every image of the dataset with the model in `model_dir`; write the review folder `out_dir` with
    the `top_n` highest losses of each split on its page. Returns a summary (counts, validation accuracy)."""
    import torch

    files, labels = labelled_items(images_dir, "folder")
    model, meta = load_model(model_dir)
    classes = meta["classes"]
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise PipelineError(
            f"{images_dir} has class(es) {', '.join(unknown)} that {model_dir} was not trained on: rerun its "
            f"training (`dvc repro finetune@{dataset}`)."
        )
    _, valid_idx = split_items(files, valid_pct, seed)
    log_probs = torch.log_softmax(logits(model, meta, files, device=device), dim=1).tolist()
    names = [f.relative_to(images_dir).as_posix() for f in files]
    rows = score(names, labels, log_probs, classes, set(valid_idx))
    sources = report_sources(report_path)
    for r in rows:
        src = sources.get(r["stem"], {})
        r.update({k: src.get(k, "") for k in ("url", "query", "status", "reason")})
    valid = [r for r in rows if r["split"] == "valid"]
    summary = {
        "dataset": dataset,
        "arch": meta["arch"],
        "input_size": meta["input_size"],
        "model": model_dir.as_posix(),
        "n_train": len(rows) - len(valid),
        "n_valid": len(valid),
        "valid_accuracy": sum(r["label"] == r["predicted"] for r in valid) / len(valid),
        "top_n": top_n,
    }
    shown = {s: [r for r in rows if r["split"] == s][:top_n] for s in ("valid", "train")}
    title = f"{dataset}: validation\n{len(valid)} images, accuracy {summary['valid_accuracy']:.3f}"
    files_out = {
        "index.html": page_html(summary, shown, classes).encode("utf-8"),
        "confusion.png": confusion_png(confusion(rows, classes), classes, title),
        "losses.csv": csv_text([_rounded(r) for r in rows], LOSSES_FIELDS).encode("utf-8"),
    }
    for r in (r for split in shown.values() for r in split):
        files_out[f"thumbs/{r['stem']}.jpg"] = thumbnail(images_dir / r["file"])
    write_folder(files_out, out_dir)
    return summary


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, **{k: f"{row[k]:.6g}" for k in ("loss", "probability", "label_probability")}}
