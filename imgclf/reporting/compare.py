"""Intervals and ties: each architecture's accuracy (its seeds combined by table.combine_seeds) given its 95%
interval, and the architectures the validation images cannot rule out as the best found with a confidence set for
the best, so that they are called tied rather than ranked.

The rules, for one seed or several (README, "Reading the results"):
- Images are the sample. An architecture's score on an image is the share of its seeds that got it right (1 or
  0 with one seed); its accuracy is the mean over seeds, and its interval the Wilson interval of the mean number
  of right images (rounded to a whole image, halves up) out of the validation images. Pooling the seeds' counts
  would count each image once per seed and make the interval too narrow by up to sqrt(seeds).
- Tied with the best: in the confidence set for the best at level 1 - report.alpha (stats.best_set: Mogstad,
  Romano, Shaikh and Wilhelm's set for the best, bootstrapping the images with BOOTSTRAP_REPS resamples drawn
  from BOOTSTRAP_SEED). It holds every architecture whose true accuracy is the highest with probability at
  least 1 - alpha, for these trained models on images like these; with one seed, seed-to-seed noise is left out.
- Descriptive only: `p_value`, McNemar's exact test of each architecture against the highest accuracy (an image
  counts for the one whose score there is higher), and `p_holm`, those Holm-adjusted over the comparisons. The
  highest accuracy is picked on the same images, so these p-values do not decide the tie.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from imgclf.common import PipelineError
from imgclf.reporting.stats import best_set, discordant, holm, mcnemar_exact, mcnemar_sample_size, wilson_interval

LEVEL = 0.95  # the intervals' confidence level
BOOTSTRAP_REPS = 1000  # resamples of the validation images for the confidence set for the best
BOOTSTRAP_SEED = 0  # fixed, so the plot stage's outputs reproduce
METHOD = "Mogstad, Romano, Shaikh & Wilhelm 2024, step-down"
GUARANTEE = (
    "holds every architecture whose true accuracy is the highest with probability at least {level:g}, for these "
    "trained models on images like these{seeds}"
)
PREDICTION_COLUMNS = ("actual", "predicted", "image")


class Ties(NamedTuple):
    """What the comparison found: the confidence set for the best (best first), over how many images and
    architectures, at which level, the most seeds any architecture had, and the images McNemar's test would need
    to tell the best from the runner-up at their measured discordant rates (None: fewer than two compared, or
    the two equally good on these images)."""

    tied: list[str]
    n_images: int | None
    n_compared: int
    alpha: float
    max_seeds: int = 1
    images_needed: int | None = None


def guarantee(ties: Ties) -> str:
    """What the tied set guarantees, in one clause, and with one seed what it leaves out."""
    seeds = "; with one seed per architecture it leaves seed-to-seed noise out" if ties.max_seeds <= 1 else ""
    return GUARANTEE.format(level=1 - ties.alpha, seeds=seeds)


def read_predictions(path: Path, entry: str) -> dict[str, bool]:
    """image -> whether the entry got it right, from its predictions file (columns actual, predicted, image)."""
    rerun = f"rerun the entry (`dvc repro -f sweep@{entry}`)"
    if not Path(path).is_file():
        raise PipelineError(f"no predictions for {entry} ({path}): {rerun}.")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not set(PREDICTION_COLUMNS) <= set(reader.fieldnames or ()):
            raise PipelineError(
                f"{path} has columns {reader.fieldnames}, not {', '.join(PREDICTION_COLUMNS)} (written by an older "
                f"version?): the paired comparison needs each image's name; {rerun}."
            )
        correct: dict[str, bool] = {}
        for row in reader:
            if row["image"] in correct:
                raise PipelineError(f"{path} lists the image {row['image']!r} twice: {rerun}.")
            correct[row["image"]] = row["actual"] == row["predicted"]
    return correct


def compare_with_best(
    ok: pd.DataFrame, predictions: dict[str, dict[str, bool]] | None, alpha: float
) -> tuple[pd.DataFrame, Ties]:
    """Columns `ci_low`, `ci_high`, `tied_with_best` (in the confidence set for the best) and the descriptive
    `p_value` and `p_holm` (none for the best) for the ok rows of the table (best first), from their entries'
    predictions (entry name -> image -> right). Without predictions, the interval comes from the accuracy and
    `n_valid` when a row has one, and nothing is compared (none)."""
    out = pd.DataFrame(index=ok.index, columns=["ci_low", "ci_high", "p_value", "p_holm"], dtype=float)
    out["tied_with_best"] = pd.Series(pd.NA, index=ok.index, dtype="boolean")
    if predictions is None or ok.empty:
        for arch, acc, n in zip(ok.index, ok.accuracy, ok.n_valid):
            if n > 0:
                out.loc[arch, ["ci_low", "ci_high"]] = wilson_interval(whole(acc * n), int(n), LEVEL)
        return out, Ties([], None, 0, alpha)
    images = _shared_images(ok, predictions)
    for entries, accuracies in zip(ok.entries, ok.seed_accuracies):
        _check_accuracy(entries, accuracies, predictions, len(images))
    # images x architectures: the share of an architecture's seeds that got an image right
    right = [np.array([[predictions[e][i] for i in images] for e in entries]) for entries in ok.entries]
    scores = np.stack([r.mean(axis=0) for r in right], axis=1)
    for arch, r in zip(ok.index, right):
        out.loc[arch, ["ci_low", "ci_high"]] = wilson_interval(whole(r.sum() / len(r)), len(images), LEVEL)
    out["tied_with_best"] = best_set(scores, alpha, BOOTSTRAP_REPS, BOOTSTRAP_SEED)
    best = scores[:, 0].tolist()
    raw = [mcnemar_exact(*discordant(best, scores[:, j].tolist())) for j in range(1, len(ok))]
    out.loc[ok.index[1:], "p_value"] = raw
    out.loc[ok.index[1:], "p_holm"] = holm(raw)
    tied = list(ok.index[out.tied_with_best.to_numpy(dtype=bool)])
    needed = None
    if len(ok) > 1:
        better, worse = discordant(best, scores[:, 1].tolist())
        needed = mcnemar_sample_size(better / len(images), worse / len(images), alpha)
    return out, Ties(tied, len(images), len(ok), alpha, int(ok.n_seeds.max()), needed)


def whole(count: float) -> int:
    """A mean number of images rounded to a whole one, halves up (Python's round() would send 126.5 down and
    125.5 up, giving two different means the same interval)."""
    return math.floor(count + 0.5)


def _shared_images(ok: pd.DataFrame, predictions: dict[str, dict[str, bool]]) -> list[str]:
    """The validation images every ok entry was evaluated on (sorted); refuse entries evaluated on others."""
    first = ok.entries.iloc[0][0]
    reference = set(predictions[first])
    if not reference:
        raise PipelineError(f"{first}'s predictions list no images: rerun it (`dvc repro -f sweep@{first}`).")
    odd = [
        f"{e} ({len(set(predictions[e]) - reference)} images not in {first}'s, "
        f"{len(reference - set(predictions[e]))} of them missing)"
        for entries in ok.entries
        for e in entries
        if set(predictions[e]) != reference
    ]
    if odd:
        shown = "; ".join(odd[:5]) + (f"; and {len(odd) - 5} more" if len(odd) > 5 else "")
        raise PipelineError(
            "the sweep's entries were not all evaluated on the same validation images, so they cannot be compared "
            f"image by image: {shown}. Every entry must read the same data with the same base.seed and "
            "train.valid_pct: rerun the odd ones (`dvc repro -f sweep@<arch>-<seed>`)."
        )
    return sorted(reference)


def _check_accuracy(
    entries: list[str], accuracies: list[float], predictions: dict[str, dict[str, bool]], n: int
) -> None:
    """The predictions must be the run the metrics describe: their accuracy within half an image of the record's."""
    for e, recorded in zip(entries, accuracies):
        share = sum(predictions[e].values()) / n
        if abs(share - recorded) > 0.5 / n:
            raise PipelineError(
                f"{e}: its predictions give accuracy {share:.4f} and its metrics {recorded:.4f}: they come from "
                f"different runs; rerun the entry (`dvc repro -f sweep@{e}`)."
            )
